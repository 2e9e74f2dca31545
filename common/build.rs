//! Records the compiler's version for the `nodedns_build_info` metric (`rustc` label). The
//! commit label comes from `NODEDNS_COMMIT` in the build's environment, when set.

fn main() {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
    let version = std::process::Command::new(rustc)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        // `rustc 1.89.0 (29483883e 2025-08-04)`: the number is enough.
        .and_then(|v| v.split_whitespace().nth(1).map(str::to_owned))
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=NODEDNS_RUSTC_VERSION={version}");
    println!("cargo:rerun-if-env-changed=NODEDNS_COMMIT");
    println!("cargo:rerun-if-changed=build.rs");
}
