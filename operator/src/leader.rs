//! Leader election with a coordination.k8s.io/v1 Lease (kube 5 ships no
//! elector). Every write is a `replace` carrying the resourceVersion last
//! read, so two replicas racing for the Lease cannot both win: the loser gets
//! 409 Conflict. Expiry is judged on this replica's own clock (how long the
//! record has stayed unchanged), never by comparing clocks across machines.

use std::time::{Duration, Instant};

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::MicroTime,
    jiff::Timestamp,
};
use kube::{
    Api, Client,
    api::{ObjectMeta, PostParams},
};
use tracing::{info, warn};

pub struct LeaderElector {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
    renew: Duration,
    /// The other holder's record and when we first saw it unchanged.
    observed: Option<(String, Instant)>,
}

/// Outcome of one attempt.
#[derive(Debug, PartialEq, Eq)]
enum Attempt {
    Leading,
    Following { holder: String },
}

impl LeaderElector {
    pub fn new(
        client: Client,
        namespace: &str,
        name: &str,
        identity: &str,
        duration: Duration,
        renew: Duration,
    ) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.to_owned(),
            identity: identity.to_owned(),
            duration,
            renew,
            observed: None,
        }
    }

    fn spec(&self, previous: Option<&LeaseSpec>) -> LeaseSpec {
        let now = MicroTime(Timestamp::now());
        let ours = previous.and_then(|p| p.holder_identity.as_deref()) == Some(self.identity.as_str());
        let transitions = previous.and_then(|p| p.lease_transitions).unwrap_or(0);
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(i32::try_from(self.duration.as_secs().max(1)).unwrap_or(i32::MAX)),
            acquire_time: if ours {
                previous.and_then(|p| p.acquire_time.clone())
            } else {
                Some(now.clone())
            },
            renew_time: Some(now),
            lease_transitions: Some(if ours { transitions } else { transitions + 1 }),
            ..LeaseSpec::default()
        }
    }

    async fn try_once(&mut self) -> Result<Attempt, kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    lease_transitions: Some(0),
                    ..self.spec(None)
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(Attempt::Leading),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(Attempt::Following {
                    holder: "(just created by another replica)".into(),
                }),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let free = match &holder {
            None => true,
            Some(h) if *h == self.identity => true,
            Some(h) => {
                // Record identity: holder + renewTime; expired when it has not
                // changed for a whole lease duration as seen by us.
                let record = format!("{h}@{:?}", spec.renew_time);
                let duration = spec.lease_duration_seconds.map_or(self.duration, |s| {
                    Duration::from_secs(u64::try_from(s).unwrap_or(0))
                });
                match &self.observed {
                    Some((seen, since)) if *seen == record => since.elapsed() > duration,
                    _ => {
                        self.observed = Some((record, Instant::now()));
                        false
                    }
                }
            }
        };
        if !free {
            return Ok(Attempt::Following {
                holder: holder.unwrap_or_default(),
            });
        }
        lease.spec = Some(self.spec(Some(&spec)));
        // `lease` carries the resourceVersion we read: a concurrent writer
        // makes this fail with 409 instead of both of us leading.
        match self.api.replace(&self.name, &PostParams::default(), &lease).await {
            Ok(_) => Ok(Attempt::Leading),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(Attempt::Following {
                holder: "(changed concurrently)".into(),
            }),
            Err(e) => Err(e),
        }
    }

    /// Waits until this replica holds the Lease.
    pub async fn acquire(&mut self) {
        loop {
            match self.try_once().await {
                Ok(Attempt::Leading) => {
                    info!(lease = %self.name, identity = %self.identity, "acquired leadership");
                    return;
                }
                Ok(Attempt::Following { holder }) => {
                    tracing::debug!(%holder, "lease held by another replica");
                }
                Err(e) => warn!(error = %e, "lease acquisition failed"),
            }
            tokio::time::sleep(self.renew).await;
        }
    }

    /// Renews the Lease until renewal fails for a whole lease duration or
    /// another replica took it; then returns (the caller must stop acting).
    pub async fn hold(&mut self) {
        let mut last_renewed = Instant::now();
        loop {
            tokio::time::sleep(self.renew).await;
            match self.try_once().await {
                Ok(Attempt::Leading) => last_renewed = Instant::now(),
                Ok(Attempt::Following { holder }) => {
                    warn!(%holder, "lost the lease to another replica");
                    return;
                }
                Err(e) => {
                    warn!(error = %e, "lease renewal failed");
                    // Step down before the Lease can expire for the others.
                    if last_renewed.elapsed() + self.renew >= self.duration {
                        return;
                    }
                }
            }
        }
    }

    /// Gives the Lease up (on clean shutdown) so a standby takes over at once.
    pub async fn release(&mut self) {
        if let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await
            && let Some(spec) = lease.spec.as_mut()
            && spec.holder_identity.as_deref() == Some(self.identity.as_str())
        {
            spec.holder_identity = None;
            spec.renew_time = None;
            spec.acquire_time = None;
            if let Err(e) = self.api.replace(&self.name, &PostParams::default(), &lease).await {
                warn!(error = %e, "could not release the lease");
            }
        }
    }
}
