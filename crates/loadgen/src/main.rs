//! `gateway-bench`: runs a benchmark, prints its markdown table, writes JSON and markdown files.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use loadgen::cli::{Cli, Command, IncidentArgs, IngestArgs, SinkArgs};
use loadgen::{incident, ingest, machine};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Ingest(args) => ingest_main(*args),
        Command::Incident(args) => incident_main(args),
        Command::Sink(args) => sink_main(args),
    }
}

fn sink_main(args: SinkArgs) -> ExitCode {
    let listener = match std::net::TcpListener::bind(args.listen) {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!("error: listening on {}: {err}", args.listen);
            return ExitCode::FAILURE;
        }
    };
    // std listens with a backlog of 128: 1,024 streams connecting at once would overflow it
    // and time out; listen again with the kernel's largest (the gateway's runtime uses 1024).
    // SAFETY: listen(2) on a socket this process owns; it only changes the backlog.
    unsafe {
        libc::listen(std::os::fd::AsRawFd::as_raw_fd(&listener), 4096);
    }
    match listener.local_addr() {
        Ok(addr) => {
            println!("sink listening on {addr}");
            let _ = std::io::stdout().flush();
        }
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::FAILURE;
        }
    }
    match loadgen::sink::serve(listener, args.fsync_dir) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn incident_main(args: IncidentArgs) -> ExitCode {
    let result = args.into_config().and_then(|(config, out)| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        let runs = runtime.block_on(incident::run(&config))?;
        let machine = machine::gather(&config.data_dir);
        let markdown = incident::to_markdown(&config, &runs, &machine);
        let _ = std::io::stdout().lock().write_all(markdown.as_bytes());
        std::fs::write(&out, &markdown)?;
        eprintln!("wrote {}", out.display());
        Ok(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn ingest_main(args: IngestArgs) -> ExitCode {
    let config = match args.into_config() {
        Ok(config) => config,
        Err(err) => {
            eprintln!("error: {err:#}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: starting the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let report = match runtime.block_on(ingest::run(&config)) {
        Ok(report) => report,
        Err(err) => {
            eprintln!("error: {err:#}");
            return ExitCode::FAILURE;
        }
    };
    let markdown = report.to_markdown();
    // A closed stdout (`| head`) is not a failure; the files still get written.
    let _ = std::io::stdout().lock().write_all(markdown.as_bytes());
    if let Err(err) = report.write_files(&config.out) {
        eprintln!("error: {err:#}");
        return ExitCode::FAILURE;
    }
    eprintln!(
        "wrote {} and {}",
        config.out.display(),
        config.out.with_extension("md").display()
    );
    let problems = ingest::problems(&report);
    if problems.is_empty() {
        return ExitCode::SUCCESS;
    }
    for problem in &problems {
        eprintln!("check failed: {problem}");
    }
    ExitCode::FAILURE
}
