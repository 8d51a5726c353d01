//! `streamops-runtime`: the runtime binary (thin shell over the library).

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use streamops_runtime::RuntimeError;

#[derive(Parser)]
#[command(
    name = "streamops-runtime",
    version,
    about = "streamops stream-processing runtime"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Fetch cluster metadata from Kafka; exit 0 if the broker answers.
    CheckBroker {
        #[arg(long)]
        bootstrap_servers: String,
        /// How long to wait for metadata.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Block until SIGTERM or SIGINT, then exit 0.
    Idle,
    /// Run the built-in benchmark (build with --release).
    Bench(Box<streamops_runtime::bench::driver::BenchArgs>),
    /// Run a job: the tasks given (or this pod's share), exactly once, until SIGTERM.
    Run(Box<streamops_runtime::pipeline::cli::RunArgs>),
    /// Run a StreamJob YAML on a file of records (JSON lines) without Kafka
    /// or a cluster, with the pods' engine; print its results, or compare
    /// them with --expect (exit 1 and a diff when they differ, 2 on errors).
    Test(Box<streamops_runtime::local::TestArgs>),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::CheckBroker {
            bootstrap_servers,
            timeout,
        } => check_broker(&bootstrap_servers, timeout),
        Command::Idle => idle(),
        Command::Bench(args) => streamops_runtime::bench::driver::run(*args),
        Command::Test(args) => return test(&args),
        Command::Run(args) => {
            init_tracing();
            return match streamops_runtime::pipeline::cli::run(*args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e.to_string(), "runtime failed");
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            };
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `streamops-runtime test`: results on stdout (or the diff against
/// --expect), a summary and every late record and dead letter on stderr.
fn test(args: &streamops_runtime::local::TestArgs) -> ExitCode {
    let outcome = match streamops_runtime::local::test_command(args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let run = &outcome.run;
    for d in &run.dead_letters {
        eprintln!("dead letter: record {} ({}): {}", d.record + 1, d.kind, d.reason);
    }
    for l in &run.late {
        eprintln!("late: {}", streamops_runtime::local::canonical(l));
    }
    for (to, r) in &run.routed {
        eprintln!("routed to {to}: {}", streamops_runtime::local::canonical(r));
    }
    let routed = if run.routed.is_empty() {
        String::new()
    } else {
        format!(", {} routed", run.routed.len())
    };
    eprintln!(
        "{} records: {} results, {} late, {} dead letters{routed}",
        outcome.records,
        run.results.len(),
        run.late.len(),
        run.dead_letters.len()
    );
    match &outcome.diff {
        None => {
            for r in &run.results {
                println!("{}", streamops_runtime::local::canonical(r));
            }
            ExitCode::SUCCESS
        }
        Some(diff) if diff.is_empty() => {
            eprintln!("ok: the results are as expected");
            ExitCode::SUCCESS
        }
        Some(diff) => {
            println!(
                "results differ from --expect: {} missing (-), {} unexpected (+)",
                diff.missing.len(),
                diff.unexpected.len()
            );
            print!("{diff}");
            ExitCode::FAILURE
        }
    }
}

/// Structured logs: JSON with `STREAMOPS_LOG_FORMAT=json`, text otherwise;
/// level from `RUST_LOG` (default info).
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::env::var("STREAMOPS_LOG_FORMAT").is_ok_and(|v| v == "json") {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn check_broker(bootstrap: &str, timeout: Duration) -> Result<(), RuntimeError> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("socket.timeout.ms", timeout.as_millis().max(10).to_string())
        .create()
        .map_err(|e| RuntimeError::Kafka(format!("cannot create client for {bootstrap}: {e}")))?;
    let md = consumer
        .fetch_metadata(None, timeout)
        .map_err(|e| RuntimeError::Kafka(format!("no metadata from {bootstrap} within {timeout:?}: {e}")))?;
    println!(
        "ok: {} broker(s), {} topic(s), via {}",
        md.brokers().len(),
        md.topics().len(),
        md.orig_broker_name()
    );
    Ok(())
}

fn idle() -> Result<(), RuntimeError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r,
            _ = term.recv() => Ok(()),
        }
    })?;
    Ok(())
}
