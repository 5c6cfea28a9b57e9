//! The `ordo` binary: every role is a subcommand.

fn main() -> std::process::ExitCode {
    ordo::cli::main()
}
