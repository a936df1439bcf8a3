//! Benchmark for `netray trace` (scaffold: filled in by the trace work).
fn main() {
    println!("trace benchmark: not written yet");
}
