//! The `rampart` command; everything is in [`rampart::cli`].

fn main() -> std::process::ExitCode {
    rampart::cli::main()
}
