//! The `switchyard` binary: thin wiring of the control plane and gateway crates.
#![forbid(unsafe_code)]

mod cli;
mod traces;
mod usage_cmd;

use std::process::ExitCode;

use clap::Parser;

/// mimalloc instead of the system allocator: profiling the gateway under load showed glibc
/// malloc/free at about a tenth of its CPU time; mimalloc's thread-local free lists cut it.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Logs, and traces with --otlp-endpoint: the exporter's gRPC channel lives on the runtime.
    let telemetry = {
        let _runtime = runtime.enter();
        let (traces, service) = cli.command.traces();
        match traces::init(&cli.log, traces, service) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("error: {e:#}");
                return ExitCode::FAILURE;
            }
        }
    };
    let exporting = telemetry.exporting();
    let result = runtime.block_on(cli::run(cli, exporting));
    // The last spans are sent while the runtime still drives the exporter's channel.
    telemetry.shutdown();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the reason, with its causes.
            let reason = e
                .chain()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(": ");
            tracing::error!(error = %reason, "exiting");
            eprintln!("error: {reason}");
            ExitCode::FAILURE
        }
    }
}
