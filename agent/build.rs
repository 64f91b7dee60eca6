//! Link flags for the `sidelight` binary only (dependencies and test binaries are untouched).
//!
//! On Linux with GNU ld or lld, relative relocations are packed (`DT_RELR`, glibc ≥ 2.36: Debian
//! 12, the distroless image): the position-independent binary then carries a few kilobytes of
//! relocation data instead of ~600 KiB that the dynamic loader reads, page by page, at every
//! start — memory that otherwise stays in the agent's resident set.

fn main() {
    println!("cargo:rerun-if-env-changed=SIDELIGHT_NO_RELR");
    let linux = std::env::var("CARGO_CFG_TARGET_OS").is_ok_and(|os| os == "linux");
    let gnu = std::env::var("CARGO_CFG_TARGET_ENV").is_ok_and(|env| env == "gnu");
    if linux && gnu && std::env::var_os("SIDELIGHT_NO_RELR").is_none() {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}
