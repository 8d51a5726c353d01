//! The streamops operator: controllers that make Kafka and the cluster match
//! StreamTopic and StreamJob resources.
//!
//! Layout: `reconcile/` (the shell both controllers run in: shared
//! context, finalizer + metrics wrapper, error policy with backoff, status
//! writer over one conditions trait), `topic/` (plan = pure decisions,
//! controller = observe/act), `job/` (plan = the upgrade state machine,
//! resources = the object graph, admin = the runtime pods' admin API,
//! controller = observe/act), `kafka/` (client settings, admin calls and
//! their failure classification), `leader` (Lease election), `http` +
//! `metrics` (observability), `error` (the crate's one error type).
//!
//! Dependencies point one way, from the controllers down: `topic/` and
//! `job/` use `reconcile/`, `kafka/`, `error`, `config` and `metrics`;
//! `reconcile/` uses `kafka/`, `error`, `config` and `metrics`; `kafka/`
//! uses only `error` and `config` (never a controller); `error` uses
//! nothing in the crate. Inside `kafka/`, `admin` uses `incremental`, and
//! both use `failure` and `topic` (the data the calls speak).

pub mod config;
pub mod error;
pub mod http;
pub mod job;
pub mod kafka;
pub mod leader;
pub mod metrics;
pub mod reconcile;
pub mod telemetry;
pub mod topic;

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use anyhow::Context as _;
use futures::FutureExt;
use kube::Client;
use tracing::{info, warn};

pub use config::OperatorConfig;
use metrics::Metrics;

/// `streamops-operator run`: in-cluster config (or kubeconfig), stops on
/// SIGINT/SIGTERM.
pub async fn run(config: OperatorConfig) -> anyhow::Result<()> {
    let client = Client::try_default()
        .await
        .context("no Kubernetes client configuration (in-cluster service account or KUBECONFIG)")?;
    let shutdown = async {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut term) => {
                    tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
                }
                Err(_) => {
                    let _ = ctrl_c.await;
                }
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
    };
    run_controllers(client, config, shutdown).await
}

/// Runs the HTTP server, elects a leader (unless disabled) and runs the
/// controllers until `shutdown` resolves. Returns an error when leadership is
/// lost, so the process exits and restarts as a follower.
pub async fn run_controllers(
    client: Client,
    config: OperatorConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    config
        .check_tenancy()
        .map_err(anyhow::Error::msg)
        .context("invalid tenancy settings")?;
    let metrics = Metrics::new();
    let ready = Arc::new(AtomicBool::new(false));
    let (addr, server) = http::serve(
        config.http_addr,
        http::Health {
            metrics: metrics.clone(),
            ready: ready.clone(),
        },
    )
    .await
    .with_context(|| format!("cannot listen on {}", config.http_addr))?;
    info!(%addr, "serving /metrics, /healthz, /readyz");
    let shutdown = shutdown.shared();

    let mut elector = if config.leader_election {
        let identity = config
            .identity
            .clone()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| format!("streamops-operator-{}", std::process::id()));
        let mut elector = leader::LeaderElector::new(
            client.clone(),
            &config.lease_namespace,
            &config.lease_name,
            &identity,
            config.lease_duration,
            config.lease_renew,
        );
        tokio::select! {
            () = elector.acquire() => {}
            () = shutdown.clone() => { server.abort(); return Ok(()); }
        }
        Some(elector)
    } else {
        None
    };
    ready.store(true, Ordering::Relaxed);

    let (lost_tx, lost_rx) = tokio::sync::oneshot::channel::<()>();
    let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
    let holder = elector.take().map(|mut elector| {
        tokio::spawn(async move {
            tokio::select! {
                () = elector.hold() => { let _ = lost_tx.send(()); }
                _ = release_rx => elector.release().await,
            }
        })
    });
    let lost = Arc::new(AtomicBool::new(false));
    let stop = {
        let shutdown = shutdown.clone();
        let lost = lost.clone();
        async move {
            tokio::select! {
                () = shutdown => {}
                Ok(()) = lost_rx => lost.store(true, Ordering::SeqCst),
            }
        }
    };
    let stop = stop.shared();
    tokio::join!(
        topic::controller::run(client.clone(), config.clone(), metrics.clone(), stop.clone()),
        job::controller::run(client, config.clone(), metrics, stop),
    );
    server.abort();
    if lost.load(Ordering::SeqCst) {
        anyhow::bail!(
            "lost leadership (Lease {}/{}): exiting",
            config.lease_namespace,
            config.lease_name
        );
    }
    if let Some(holder) = holder {
        let _ = release_tx.send(());
        if let Err(e) = holder.await {
            warn!(error = %e, "lease holder task failed");
        }
    }
    Ok(())
}
