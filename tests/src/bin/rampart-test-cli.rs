//! The `rampart` command exactly as shipped (`rampart::cli::main`), built
//! inside this package so its tests can run it (`CARGO_BIN_EXE_...` only
//! exists for a package's own binaries).

fn main() -> std::process::ExitCode {
    rampart::cli::main()
}
