//! Link flags for the `sidelight` binary only (dependencies and test binaries are untouched).
//!
//! On Linux with GNU ld or lld, relative relocations are packed (`DT_RELR`, glibc ≥ 2.36: Debian
//! 12, the distroless image): the position-independent binary then carries a few kilobytes of
//! relocation data instead of ~600 KiB that the dynamic loader reads, page by page, at every
//! start — memory that otherwise stays in the agent's resident set.
//!
//! With lld (rustc's default linker on x86_64 Linux), release builds also lay out first the
//! functions listed in `link-order.txt`: the ones an agent on its defaults runs at start-up and
//! while idle. The kernel maps 64 KiB of text around every page fault, so code scattered across
//! 15 MB of text kept ~6 MiB of it resident; packed together it is a fraction of that.
//! `scripts/link-order.sh` regenerates the list; names it lists that a build no longer has are
//! skipped silently, so a stale list only costs memory, never a failed link.
//!
//! Environment: `SIDELIGHT_NO_RELR` and `SIDELIGHT_NO_LINK_ORDER` turn each off;
//! `SIDELIGHT_LINK_MAP=<path>` writes the linker's map (every symbol's address), which
//! `scripts/link-order.sh` reads to name the functions a profile saw.

use std::path::Path;

fn main() {
    for var in [
        "SIDELIGHT_NO_RELR",
        "SIDELIGHT_NO_LINK_ORDER",
        "SIDELIGHT_LINK_MAP",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    println!("cargo:rerun-if-changed=link-order.txt");
    let env = |k: &str| std::env::var(k).unwrap_or_default();
    let linux_gnu = env("CARGO_CFG_TARGET_OS") == "linux" && env("CARGO_CFG_TARGET_ENV") == "gnu";
    if !linux_gnu {
        return;
    }
    if std::env::var_os("SIDELIGHT_NO_RELR").is_none() {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
    if let Some(map) = std::env::var_os("SIDELIGHT_LINK_MAP") {
        // Mangled names in the map, as the ordering file needs them.
        println!(
            "cargo:rustc-link-arg-bins=-Wl,-Map={},--no-demangle",
            Path::new(&map).display()
        );
    }
    let order = Path::new(&env("CARGO_MANIFEST_DIR")).join("link-order.txt");
    if order.is_file()
        && env("PROFILE") == "release"
        && uses_lld(&env)
        && std::env::var_os("SIDELIGHT_NO_LINK_ORDER").is_none()
    {
        println!(
            "cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={},--no-warn-symbol-ordering",
            order.display()
        );
    }
}

/// Whether the binary is linked by lld: rustc's default on x86_64 Linux since 1.90, unless a
/// linker or linker flavour is chosen in the target's settings or the flags (GNU ld has no
/// `--symbol-ordering-file`).
fn uses_lld(env: &dyn Fn(&str) -> String) -> bool {
    let target = env("TARGET");
    let var = format!(
        "CARGO_TARGET_{}_LINKER",
        target.to_uppercase().replace('-', "_")
    );
    let flags = env("CARGO_ENCODED_RUSTFLAGS");
    let chosen = std::env::var_os(var).is_some()
        || flags.contains("linker=")
        || flags.contains("linker-flavor")
        || flags.contains("fuse-ld")
        || flags.contains("link-self-contained=-linker");
    let lld_flags = flags.contains("fuse-ld=lld") || flags.contains("linker-features=+lld");
    (target == "x86_64-unknown-linux-gnu" && !chosen) || lld_flags
}
