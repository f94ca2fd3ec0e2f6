//! Link settings of the chat-demo binary (see `docs/benchmarks.md`, "What limits each figure").

fn main() {
    println!("cargo:rustc-link-arg-bins=-no-pie");
}
