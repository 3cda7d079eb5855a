//! `se3` subcommand: bench_math (filled in by its issue).

/// Runs it.
pub fn run() -> Result<(), super::CliError> {
    Err("not built yet".into())
}
