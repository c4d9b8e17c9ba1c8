//! Builds the built-in policies (`plugins/`, one crate each) as WebAssembly
//! components, so the binary can embed them (`policy::builtin`): the
//! default configuration runs the same Wasm path as any user's plugin.
//!
//! Needs the `wasm32-wasip2` target (`rustup target add wasm32-wasip2`).
//! The plugins get a target directory of their own inside OUT_DIR, and none
//! of the outer build's compiler flags (a fuzzing or coverage build of
//! Rampart must not instrument its plugins).

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let plugins = manifest.join("../plugins");
    let sdk = manifest.join("../sdk");
    for path in [
        plugins.join("Cargo.toml"),
        plugins.join("Cargo.lock"),
        sdk.join("src"),
        sdk.join("wit"),
        sdk.join("Cargo.toml"),
    ] {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    for entry in std::fs::read_dir(&plugins)
        .expect("plugins/ is there")
        .flatten()
    {
        let crate_dir = entry.path();
        if crate_dir.join("Cargo.toml").is_file() {
            println!("cargo:rerun-if-changed={}", crate_dir.join("src").display());
            println!(
                "cargo:rerun-if-changed={}",
                crate_dir.join("Cargo.toml").display()
            );
        }
    }

    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("set by cargo"));
    let target_dir = out.join("plugins");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--manifest-path",
        ])
        .arg(plugins.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("CARGO_TARGET_DIR")
        .status()
        .expect("run cargo to build the built-in policies");
    if !status.success() {
        panic!(
            "building the built-in policies (plugins/) failed; they need the wasm32-wasip2 target: rustup target add wasm32-wasip2"
        );
    }
    println!(
        "cargo:rustc-env=RAMPART_BUILTINS={}",
        target_dir.join("wasm32-wasip2/release").display()
    );
}
