//! Link settings of the chat-demo binary, for less memory per server process (see
//! `docs/benchmarks.md`, "What limits each figure"):
//!
//! - `-no-pie`: a position-dependent executable has no dynamic relocations to apply at start,
//!   so its `.data.rel.ro` (vtables, panic locations, ...) stays clean, shared page cache
//!   instead of about 240 KB of private dirty pages in every process. The cost: the binary's
//!   own code and data are not address-randomised (the heap, stack and libraries still are).
//! - `symbol-order.txt` (written by `symbol-order.sh`): the functions a server runs, placed first
//!   in `.text`, so they share a few pages instead of being scattered over the 5 MB of code
//!   this binary also holds for the master, the CLI and the web page. The file lists symbol
//!   names; names it lists that no longer exist are skipped, so an old file only packs less
//!   well. It needs LLD (rustc's default linker on x86_64 Linux since 1.90) or mold; it is
//!   not passed when another linker may be in use, or with `KENNEL_NO_SYMBOL_ORDER=1`.

use std::env;
use std::process::Command;

fn main() {
    // With `+crt-static` rustc links a static PIE, which `-no-pie` would break.
    let features = env::var("CARGO_CFG_TARGET_FEATURE").unwrap_or_default();
    if !features.split(',').any(|f| f == "crt-static") {
        println!("cargo:rustc-link-arg-bins=-no-pie");
    }

    println!("cargo:rerun-if-changed=symbol-order.txt");
    println!("cargo:rerun-if-env-changed=KENNEL_NO_SYMBOL_ORDER");
    if lld_is_default() && env::var_os("KENNEL_NO_SYMBOL_ORDER").is_none() {
        let dir = env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
        println!("cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={dir}/symbol-order.txt");
        println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
    }
}

/// Whether rustc links this build with its bundled LLD: x86_64 Linux (gnu), rustc 1.90 or
/// later, and no linker chosen in the cargo config or the rustflags.
fn lld_is_default() -> bool {
    if env::var("TARGET").as_deref() != Ok("x86_64-unknown-linux-gnu")
        || env::var_os("RUSTC_LINKER").is_some()
    {
        return false;
    }
    let flags = env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    if ["linker", "link-self-contained", "fuse-ld"]
        .iter()
        .any(|f| flags.contains(f))
    {
        return false;
    }
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let Ok(out) = Command::new(rustc).arg("-V").output() else {
        return false;
    };
    // "rustc 1.95.0 (59807616e 2026-04-14)"
    let version = String::from_utf8_lossy(&out.stdout);
    let mut parts = version
        .split_whitespace()
        .nth(1)
        .unwrap_or("")
        .split('.')
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) >= (1, 90)
}
