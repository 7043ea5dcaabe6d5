//! Build script of the agent crate: only linker flags for the
//! `hostpulse-agent` executable, nothing generated. Both flags shrink the
//! memory the running agent keeps resident; neither changes what it does.
//!
//! - **Packed relative relocations** (`-z pack-relative-relocs`, DT_RELR),
//!   on Linux with glibc, only when asked for with
//!   `HOSTPULSE_PACK_RELOCS=1`. A position-independent Rust binary carries one
//!   24-byte `.rela.dyn` entry per pointer in its vtables and static tables
//!   (about 16,000 in the agent, 380 KiB), which the dynamic loader reads at
//!   every start, so they stayed resident. DT_RELR encodes the same
//!   relocations in a few KiB (about 0.4 MiB less resident). The executable
//!   stays position-independent (ASLR unchanged), but it then needs glibc
//!   2.36 or newer at run time, which many fleets (RHEL 9, Ubuntu 22.04)
//!   do not have; so it is off unless asked for.
//! - **Hot functions first** (`--symbol-ordering-file hot-symbols.txt`),
//!   when the linker is rustc's bundled lld (the default for
//!   x86_64-unknown-linux-gnu since Rust 1.90). The kernel maps code in
//!   64 KiB runs around each page the process touches, and with whole-program
//!   LTO the ~1,000 functions `serve` runs were spread over the whole 5 MiB of
//!   code, so most of it became resident. Listed first, they fill a few
//!   hundred KiB. `hot-symbols.sh` regenerates the list; names that no
//!   longer exist are skipped, so a stale list only loses some benefit.
//!
//! Set `HOSTPULSE_NO_LINK_TUNING=1` to link with neither (for example with
//! another linker). The flags
//! apply to the agent's executable only, never to the library, its tests or
//! other binaries of the workspace.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=hot-symbols.txt");
    println!("cargo:rerun-if-env-changed=HOSTPULSE_NO_LINK_TUNING");
    println!("cargo:rerun-if-env-changed=HOSTPULSE_PACK_RELOCS");
    if std::env::var_os("HOSTPULSE_NO_LINK_TUNING").is_some() {
        return;
    }
    let var = |name: &str| std::env::var(name).unwrap_or_default();
    if var("CARGO_CFG_TARGET_OS") != "linux" || var("CARGO_CFG_TARGET_ENV") != "gnu" {
        return;
    }
    if std::env::var_os("HOSTPULSE_PACK_RELOCS").is_some_and(|v| v == "1") {
        println!("cargo:rustc-link-arg-bin=hostpulse-agent=-Wl,-z,pack-relative-relocs");
    }
    if links_with_bundled_lld() {
        let list = std::path::Path::new(&var("CARGO_MANIFEST_DIR")).join("hot-symbols.txt");
        if list.is_file() {
            println!(
                "cargo:rustc-link-arg-bin=hostpulse-agent=-Wl,--symbol-ordering-file={}",
                list.display()
            );
            println!("cargo:rustc-link-arg-bin=hostpulse-agent=-Wl,--no-warn-symbol-ordering");
        }
    }
}

/// Whether rustc will link with its bundled lld, which understands
/// `--symbol-ordering-file` (GNU ld does not, and would fail the link):
/// x86_64 Linux with glibc, Rust 1.90 or newer, and no linker chosen by the
/// user (`RUSTC_LINKER`, or linker options in the rustflags).
fn links_with_bundled_lld() -> bool {
    if std::env::var("TARGET").ok().as_deref() != Some("x86_64-unknown-linux-gnu")
        || std::env::var_os("RUSTC_LINKER").is_some()
    {
        return false;
    }
    let flags = std::env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    if flags.contains("linker") || flags.contains("link-self-contained") || flags.contains("link-arg") {
        return false;
    }
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_string());
    let Ok(out) = Command::new(rustc).arg("--version").output() else {
        return false;
    };
    // "rustc 1.95.0 (59807616e 2026-04-14)"
    let version = String::from_utf8_lossy(&out.stdout);
    let minor = version
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.split('.').nth(1))
        .and_then(|m| m.parse::<u32>().ok());
    minor.is_some_and(|m| m >= 90)
}
