//! The `graphfeed` binary: parses the command line, runs it on a single-threaded runtime, and
//! turns an error into `error: …` and `hint: …` on stderr and an exit code (2 for usage and
//! configuration, 1 otherwise).

use std::io::IsTerminal as _;
use std::process::ExitCode;

use clap::Parser as _;
use graphfeed_client::cli::Cli;
use graphfeed_client::console::Console;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    let env = |name: &str| std::env::var(name).ok();
    let mut stdout = std::io::stdout().lock();
    let mut stderr = std::io::stderr();
    let stderr_is_terminal = stderr.is_terminal();
    let mut console = Console::new(&mut stdout, &mut stderr, stderr_is_terminal);
    match runtime.block_on(graphfeed_client::run(cli, &env, &mut console)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is_broken_pipe() => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            eprintln!("hint: {}", e.hint());
            ExitCode::from(e.exit_code())
        }
    }
}
