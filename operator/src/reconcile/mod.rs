//! The controller shell both controllers run in: [`reconcile`] wraps a
//! controller's apply/cleanup in the finalizer, a tracing span, timing and
//! result counting; [`error_policy`] retries with exponential backoff per
//! object; [`status`] writes kstatus conditions through one
//! [`status::Conditions`] trait; [`context::Shared`] is what every reconcile
//! needs. A controller (`topic::controller`,
//! `job::controller`) keeps only observe -> decide -> act.

pub mod context;
pub mod status;

use std::{future::Future, sync::Arc, time::Instant};

use futures::StreamExt;
use kube::{
    Api, Resource, ResourceExt,
    runtime::{
        Controller,
        controller::Action,
        events::EventType,
        finalizer::{self, Event as FinalizerEvent},
    },
};
use tracing::{Instrument, debug, info_span, warn};

use crate::error::{Error, Result};
use context::Shared;
use status::Reported;

/// One controller: its kind, its names and what it does on apply and on
/// cleanup (the finalizer's two events).
pub trait Reconciler: Send + Sync + 'static {
    type Object: Reported + Send + Sync + 'static;
    /// Name of the controller in metrics and logs.
    const CONTROLLER: &'static str;
    /// Held while the controller may still have to clean up outside the
    /// cluster (Kafka topics).
    const FINALIZER: &'static str;

    fn shared(&self) -> &Shared;

    /// Observe, decide, act for an object that is not being deleted.
    fn apply(
        &self,
        object: &Self::Object,
        api: &Api<Self::Object>,
    ) -> impl Future<Output = Result<Action>> + Send;

    /// Clean up for an object being deleted; the finalizer goes once this
    /// returns `Ok`.
    fn cleanup(
        &self,
        object: &Self::Object,
        api: &Api<Self::Object>,
    ) -> impl Future<Output = Result<Action>> + Send;

    /// After every reconcile, whatever its result.
    fn reconciled(&self) {}
}

/// Runs `controller` with `ctx` until `shutdown` resolves.
pub async fn run<R: Reconciler>(
    controller: Controller<R::Object>,
    ctx: Arc<R>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    controller
        .graceful_shutdown_on(shutdown)
        .run(reconcile::<R>, error_policy::<R>, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                debug!(error = %e, "reconcile loop");
            }
        })
        .await;
}

/// One reconciliation in the finalizer, timed and counted.
pub async fn reconcile<R: Reconciler>(object: Arc<R::Object>, ctx: Arc<R>) -> Result<Action> {
    let span = info_span!(
        "reconcile",
        controller = R::CONTROLLER,
        namespace = object.namespace().unwrap_or_default(),
        name = object.name_any(),
        generation = object.meta().generation.unwrap_or_default(),
    );
    async move {
        let started = Instant::now();
        let shared = ctx.shared();
        let ns = object.namespace().unwrap_or_default();
        let api: Api<R::Object> = Api::namespaced(shared.client.clone(), &ns);
        let result = finalizer::finalizer(&api, R::FINALIZER, object.clone(), |event| async {
            match event {
                FinalizerEvent::Apply(o) => ctx.apply(&o, &api).await,
                FinalizerEvent::Cleanup(o) => ctx.cleanup(&o, &api).await,
            }
        })
        .await
        .map_err(|e| match e {
            finalizer::Error::ApplyFailed(inner) | finalizer::Error::CleanupFailed(inner) => inner,
            other => Error::Finalizer(Box::new(other)),
        });
        shared
            .metrics
            .reconciled(R::CONTROLLER, result.is_ok(), started.elapsed());
        match &result {
            Ok(_) => shared.reset_backoff(&object.uid().unwrap_or_default()),
            Err(e) => shared.metrics.error(R::CONTROLLER, e.reason()),
        }
        ctx.reconciled();
        result
    }
    .instrument(span)
    .await
}

/// A failed reconcile is retried with exponential backoff per object. One
/// a user must act on (not transient) is also a Warning Event on the
/// object, since it may never reach its status (a bad pod template fails
/// after the status was written).
pub fn error_policy<R: Reconciler>(object: Arc<R::Object>, error: &Error, ctx: Arc<R>) -> Action {
    let delay = ctx.shared().next_backoff(&object.uid().unwrap_or_default());
    warn!(namespace = object.namespace().unwrap_or_default(), name = object.name_any(), reason = error.reason(), error = %error, retry_in = ?delay, "reconcile failed");
    if !error.is_transient()
        && let Ok(runtime) = tokio::runtime::Handle::try_current()
    {
        let (reason, note) = (error.reason(), error.to_string());
        runtime.spawn(async move {
            ctx.shared()
                .event(&*object, EventType::Warning, reason, "Reconcile", note)
                .await;
        });
    }
    Action::requeue(delay)
}
