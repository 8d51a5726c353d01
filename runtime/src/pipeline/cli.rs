//! `streamops-runtime run`: the process a StreamJob pod runs.

use crate::error::RuntimeError;
use crate::error::{Context, Result};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tracing::{error, info};

use super::crash::CrashPoints;
use super::job::{JobExt, JobFile, assigned_tasks, ordinal_from_pod_name, parse_tasks};
use super::runner::{BackendKind, RunConfig, Runner};
use super::shared::{RuntimeState, Shared};
use crate::kafka::settings::{KafkaArgs, KafkaSettings};

#[derive(clap::Args)]
pub struct RunArgs {
    /// The job file the operator writes (ConfigMap `<job>-config`, key `job.json`).
    #[arg(
        long,
        env = "STREAMOPS_JOB_FILE",
        default_value = "/etc/streamops/job/job.json"
    )]
    pub job_file: PathBuf,
    /// Tasks (source partitions) to own, e.g. `0,2,4-6`. Default: from the
    /// pod's ordinal (POD_NAME) and the job's parallelism.
    #[arg(long, env = "STREAMOPS_TASKS")]
    pub tasks: Option<String>,
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Local working state (RocksDB); an emptyDir in a pod.
    #[arg(long, env = "STREAMOPS_STATE_DIR", default_value = "/var/lib/streamops/state")]
    pub state_dir: PathBuf,
    /// Exactly once: bytes of output held between checkpoints (outputs are
    /// written in the checkpoint's transaction, after its state is durable),
    /// shared by the process's tasks; a task whose share is full checkpoints.
    #[arg(long, env = "STREAMOPS_OUTPUT_BUFFER_BYTES", default_value_t = super::runner::DEFAULT_OUTPUT_BUFFER_BYTES)]
    pub output_buffer_bytes: usize,
    #[arg(long, env = "STREAMOPS_STATE_BACKEND", value_enum, default_value_t = BackendKind::Rocksdb)]
    pub state_backend: BackendKind,
    /// Admin API address (`/healthz`, `/readyz`, `/metrics`, `/v1/...`).
    #[arg(long, env = "STREAMOPS_ADMIN_ADDR", default_value = "0.0.0.0:8080")]
    pub admin_addr: SocketAddr,
    /// File holding the admin API bearer token (mounted from a Secret).
    /// Without it the `/v1` endpoints refuse every request.
    #[arg(long, env = "STREAMOPS_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// Where to write why the process failed (`<Reason>: <detail>`): the
    /// container's `terminationMessagePath` in a pod.
    #[arg(long, env = "STREAMOPS_TERMINATION_LOG")]
    pub termination_log: Option<PathBuf>,
    /// Test only: crash points (see the fault tests).
    #[arg(long, env = "STREAMOPS_TEST_CRASH_POINTS", hide = true)]
    pub crash_points: Option<String>,
}

/// Runs the job until SIGTERM (graceful: commits what was processed) or a
/// fatal error (exit 1; the restart recovers from the last checkpoint),
/// whose reason goes to the termination log.
pub fn run(args: RunArgs) -> Result<()> {
    let termination_log = args.termination_log.clone();
    let result = run_job(args);
    if let (Err(e), Some(path)) = (&result, &termination_log) {
        super::failure::write_termination_log(path, e);
    }
    result
}

fn run_job(args: RunArgs) -> Result<()> {
    let job = <JobFile as JobExt>::load(&args.job_file)?;
    let tasks = match (&args.tasks, &args.pod_name) {
        (Some(t), _) => parse_tasks(t)?,
        (None, Some(pod)) => {
            let ordinal = ordinal_from_pod_name(pod).ok_or_else(|| {
                RuntimeError::InvalidArgument(format!(
                    "POD_NAME {pod:?} does not end in -<ordinal>; pass --tasks"
                ))
            })?;
            assigned_tasks(job.task_count(), job.parallelism_u32(), ordinal)
        }
        (None, None) => {
            return Err(RuntimeError::InvalidArgument(
                "no tasks: pass --tasks or run in a StatefulSet pod (POD_NAME)".to_string(),
            ));
        }
    };
    if let Some(t) = tasks.iter().find(|t| **t >= job.task_count()) {
        return Err(RuntimeError::InvalidArgument(format!(
            "task {t} does not exist: the job has {} source partitions",
            job.task_count()
        )));
    }
    let token = match &args.admin_token_file {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .with_context(|| format!("reading the admin token {}", p.display()))?
                .trim()
                .to_string(),
        ),
        None => None,
    };
    let kafka = KafkaSettings::from_args(&args.kafka)?;
    let seed = std::process::id() as u64
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(7, |d| d.as_nanos() as u64);
    let crash = match &args.crash_points {
        Some(text) => {
            CrashPoints::parse(text, seed ^ 0x9e37_79b9_7f4a_7c15).map_err(RuntimeError::InvalidArgument)?
        }
        None => CrashPoints::none(),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let shared = Arc::new(Shared::new(job.generation, tasks.clone()).context("registering metrics")?);
    let admin = rt.block_on(super::admin::serve(args.admin_addr, shared.clone(), token))?;
    info!(%admin, "admin API listening");
    {
        let shared = shared.clone();
        rt.spawn(async move {
            let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    error!(error = %e, "cannot install the SIGTERM handler");
                    return;
                }
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {},
                _ = term.recv() => {},
            }
            info!("shutdown requested");
            shared.shutdown.store(true, Ordering::Relaxed);
        });
    }
    let cfg = RunConfig {
        job,
        tasks,
        kafka,
        state_dir: args.state_dir,
        backend: args.state_backend,
        crash,
        kafka_timeout: super::runner::DEFAULT_KAFKA_TIMEOUT,
        output_buffer_bytes: args.output_buffer_bytes,
    };
    let handle = rt.handle().clone();
    let pipeline_shared = shared.clone();
    let result = std::thread::Builder::new()
        .name("pipeline".into())
        .spawn(move || Runner::start(cfg, pipeline_shared.clone(), handle).and_then(Runner::run))
        .context("starting the pipeline thread")?
        .join()
        .map_err(|_| RuntimeError::Dataflow("the pipeline thread panicked".into()))?;
    if let Err(e) = &result {
        shared.update_status(|s| {
            s.state = RuntimeState::Failed;
            s.error = Some(e.to_string());
        });
    }
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    result
}
