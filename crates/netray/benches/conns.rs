//! Benchmark for `netray conns` (scaffold: filled in by the conns work).
fn main() {
    println!("conns benchmark: not written yet");
}
