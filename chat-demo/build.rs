//! Link settings of the chat-demo binary, for less memory per server process (see
//! `docs/benchmarks.md`, "What limits each figure"):
//!
//! - `-z pack-relative-relocs` (RELR): the position-independent executable's ~15,000 relative
//!   relocations take a few KB instead of a 358 KB table that every process reads at start.
//!   The binary stays PIE, so its code and data are address-randomised like everything else.
//! - `symbol-order.txt` (written by `symbol-order.sh`): the functions a server runs, placed first
//!   in `.text`, so they share a few pages instead of being scattered over the 5 MB of code
//!   this binary also holds for the master, the CLI and the web page. The file lists symbol
//!   names; names it lists that no longer exist are skipped, so an old file only packs less
//!   well. It needs LLD (rustc's default linker on x86_64 Linux since 1.90) or mold; it is
//!   not passed when another linker may be in use, or with `KENNEL_NO_SYMBOL_ORDER=1`.

use std::env;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=symbol-order.txt");
    println!("cargo:rerun-if-env-changed=KENNEL_NO_SYMBOL_ORDER");
    if !lld_is_default() {
        return;
    }
    // Only glibc 2.36 and later apply RELR relocations (an older one refuses to start the
    // binary), so only when the build host's glibc has them.
    if glibc_has_relr() {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
    if env::var_os("KENNEL_NO_SYMBOL_ORDER").is_none() {
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
    // "rustc 1.95.0 (59807616e 2026-04-14)"
    version_at_least(&rustc, &["-V"], (1, 90))
}

/// Whether the build host's glibc is 2.36 or later (`getconf GNU_LIBC_VERSION`: "glibc 2.36").
fn glibc_has_relr() -> bool {
    version_at_least("getconf", &["GNU_LIBC_VERSION"], (2, 36))
}

/// Whether `program args` prints "<name> <major>.<minor>..." with a version of at least `min`.
fn version_at_least(program: &str, args: &[&str], min: (u32, u32)) -> bool {
    let Ok(out) = Command::new(program).args(args).output() else {
        return false;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let mut v = text
        .split_whitespace()
        .nth(1)
        .unwrap_or("")
        .split('.')
        .map(|p| p.parse::<u32>().unwrap_or(0));
    (v.next().unwrap_or(0), v.next().unwrap_or(0)) >= min
}
