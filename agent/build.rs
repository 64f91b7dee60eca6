//! Link flags for the `sidelight` binary only (dependencies and test binaries are untouched).
//!
//! On Linux with GNU ld or lld, relative relocations are packed (`DT_RELR`, glibc ≥ 2.36: Debian
//! 12, the distroless image): the position-independent binary then carries a few kilobytes of
//! relocation data instead of ~600 KiB that the dynamic loader reads, page by page, at every
//! start — memory that otherwise stays in the agent's resident set.
//!
//! Environment: `SIDELIGHT_NO_RELR` turns it off (for a linker or libc without `DT_RELR`).

fn main() {
    println!("cargo:rerun-if-env-changed=SIDELIGHT_NO_RELR");
    let env = |k: &str| std::env::var(k).unwrap_or_default();
    let linux_gnu = env("CARGO_CFG_TARGET_OS") == "linux" && env("CARGO_CFG_TARGET_ENV") == "gnu";
    if linux_gnu && std::env::var_os("SIDELIGHT_NO_RELR").is_none() {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}
