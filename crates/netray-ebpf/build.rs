//! Rebuilds the eBPF objects when the `bpf-linker` binary changes: cargo cannot
//! see that tool as a dependency on its own.
use which::which;

fn main() {
    if let Ok(bpf_linker) = which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", bpf_linker.display());
    }
}
