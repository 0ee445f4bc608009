//! The `engine-gateway` binary: parses the command line and runs the library.

use std::process::ExitCode;

use clap::Parser;

use engine_gateway::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    engine_gateway::logging::init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => engine_gateway::commands::serve(args).await,
            Command::Token(command) => engine_gateway::commands::token(command).await,
            Command::Push(args) => engine_gateway::commands::push(args).await,
            Command::Cat(args) => engine_gateway::commands::cat(args).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
