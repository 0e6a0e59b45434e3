//! Link the executable with packed relative relocations (DT_RELR) where the C library can load
//! them (glibc 2.36 or later, building for this machine). A position-independent executable
//! carries one 24-byte record per pointer in its read-only data (~75,000 of them, 1.7 MB that
//! the loader reads at every start and that then stays resident); RELR packs them into a few
//! kilobytes. Elsewhere (older glibc, musl, cross builds) nothing changes.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let target = std::env::var("TARGET").unwrap_or_default();
    let host = std::env::var("HOST").unwrap_or_default();
    let arch_ok = target.starts_with("x86_64-") || target.starts_with("aarch64-");
    if target != host || !arch_ok || !target.ends_with("-linux-gnu") {
        return;
    }
    if glibc_version().is_some_and(|v| v >= (2, 36)) {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}

/// This machine's glibc version, from `getconf GNU_LIBC_VERSION` ("glibc 2.36").
fn glibc_version() -> Option<(u32, u32)> {
    let out = Command::new("getconf")
        .arg("GNU_LIBC_VERSION")
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let (major, minor) = text.trim().strip_prefix("glibc ")?.split_once('.')?;
    let minor = minor.split('.').next()?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}
