//! The autoscaler's decision: one pure function, [`decide`], from
//! `spec.autoscaler`, the last `status.autoscaler`, what was observed now
//! ([`Sample`]) and the clock, to the next `status.autoscaler`. No I/O, no
//! clock reads: the status is its only memory, so an operator restart (or a
//! second replica taking over) resumes every timer where it was.
//!
//! The job plan ([`super::plan`]) evaluates it in the steady state, with
//! every pod of the running version ready, from what the pods report in
//! `/v1/status` ([`sample_of`]); in `apply` mode the recommendation is the
//! pod count the plan rescales to (a savepoint and a restart, as for a
//! changed `spec.parallelism`).
//!
//! # The rules
//!
//! Bounds. `hi = min(maxParallelism or partitions, partitions)`,
//! `lo = min(minParallelism, hi)`. Every recommendation lies in `[lo, hi]`;
//! the bounds win over every rule below (a standing recommendation outside
//! them is moved inside at once: `BelowMinimum`, `AboveMaximum`).
//!
//! Signals, at each evaluation, against `targetLag` (`T`):
//! - *behind*: lag > `T`. `behindSince` is when the current run of behind
//!   evaluations began;
//! - *comfortable*: lag <= `T / 2` ([`COMFORT`]). `withinSince` likewise,
//!   and `peakInputRate` is the highest input rate seen during that run;
//! - in between: neither (both runs end).
//!
//! Scale up when behind for `stabilizationWindow`, sized from the rates, not
//! one step at a time: the pods must carry the input with
//! [`SCALE_UP_HEADROOM`] plus drain the backlog (`lag * input`, records)
//! within `T`, i.e. `input * (1 + headroom + lag / T)` records/s. The
//! recommendation is the smallest parallelism whose capacity covers that
//! (capped at `hi`). If even `hi` does not, and the job is already at `hi`,
//! the reason is `AtPartitionLimit` (or `AtMaxParallelism` when
//! `maxParallelism` is the lower cap), with `neededParallelism`: where
//! growing the source partitions ([`grow`], `growSourcePartitions`) takes
//! over. If the current recommendation already covers it, `CatchingUp`.
//!
//! Scale down only when comfortable for `scaleDownDelay` and a lower
//! parallelism still covers the *peak* input rate of that whole run with
//! [`SCALE_DOWN_HEADROOM`] (larger than the scale-up headroom, so a
//! scale-down never lands where the next scale-up starts); then straight to
//! the smallest such parallelism. The delay is at least the stabilisation
//! window, whatever `scaleDownDelay` says. Never lower than the current parallelism
//! while behind (a pending scale-down is withdrawn).
//!
//! Cool-down: every change of the recommendation ends both runs, so the next
//! scale-up needs a full window of evidence gathered *after* the change (the
//! rescale itself stops processing for a while and makes the lag jump), and
//! the next scale-down a full delay. Hence at most one change per
//! stabilisation window, and no flapping on an input that oscillates around
//! the threshold: its peaks stay in `peakInputRate`.
//!
//! Capacity. A pod's speed is only visible while the job is behind (then it
//! processes as fast as it can): `podCapacity` is set from the processing
//! rate then, and only raised otherwise (a lower bound). Partitions are
//! spread over the pods as evenly as they go, so the busiest pod holds
//! `ceil(partitions / p)` of them and bounds the job: parallelism `p` counts
//! as `partitions / ceil(partitions / p)` pods' worth (12 partitions on 5
//! pods are no faster than on 4). This assumes partitions carry similar
//! load.
//!
//! Missing or nonsensical observations (no lag, no input rate, NaN, a
//! negative rate, no partitions, no pods) keep the standing recommendation
//! (the current parallelism unless an earlier decision is still pending)
//! with a reason saying which, and end both runs: evidence must be
//! continuous. An unknown processing rate only matters when sizing is due
//! and nothing is remembered (`CapacityUnknown`).
//!
//! Known limit: event-time lag also grows when producers send records late;
//! more pods do not help then, and this decision cannot tell the
//! difference (the record backlog could, once it is observed).

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use streamops_crds::{
    job::{AutoscalerMode, AutoscalerSpec, AutoscalerStatus, PartitionGrowth, defaults},
    runtime_api::RuntimeStatus,
};

/// Spare capacity a scale-up sizes for beyond the input rate: at the
/// current input the pods are at most ~83% busy after it.
pub const SCALE_UP_HEADROOM: f64 = 0.2;
/// Spare capacity a scale-down must keep over the peak input rate of the
/// scale-down delay.
pub const SCALE_DOWN_HEADROOM: f64 = 0.3;
/// "Comfortably within target": lag at most this fraction of `targetLag`.
pub const COMFORT: f64 = 0.5;

/// The reasons [`decide`] gives (`status.autoscaler.reason`).
pub mod reason {
    pub const DISABLED: &str = "Disabled";
    pub const PARTITIONS_UNKNOWN: &str = "PartitionsUnknown";
    pub const NOT_RUNNING: &str = "NotRunning";
    pub const METRICS_UNAVAILABLE: &str = "MetricsUnavailable";
    pub const CAPACITY_UNKNOWN: &str = "CapacityUnknown";
    pub const BELOW_MINIMUM: &str = "BelowMinimum";
    pub const ABOVE_MAXIMUM: &str = "AboveMaximum";
    pub const SCALE_UP: &str = "ScaleUp";
    pub const SCALE_DOWN: &str = "ScaleDown";
    pub const SCALE_DOWN_WITHDRAWN: &str = "ScaleDownWithdrawn";
    pub const LAG_ABOVE_TARGET: &str = "LagAboveTarget";
    pub const CATCHING_UP: &str = "CatchingUp";
    pub const AT_PARTITION_LIMIT: &str = "AtPartitionLimit";
    pub const AT_MAX_PARALLELISM: &str = "AtMaxParallelism";
    pub const WITHIN_TARGET: &str = "WithinTarget";
    pub const AT_MINIMUM: &str = "AtMinimum";
    pub const NO_SPARE_CAPACITY: &str = "NoSpareCapacity";
    pub const GROWING_PARTITIONS: &str = "GrowingPartitions";
    pub const GROWTH_TIMED_OUT: &str = "GrowthTimedOut";
    pub const GROWTH_REFUSED: &str = "GrowthRefused";
}

/// How long a growth of the source partitions may take, from the edit of
/// the StreamTopics to the topics reporting the new count, before the
/// autoscaler gives up on it (a sync that reverted the edit, a topic the
/// broker does not grow) and decides afresh.
pub const GROWTH_TIMEOUT_MS: i64 = 300_000;

/// The growth of the source StreamTopics `growSourcePartitions` asks for
/// after this evaluation's `decided` status, given each source StreamTopic's
/// name and partition count (in `spec.source.topics` order) and the job's
/// key groups: `decided` with the growth recorded, or `None`.
///
/// Only in `apply` mode with the option on, at `AtPartitionLimit`; toward
/// `neededParallelism`, at most doubling the partitions at once, never above
/// `maxParallelism` nor the key groups (a pod beyond them would hold no key
/// group). Each topic grows by the same factor, rounded up. The
/// recommendation becomes the new count, so the pods move once, when the
/// topics have grown (until then it is clipped to the partitions there
/// are); the evidence restarts, as after any change.
pub fn grow(
    spec: &AutoscalerSpec,
    decided: &AutoscalerStatus,
    sources: &[(String, i32)],
    key_groups: Option<i32>,
    now: Timestamp,
) -> Option<AutoscalerStatus> {
    if spec.mode != AutoscalerMode::Apply
        || spec.grow_source_partitions != Some(true)
        || decided.reason != reason::AT_PARTITION_LIMIT
        || decided.partition_growth.is_some()
        || sources.iter().any(|(_, p)| *p < 1)
    {
        return None;
    }
    let from: i32 = sources.iter().map(|(_, p)| *p).sum();
    let to = decided
        .needed_parallelism?
        .min(from.saturating_mul(2))
        .min(spec.max_parallelism.unwrap_or(i32::MAX))
        .min(key_groups.unwrap_or(i32::MAX));
    if to <= from {
        return None;
    }
    let topics: std::collections::BTreeMap<String, i32> = sources
        .iter()
        .map(|(name, p)| {
            let grown = (i64::from(*p) * i64::from(to) + i64::from(from) - 1) / i64::from(from);
            (name.clone(), i32::try_from(grown).unwrap_or(i32::MAX).max(*p))
        })
        .collect();
    let total: i32 = topics.values().sum();
    let list: Vec<String> = sources
        .iter()
        .map(|(name, p)| format!("{name} {p} -> {}", topics[name]))
        .collect();
    let mut grown = change(
        to.min(total),
        reason::GROWING_PARTITIONS,
        capped(format!(
            "at the partition limit and still behind ({}); growing StreamTopic {} \
             (spec.autoscaler.growSourcePartitions), then {to} pods",
            decided.message.as_deref().unwrap_or_default(),
            list.join(", ")
        )),
        now,
        Memory {
            pod_capacity: decided.pod_capacity,
            ..Memory::default()
        },
    );
    grown.partition_growth = Some(PartitionGrowth {
        topics,
        from,
        to: total,
        time: Time(now),
    });
    Some(grown)
}

/// Where a growth recorded in `status` stands, given the source
/// StreamTopics' partition counts now.
#[derive(Clone, Debug, PartialEq)]
pub enum Growth {
    /// None is pending.
    None,
    /// Every topic has its new count (or is no longer a source).
    Done,
    /// Not yet: the topics to (re-)ask, name -> partitions.
    Waiting(std::collections::BTreeMap<String, i32>),
    /// Not within [`GROWTH_TIMEOUT_MS`]: the status deciding afresh.
    TimedOut(AutoscalerStatus),
}

/// [`Growth`] of `status`'s pending growth.
pub fn growth_progress(status: &AutoscalerStatus, sources: &[(String, i32)], now: Timestamp) -> Growth {
    let Some(g) = &status.partition_growth else {
        return Growth::None;
    };
    let short: std::collections::BTreeMap<String, i32> = g
        .topics
        .iter()
        .filter(|(name, want)| sources.iter().any(|(n, p)| n == *name && p < *want))
        .map(|(n, p)| (n.clone(), *p))
        .collect();
    if short.is_empty() {
        return Growth::Done;
    }
    if elapsed_ms(&g.time, now) < GROWTH_TIMEOUT_MS {
        return Growth::Waiting(short);
    }
    let now_partitions: i32 = sources.iter().map(|(_, p)| *p).sum();
    let mut gave_up = change(
        g.from.min(now_partitions).max(1),
        reason::GROWTH_TIMED_OUT,
        format!(
            "the source StreamTopics did not reach {} partitions within {}s (still short: {}); deciding afresh. \
             Was the edit reverted (Argo CD self-heal), or refused?",
            g.to,
            GROWTH_TIMEOUT_MS / 1000,
            short
                .iter()
                .map(|(n, p)| format!("{n} < {p}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        now,
        Memory {
            pod_capacity: status.pod_capacity,
            ..Memory::default()
        },
    );
    gave_up.recommended_parallelism = status
        .recommended_parallelism
        .map(|r| r.min(now_partitions).max(1));
    Growth::TimedOut(gave_up)
}

/// `message` cut to what `status.autoscaler.message` holds (1,024 bytes).
pub fn capped(mut message: String) -> String {
    const MAX: usize = 1024;
    if message.len() > MAX {
        let mut end = MAX - 3;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push_str("...");
    }
    message
}

/// What the operator observes at one evaluation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample {
    /// Runtime pods running now.
    pub parallelism: i32,
    /// Partitions of the source topics, summed.
    pub partitions: i32,
    /// Event-time lag in seconds: how far the slowest task is behind, the
    /// maximum over the tasks.
    pub lag_seconds: Option<f64>,
    /// Records/s arriving on the source partitions.
    pub input_rate: Option<f64>,
    /// Records/s the whole job processed; unknown or 0 right after a start.
    pub processing_rate: Option<f64>,
}

/// The sample from what each of the `parallelism` running pods answered
/// (`None`: no answer): the slowest pod's event-time lag, the rates summed.
/// A pod missing, or missing a figure, makes that figure unknown: a
/// decision on part of the job would be a decision on a wrong total.
pub fn sample_of<'a>(
    parallelism: i32,
    partitions: i32,
    pods: impl IntoIterator<Item = Option<&'a RuntimeStatus>>,
) -> Sample {
    let pods: Vec<Option<&RuntimeStatus>> = pods.into_iter().collect();
    let complete = usize::try_from(parallelism).is_ok_and(|n| n >= 1 && pods.len() == n);
    let figure = |of: fn(&RuntimeStatus) -> Option<i64>| -> Option<Vec<f64>> {
        if !complete {
            return None;
        }
        pods.iter().map(|p| p.and_then(of).map(|v| v as f64)).collect()
    };
    Sample {
        parallelism,
        partitions,
        lag_seconds: figure(|s| s.event_time_lag_ms)
            .map(|lags| lags.into_iter().fold(0.0, f64::max) / 1000.0),
        input_rate: figure(|s| s.input_rate).map(|r| r.into_iter().sum()),
        processing_rate: figure(|s| s.processing_rate).map(|r| r.into_iter().sum()),
    }
}

/// The next `status.autoscaler`. Deterministic; never panics.
pub fn decide(
    spec: &AutoscalerSpec,
    previous: Option<&AutoscalerStatus>,
    sample: &Sample,
    now: Timestamp,
) -> AutoscalerStatus {
    let prev = previous.cloned().unwrap_or_default();
    let current = sample.parallelism;
    // Kept through every hold: a pod's speed does not go stale because one
    // scrape failed.
    let remembered = Memory {
        pod_capacity: prev.pod_capacity.filter(|c| *c > 0),
        ..Memory::default()
    };
    if spec.mode == AutoscalerMode::Off {
        return hold(
            &prev,
            (current >= 1).then_some(current),
            reason::DISABLED,
            "spec.autoscaler.mode is off".into(),
            remembered,
        );
    }
    if sample.partitions < 1 {
        return hold(
            &prev,
            prev.recommended_parallelism,
            reason::PARTITIONS_UNKNOWN,
            "the source partition count is not known yet".into(),
            remembered,
        );
    }
    let partitions = sample.partitions;
    let hi = spec
        .max_parallelism
        .map_or(partitions, |m| m.min(partitions))
        .max(1);
    let lo = spec.min_parallelism().clamp(1, hi);

    // The standing recommendation: the last one, or what runs.
    let raw = match prev.recommended_parallelism {
        Some(r) => r,
        None if current >= 1 => current,
        None => lo,
    };
    let target = spec
        .target_lag
        .as_millis()
        .max(defaults::AUTOSCALER_MIN_TARGET_LAG_MS) as f64
        / 1000.0;
    let behind_now = usable(sample.lag_seconds).is_some_and(|lag| lag > target);
    let mut standing = raw.clamp(lo, hi);
    if behind_now && current >= 1 {
        standing = standing.max(current.min(hi));
    }
    if standing != raw {
        let (why, message) = if (lo..=hi).contains(&raw) {
            (
                reason::SCALE_DOWN_WITHDRAWN,
                format!("lag above target, so not below the {current} running pods; recommending {standing}"),
            )
        } else {
            let bound = if raw < lo {
                "minParallelism"
            } else if hi < partitions {
                "maxParallelism"
            } else {
                "the source partition count"
            };
            let why = if raw < lo {
                reason::BELOW_MINIMUM
            } else {
                reason::ABOVE_MAXIMUM
            };
            (
                why,
                format!("{raw} is outside [{lo}, {hi}] ({bound}); recommending {standing}"),
            )
        };
        return change(standing, why, message, now, remembered);
    }
    if current < 1 {
        return hold(
            &prev,
            Some(standing),
            reason::NOT_RUNNING,
            "no runtime pods are running".into(),
            remembered,
        );
    }
    let (lag, input) = match (usable(sample.lag_seconds), usable(sample.input_rate)) {
        (Some(lag), Some(input)) => (lag, input),
        (lag, _) => {
            let missing = if lag.is_none() {
                "the event-time lag"
            } else {
                "the input rate"
            };
            return hold(
                &prev,
                Some(standing),
                reason::METRICS_UNAVAILABLE,
                format!("{missing} is not known; keeping {standing}"),
                remembered,
            );
        }
    };

    let window_ms = spec.stabilization_window_ms();
    // A scale-down never follows a change sooner than a scale-up could.
    let delay_ms = spec.scale_down_delay_ms().max(window_ms);
    let behind = lag > target;
    let comfortable = lag <= target * COMFORT;
    let behind_since = behind.then(|| prev.behind_since.clone().unwrap_or(Time(now)));
    let within_since = comfortable.then(|| prev.within_since.clone().unwrap_or(Time(now)));
    let peak = comfortable.then(|| {
        let seen = if prev.within_since.is_some() {
            prev.peak_input_rate.unwrap_or(0)
        } else {
            0
        };
        seen.max(input.ceil() as i64)
    });

    // A pod's speed: exact while behind (the pods are saturated), a lower
    // bound otherwise.
    let effective_now = effective_pods(current, partitions);
    let measured = usable(sample.processing_rate)
        .filter(|r| *r > 0.0)
        .map(|r| r / effective_now);
    let capacity = match (measured, remembered.pod_capacity) {
        (Some(m), _) if behind => Some(m),
        (Some(m), Some(c)) => Some(m.max(c as f64)),
        (Some(m), None) => Some(m),
        (None, c) => c.map(|c| c as f64),
    };
    let memory = Memory {
        behind_since: behind_since.clone(),
        within_since: within_since.clone(),
        peak_input_rate: peak,
        pod_capacity: capacity.map(|c| c.floor() as i64).filter(|c| *c > 0),
    };
    let numbers = format!(
        "lag {lag:.0}s (target {target:.0}s), input {input:.0}/s, {current} pods of {partitions} partitions"
    );

    if behind {
        let persisted = behind_since
            .as_ref()
            .is_some_and(|since| elapsed_ms(since, now) >= ms(window_ms));
        if !persisted {
            return hold(
                &prev,
                Some(standing),
                reason::LAG_ABOVE_TARGET,
                format!(
                    "{numbers}: waiting for the lag to stay above target for {}s",
                    window_ms / 1000
                ),
                memory,
            );
        }
        let Some(capacity) = capacity else {
            return hold(
                &prev,
                Some(standing),
                reason::CAPACITY_UNKNOWN,
                format!("{numbers}: no processing rate yet to size a scale-up from"),
                memory,
            );
        };
        let needed_rate = input * (1.0 + SCALE_UP_HEADROOM + lag / target);
        let needed = smallest_covering(needed_rate, capacity, lo, hi, partitions);
        let sized = needed.unwrap_or(hi);
        let sizing = format!(
            "{needed_rate:.0}/s needed to keep up and drain within target at {capacity:.0}/s per pod"
        );
        if sized > standing {
            let capped = if needed.is_none() { " (capped)" } else { "" };
            return change(
                sized,
                reason::SCALE_UP,
                format!("{numbers}: {sizing}; {standing} -> {sized}{capped}"),
                now,
                memory,
            );
        }
        let (why, detail) = match needed {
            None if hi < partitions => (reason::AT_MAX_PARALLELISM, "more pods than maxParallelism needed"),
            None => (
                reason::AT_PARTITION_LIMIT,
                "more pods than source partitions needed",
            ),
            Some(_) => (reason::CATCHING_UP, "the recommended pods suffice"),
        };
        let mut held = hold(
            &prev,
            Some(standing),
            why,
            format!("{numbers}: {sizing}; {detail}"),
            memory,
        );
        if why == reason::AT_PARTITION_LIMIT {
            // As many pods as partitions, each partition its own pod.
            let uncapped = (needed_rate / capacity).ceil();
            held.needed_parallelism = Some(if uncapped >= f64::from(i32::MAX) {
                i32::MAX
            } else {
                (uncapped as i32).max(partitions.saturating_add(1))
            });
        }
        return held;
    }

    if comfortable {
        let waited = within_since
            .as_ref()
            .is_some_and(|since| elapsed_ms(since, now) >= ms(delay_ms));
        if !waited || standing <= lo {
            let why = if standing <= lo {
                reason::AT_MINIMUM
            } else {
                reason::WITHIN_TARGET
            };
            return hold(&prev, Some(standing), why, numbers, memory);
        }
        let peak_rate = peak.unwrap_or(0) as f64;
        let Some(capacity) = capacity else {
            return hold(
                &prev,
                Some(standing),
                reason::CAPACITY_UNKNOWN,
                format!("{numbers}: the pods' speed is not known, so no scale-down"),
                memory,
            );
        };
        let needed_rate = peak_rate * (1.0 + SCALE_DOWN_HEADROOM);
        let lower = smallest_covering(needed_rate, capacity, lo, hi, partitions).unwrap_or(hi);
        let sizing = format!("peak {peak_rate:.0}/s needs {needed_rate:.0}/s at {capacity:.0}/s per pod");
        if lower < standing {
            return change(
                lower,
                reason::SCALE_DOWN,
                format!("{numbers}: {sizing}; {standing} -> {lower}"),
                now,
                memory,
            );
        }
        return hold(
            &prev,
            Some(standing),
            reason::NO_SPARE_CAPACITY,
            format!("{numbers}: {sizing}"),
            memory,
        );
    }

    hold(&prev, Some(standing), reason::WITHIN_TARGET, numbers, memory)
}

/// What a status carries from one evaluation to the next.
#[derive(Clone, Debug, Default)]
struct Memory {
    behind_since: Option<Time>,
    within_since: Option<Time>,
    peak_input_rate: Option<i64>,
    pod_capacity: Option<i64>,
}

/// The recommendation stands (it may be set for the first time).
fn hold(
    prev: &AutoscalerStatus,
    recommended: Option<i32>,
    why: &str,
    message: String,
    memory: Memory,
) -> AutoscalerStatus {
    AutoscalerStatus {
        recommended_parallelism: recommended,
        reason: why.to_string(),
        message: Some(message),
        last_decision_time: prev.last_decision_time.clone(),
        behind_since: memory.behind_since,
        within_since: memory.within_since,
        peak_input_rate: memory.peak_input_rate,
        pod_capacity: memory.pod_capacity,
        ..AutoscalerStatus::default()
    }
}

/// A new recommendation: both runs end (the cool-down); the pod speed is kept.
fn change(recommended: i32, why: &str, message: String, now: Timestamp, memory: Memory) -> AutoscalerStatus {
    AutoscalerStatus {
        recommended_parallelism: Some(recommended),
        reason: why.to_string(),
        message: Some(message),
        last_decision_time: Some(Time(now)),
        behind_since: None,
        within_since: None,
        peak_input_rate: None,
        pod_capacity: memory.pod_capacity,
        ..AutoscalerStatus::default()
    }
}

/// A finite, non-negative observation.
fn usable(value: Option<f64>) -> Option<f64> {
    value.filter(|v| v.is_finite() && *v >= 0.0)
}

/// How many pods' worth of throughput `p` pods give on `partitions`
/// partitions spread as evenly as they go: the busiest pod, with
/// `ceil(partitions / p)` of them, bounds the job.
fn effective_pods(p: i32, partitions: i32) -> f64 {
    let partitions = u64::try_from(partitions).unwrap_or(0).max(1);
    let p = u64::try_from(p).unwrap_or(0).clamp(1, partitions);
    let busiest = partitions.div_ceil(p);
    partitions as f64 / busiest as f64
}

/// The smallest parallelism in `[lo, hi]` whose capacity reaches `rate`;
/// `None` when even `hi` does not.
fn smallest_covering(rate: f64, per_pod: f64, lo: i32, hi: i32, partitions: i32) -> Option<i32> {
    (lo..=hi).find(|p| per_pod * effective_pods(*p, partitions) >= rate)
}

fn elapsed_ms(since: &Time, now: Timestamp) -> i64 {
    now.as_millisecond().saturating_sub(since.0.as_millisecond())
}

fn ms(duration_ms: u64) -> i64 {
    i64::try_from(duration_ms).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const EVERY: i64 = 15;
    /// Seconds a rescale stops processing (savepoint, restart, restore).
    const RESTART: i64 = 30;

    fn parse_spec(json: serde_json::Value) -> AutoscalerSpec {
        serde_json::from_value(json).unwrap()
    }

    /// targetLag 30s, window 2m, delay 10m.
    fn default_spec() -> AutoscalerSpec {
        parse_spec(serde_json::json!({"mode": "apply", "targetLag": "30s"}))
    }

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + second).unwrap()
    }

    /// A workload model independent of [`decide`]: `partitions` source
    /// partitions with the same input each; each pod owns a contiguous,
    /// as-even-as-possible share of them and processes `pod_capacity`
    /// records/s split evenly over its partitions; event time is arrival
    /// time, so a partition's lag is the age of its oldest unprocessed
    /// record. Steps of one simulated second.
    struct Sim {
        partitions: usize,
        pod_capacity: f64,
        parallelism: i32,
        /// Per-partition processing speed for the current parallelism.
        share: Vec<f64>,
        /// Cumulative arrivals per partition at the end of each second.
        arrived: Vec<f64>,
        processed: Vec<f64>,
        paused_until: i64,
        t: i64,
        window_in: f64,
        window_out: f64,
    }

    impl Sim {
        fn new(partitions: usize, pod_capacity: f64, parallelism: i32) -> Self {
            let mut sim = Sim {
                partitions,
                pod_capacity,
                parallelism,
                share: Vec::new(),
                arrived: vec![0.0],
                processed: vec![0.0; partitions],
                paused_until: 0,
                t: 0,
                window_in: 0.0,
                window_out: 0.0,
            };
            sim.rescale(parallelism);
            sim.paused_until = 0;
            sim
        }

        fn rescale(&mut self, parallelism: i32) {
            let pods = usize::try_from(parallelism).unwrap().clamp(1, self.partitions);
            self.parallelism = parallelism;
            self.share.clear();
            for pod in 0..pods {
                let owned = self.partitions / pods + usize::from(pod < self.partitions % pods);
                for _ in 0..owned {
                    self.share.push(self.pod_capacity / owned as f64);
                }
            }
            assert_eq!(self.share.len(), self.partitions);
            self.paused_until = self.t + RESTART;
        }

        /// One second at `rate` records/s in total.
        fn step(&mut self, rate: f64) {
            self.t += 1;
            let per_partition = rate / self.partitions as f64;
            let total = self.arrived.last().unwrap() + per_partition;
            self.arrived.push(total);
            self.window_in += rate;
            if self.t <= self.paused_until {
                return;
            }
            for (done, speed) in self.processed.iter_mut().zip(&self.share) {
                let served = (total - *done).min(*speed).max(0.0);
                *done += served;
                self.window_out += served;
            }
        }

        /// The age of the oldest unprocessed record, over all partitions.
        fn lag(&self) -> f64 {
            let now = self.arrived.len() - 1;
            self.processed
                .iter()
                .map(|done| {
                    if *done + 1e-6 >= self.arrived[now] {
                        return 0.0;
                    }
                    // The second in which record number `done` arrived.
                    let second = self.arrived.partition_point(|a| *a <= *done + 1e-6);
                    (now - second) as f64
                })
                .fold(0.0, f64::max)
        }

        /// What the operator would observe, rates over the last interval.
        fn sample(&mut self) -> Sample {
            let s = Sample {
                parallelism: self.parallelism,
                partitions: self.partitions as i32,
                lag_seconds: Some(self.lag()),
                input_rate: Some(self.window_in / EVERY as f64),
                processing_rate: Some(self.window_out / EVERY as f64),
            };
            self.window_in = 0.0;
            self.window_out = 0.0;
            s
        }
    }

    /// One evaluation of a run.
    #[derive(Clone, Debug)]
    struct Eval {
        t: i64,
        sample: Sample,
        status: AutoscalerStatus,
    }

    /// Runs `seconds` of `rate(t)`, evaluating every 15 s. `apply`: the
    /// recommendation becomes the parallelism at once (with a restart
    /// pause); otherwise the job keeps its parallelism. Each evaluation also
    /// goes through JSON, as a status write and an operator restart would.
    fn run(
        spec: &AutoscalerSpec,
        sim: &mut Sim,
        seconds: i64,
        rate: impl Fn(i64) -> f64,
        apply: bool,
    ) -> Vec<Eval> {
        let mut status: Option<AutoscalerStatus> = None;
        let mut out = Vec::new();
        while sim.t < seconds {
            sim.step(rate(sim.t));
            if sim.t % EVERY != 0 {
                continue;
            }
            let sample = sim.sample();
            let next = decide(spec, status.as_ref(), &sample, at(sim.t));
            let stored: AutoscalerStatus =
                serde_json::from_str(&serde_json::to_string(&next).unwrap()).unwrap();
            assert_eq!(
                stored, next,
                "the status is the whole memory and survives a round trip"
            );
            let rec = next.recommended_parallelism.unwrap();
            if apply && rec != sim.parallelism {
                sim.rescale(rec);
            }
            out.push(Eval {
                t: sim.t,
                sample,
                status: next.clone(),
            });
            status = Some(stored);
        }
        out
    }

    /// (time, from, to) of every change of the recommendation.
    fn changes(evals: &[Eval]) -> Vec<(i64, i32, i32)> {
        let mut out = Vec::new();
        let mut last = evals[0].sample.parallelism;
        for e in evals {
            let rec = e.status.recommended_parallelism.unwrap();
            if rec != last {
                out.push((e.t, last, rec));
                last = rec;
            }
        }
        out
    }

    #[test]
    fn a_burst_scales_up_in_one_step_drains_and_scales_down_after_the_delay() {
        let spec = default_spec();
        // 32 partitions, 500 records/s per pod, 1000/s normally on 4 pods;
        // 10x for 5 minutes from t=900.
        let mut sim = Sim::new(32, 500.0, 4);
        let rate = |t: i64| {
            if (900..1200).contains(&t) {
                10_000.0
            } else {
                1_000.0
            }
        };
        let evals = run(&spec, &mut sim, 4 * 3600, rate, true);
        let ch = changes(&evals);
        assert_eq!(ch.len(), 2, "one scale-up, one scale-down: {ch:?}");
        // Nothing before the burst: 4 pods cope, and their speed is unknown
        // (never saturated), so no scale-down either.
        let (up_at, from, to) = ch[0];
        assert!(up_at > 900, "{ch:?}");
        assert_eq!(from, 4);
        // Up within the window plus one evaluation of the first evaluation
        // that saw the lag above target, in one step to at least what the
        // burst needs (10000/500 = 20 pods), never above the partitions.
        let first_behind = evals
            .iter()
            .find(|e| e.sample.lag_seconds.unwrap() > 30.0)
            .unwrap()
            .t;
        assert!(up_at <= first_behind + 120 + EVERY, "{up_at} vs {first_behind}");
        assert!(up_at >= first_behind + 120, "{up_at} vs {first_behind}");
        assert!((20..=32).contains(&to), "{ch:?}");
        assert_eq!(
            evals.iter().find(|e| e.t == up_at).unwrap().status.reason,
            reason::SCALE_UP
        );
        // It drains: the lag is back within target before the scale-down.
        let (down_at, _, low) = ch[1];
        let last_uncomfortable = evals
            .iter()
            .filter(|e| e.t < down_at && e.sample.lag_seconds.unwrap() > 15.0)
            .map(|e| e.t)
            .max()
            .unwrap();
        assert!(last_uncomfortable < down_at);
        // Down only after ten comfortable minutes, to what the normal input
        // needs with headroom (1300/s at 500/s per pod: 3 pods).
        assert!(
            down_at >= last_uncomfortable + 600,
            "{down_at} vs {last_uncomfortable}"
        );
        assert!(
            down_at <= last_uncomfortable + 600 + 2 * EVERY,
            "{down_at} vs {last_uncomfortable}"
        );
        assert_eq!(low, 3);
        assert_eq!(
            evals.iter().find(|e| e.t == down_at).unwrap().status.reason,
            reason::SCALE_DOWN
        );
        // And stays there, within target.
        let end = evals.last().unwrap();
        assert!(end.sample.lag_seconds.unwrap() <= 30.0, "{end:?}");
        assert_eq!(end.status.reason, reason::NO_SPARE_CAPACITY, "{end:?}");
    }

    #[test]
    fn a_steady_overload_goes_to_the_partition_limit_and_stays() {
        let spec = default_spec();
        // 8 partitions of 500/s pods carry at most 4000/s; 10000/s arrive.
        let mut sim = Sim::new(8, 500.0, 2);
        let evals = run(&spec, &mut sim, 2 * 3600, |_| 10_000.0, true);
        let ch = changes(&evals);
        assert_eq!(ch.len(), 1, "{ch:?}");
        assert_eq!((ch[0].1, ch[0].2), (2, 8), "straight to the cap: {ch:?}");
        assert!(
            evals
                .iter()
                .all(|e| e.status.recommended_parallelism.unwrap() <= 8)
        );
        let end = evals.last().unwrap();
        assert_eq!(end.status.reason, reason::AT_PARTITION_LIMIT, "{end:?}");
        // The same with maxParallelism below the partitions names that cap.
        let capped =
            parse_spec(serde_json::json!({"mode": "apply", "targetLag": "30s", "maxParallelism": 5}));
        let evals = run(&capped, &mut Sim::new(8, 500.0, 2), 3600, |_| 10_000.0, true);
        assert_eq!(changes(&evals).last().unwrap().2, 5);
        assert!(
            evals
                .iter()
                .all(|e| e.status.recommended_parallelism.unwrap() <= 5)
        );
        assert_eq!(evals.last().unwrap().status.reason, reason::AT_MAX_PARALLELISM);
    }

    #[test]
    fn the_lag_jump_of_a_rescale_does_not_trigger_another_one() {
        // 1 pod of 1000/s under 3000/s on 24 partitions: the first scale-up
        // is sized below the cap, and while the new pods restart (30 s of
        // no processing) the lag keeps growing. That jump is not new
        // evidence: the next change needs a full window after the first.
        let spec = parse_spec(serde_json::json!({
            "mode": "apply", "targetLag": "60s", "stabilizationWindow": "1m"
        }));
        let evals = run(&spec, &mut Sim::new(24, 1000.0, 1), 3600, |_| 3000.0, true);
        let ch = changes(&evals);
        assert!(ch[0].2 < 24, "sized, not the cap: {ch:?}");
        for pair in ch.windows(2) {
            assert!(pair[1].0 - pair[0].0 > 60, "{ch:?}");
        }
        // Behind during the restart, yet waiting for a fresh window.
        let after: Vec<&Eval> = evals
            .iter()
            .filter(|e| e.t > ch[0].0 && e.t <= ch[0].0 + 60 && e.sample.lag_seconds.unwrap() > 60.0)
            .collect();
        assert!(!after.is_empty());
        for e in after {
            assert_eq!(e.status.reason, reason::LAG_ABOVE_TARGET, "{e:?}");
        }
        let end = evals.last().unwrap();
        assert!(end.sample.lag_seconds.unwrap() <= 30.0, "{end:?}");
    }

    #[test]
    fn an_input_flapping_around_the_threshold_does_not_flap_the_parallelism() {
        let spec = parse_spec(serde_json::json!({"mode": "apply", "targetLag": "10s"}));
        // 4 pods carry 2000/s; the input alternates 6 minutes at 2400/s
        // (behind) and 6 minutes at 1400/s (comfortable), for 4 hours.
        let rate = |t: i64| if (t / 360) % 2 == 0 { 1_400.0 } else { 2_400.0 };
        let evals = run(&spec, &mut Sim::new(16, 500.0, 4), 4 * 3600, rate, true);
        let crossings = evals
            .windows(2)
            .filter(|w| w[0].sample.lag_seconds.unwrap() <= 10.0 && w[1].sample.lag_seconds.unwrap() > 10.0)
            .count();
        assert!(crossings >= 1, "the input must push the lag over target");
        let ch = changes(&evals);
        assert!(!ch.is_empty(), "a sustained overload phase scales up");
        for (t, _, _) in &ch {
            let in_half_hour = ch.iter().filter(|(u, _, _)| (*t..*t + 1800).contains(u)).count();
            assert!(in_half_hour <= 2, "{ch:?}");
        }
        assert!(ch.len() <= 3, "{ch:?}");
        // Once up, the peaks of the comfortable runs keep it there.
        let settled = evals
            .iter()
            .filter(|e| e.t > 3600)
            .map(|e| e.status.recommended_parallelism);
        assert!(settled.clone().all(|r| r == settled.clone().next().unwrap()));
    }

    #[test]
    fn recommend_mode_recommends_what_apply_mode_would_do() {
        let apply = default_spec();
        let recommend = parse_spec(serde_json::json!({"mode": "recommend", "targetLag": "30s"}));
        let rate = |t: i64| {
            if (900..1200).contains(&t) {
                10_000.0
            } else {
                1_000.0
            }
        };
        let evals = run(&apply, &mut Sim::new(32, 500.0, 4), 3 * 3600, rate, true);
        let mut previous: Option<AutoscalerStatus> = None;
        for e in &evals {
            let r = decide(&recommend, previous.as_ref(), &e.sample, at(e.t));
            assert_eq!(r, e.status, "at {}", e.t);
            previous = Some(e.status.clone());
        }
        // Not acted on, the recommendation under a steady overload rises
        // and then stands; the job is left alone.
        let mut sim = Sim::new(8, 500.0, 2);
        let evals = run(&recommend, &mut sim, 2 * 3600, |_| 10_000.0, false);
        assert_eq!(sim.parallelism, 2);
        let recs: Vec<i32> = evals
            .iter()
            .map(|e| e.status.recommended_parallelism.unwrap())
            .collect();
        assert!(recs.windows(2).all(|w| w[0] <= w[1]), "{recs:?}");
        assert_eq!(*recs.last().unwrap(), 8);
        assert_eq!(evals.last().unwrap().status.reason, reason::AT_PARTITION_LIMIT);
    }

    fn sample(parallelism: i32, lag: f64, input: f64, processing: f64) -> Sample {
        Sample {
            parallelism,
            partitions: 12,
            lag_seconds: Some(lag),
            input_rate: Some(input),
            processing_rate: Some(processing),
        }
    }

    fn pod(lag_ms: Option<i64>, input: Option<i64>, processing: Option<i64>) -> RuntimeStatus {
        RuntimeStatus {
            event_time_lag_ms: lag_ms,
            input_rate: input,
            processing_rate: processing,
            ..RuntimeStatus::new(streamops_crds::runtime_api::RuntimeState::Running, 1)
        }
    }

    #[test]
    fn a_sample_takes_the_slowest_pod_and_sums_the_rates_of_all_of_them() {
        let a = pod(Some(1_500), Some(100), Some(90));
        let b = pod(Some(42_000), Some(300), Some(10));
        let s = sample_of(2, 8, [Some(&a), Some(&b)]);
        assert_eq!(
            s,
            Sample {
                parallelism: 2,
                partitions: 8,
                lag_seconds: Some(42.0),
                input_rate: Some(400.0),
                processing_rate: Some(100.0),
            }
        );
        // A pod without an answer, or one pod fewer than running: unknown.
        let s = sample_of(2, 8, [Some(&a), None]);
        assert_eq!(
            (s.lag_seconds, s.input_rate, s.processing_rate),
            (None, None, None)
        );
        let s = sample_of(2, 8, [Some(&a)]);
        assert_eq!((s.lag_seconds, s.input_rate), (None, None));
        // One figure missing on one pod leaves the others.
        let c = pod(Some(0), None, Some(5));
        let s = sample_of(2, 8, [Some(&a), Some(&c)]);
        assert_eq!(
            (s.lag_seconds, s.input_rate, s.processing_rate),
            (Some(1.5), None, Some(95.0))
        );
    }

    /// Behind at the partition limit for the whole window: 4 pods on 4
    /// partitions at 500/s each, 3,000/s in, 60 s behind (target 30 s).
    fn at_the_limit(spec: &AutoscalerSpec, partitions: i32) -> AutoscalerStatus {
        let mut s = sample(partitions, 60.0, 3000.0, 500.0 * f64::from(partitions));
        s.partitions = partitions;
        let first = decide(spec, None, &s, at(0));
        let s = decide(spec, Some(&first), &s, at(200));
        assert_eq!(s.reason, reason::AT_PARTITION_LIMIT, "{s:?}");
        s
    }

    #[test]
    fn growth_asks_for_what_covers_the_need_within_every_cap() {
        let growing = |extra: serde_json::Value| {
            let mut json =
                serde_json::json!({"mode": "apply", "targetLag": "30s", "growSourcePartitions": true});
            json.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            parse_spec(json)
        };
        let spec = growing(serde_json::json!({}));
        let limit = at_the_limit(&spec, 4);
        // 3,000/s x (1 + 0.2 + 60/30) = 9,600/s at 500/s per pod: 20 pods.
        assert_eq!(limit.needed_parallelism, Some(20));
        let one = [("clicks".to_owned(), 4)];
        let g = grow(&spec, &limit, &one, Some(128), at(200)).unwrap();
        let growth = g.partition_growth.clone().unwrap();
        // At most double at once.
        assert_eq!((growth.from, growth.to, growth.topics["clicks"]), (4, 8, 8));
        assert_eq!(
            (g.recommended_parallelism, g.reason.as_str()),
            (Some(8), reason::GROWING_PARTITIONS)
        );
        assert_eq!(g.last_decision_time, Some(Time(at(200))));
        assert_eq!((g.behind_since.clone(), g.pod_capacity), (None, Some(500)));
        assert!(g.message.as_deref().unwrap().contains("clicks 4 -> 8"), "{g:?}");
        // maxParallelism and the key groups cap it; at the cap, nothing.
        let capped = growing(serde_json::json!({"maxParallelism": 6}));
        let g = grow(&capped, &at_the_limit(&capped, 4), &one, Some(128), at(200)).unwrap();
        assert_eq!(g.partition_growth.unwrap().to, 6);
        let g = grow(&spec, &limit, &one, Some(5), at(200)).unwrap();
        assert_eq!(g.partition_growth.unwrap().to, 5);
        assert_eq!(grow(&spec, &limit, &one, Some(4), at(200)), None);
        let at_max = growing(serde_json::json!({"maxParallelism": 4}));
        assert_eq!(
            grow(&at_max, &at_the_limit(&at_max, 4), &one, None, at(200)),
            None
        );
        // Two sources grow by the same factor, rounded up: 3 + 1 -> 6 + 2
        // for 8, and 3 + 2 -> 5 + 3 for 7 (4.2 and 2.8: no topic falls
        // short of its share).
        let two = [("a".to_owned(), 3), ("b".to_owned(), 1)];
        let g = grow(&spec, &limit, &two, None, at(200)).unwrap();
        let topics = g.partition_growth.unwrap().topics;
        assert_eq!((topics["a"], topics["b"]), (6, 2));
        let seven = growing(serde_json::json!({"maxParallelism": 7}));
        let uneven = [("a".to_owned(), 3), ("b".to_owned(), 2)];
        let g = grow(&seven, &at_the_limit(&seven, 5), &uneven, None, at(200)).unwrap();
        let growth = g.partition_growth.unwrap();
        assert_eq!((growth.topics["a"], growth.topics["b"], growth.to), (5, 3, 8));
        assert_eq!(g.recommended_parallelism, Some(7), "never above maxParallelism");
        // Off unless apply mode and the option, and only at the limit.
        let off = parse_spec(serde_json::json!({"mode": "apply", "targetLag": "30s"}));
        assert_eq!(grow(&off, &at_the_limit(&off, 4), &one, None, at(200)), None);
        let recommend = parse_spec(
            serde_json::json!({"mode": "recommend", "targetLag": "30s", "growSourcePartitions": true}),
        );
        assert_eq!(
            grow(&recommend, &at_the_limit(&recommend, 4), &one, None, at(200)),
            None
        );
        let catching_up = AutoscalerStatus {
            reason: reason::CATCHING_UP.into(),
            ..limit.clone()
        };
        assert_eq!(grow(&spec, &catching_up, &one, None, at(200)), None);
    }

    #[test]
    fn a_growth_holds_until_the_topics_reach_it_or_times_out() {
        let spec = parse_spec(
            serde_json::json!({"mode": "apply", "targetLag": "30s", "growSourcePartitions": true}),
        );
        let limit = at_the_limit(&spec, 4);
        let asked = grow(&spec, &limit, &[("clicks".to_owned(), 4)], None, at(200)).unwrap();
        assert_eq!(
            growth_progress(&limit, &[("clicks".to_owned(), 4)], at(201)),
            Growth::None
        );
        // Not there yet: ask again for what is short.
        let waiting = growth_progress(&asked, &[("clicks".to_owned(), 4)], at(260));
        assert_eq!(
            waiting,
            Growth::Waiting([("clicks".to_owned(), 8)].into_iter().collect())
        );
        // Grown (or grown further by someone else): done.
        for p in [8, 12] {
            assert_eq!(
                growth_progress(&asked, &[("clicks".to_owned(), p)], at(260)),
                Growth::Done
            );
        }
        // A topic no longer among the sources does not hold it up.
        assert_eq!(
            growth_progress(&asked, &[("other".to_owned(), 1)], at(260)),
            Growth::Done
        );
        // Five minutes without it: decide afresh from what runs.
        let Growth::TimedOut(s) = growth_progress(&asked, &[("clicks".to_owned(), 6)], at(200 + 300)) else {
            panic!("no time-out");
        };
        assert_eq!(
            (
                s.recommended_parallelism,
                s.reason.as_str(),
                s.partition_growth.clone()
            ),
            (Some(6), reason::GROWTH_TIMED_OUT, None)
        );
        assert!(s.message.unwrap().contains("clicks < 8"));
    }

    #[test]
    fn missing_metrics_keep_the_parallelism_and_restart_the_evidence() {
        let spec = default_spec();
        let behind = decide(&spec, None, &sample(4, 60.0, 3000.0, 2000.0), at(0));
        assert_eq!(behind.behind_since, Some(Time(at(0))));
        let mut gap = sample(4, 60.0, 3000.0, 2000.0);
        gap.lag_seconds = None;
        let s = decide(&spec, Some(&behind), &gap, at(15));
        assert_eq!(
            (s.recommended_parallelism, s.reason.as_str()),
            (Some(4), reason::METRICS_UNAVAILABLE)
        );
        assert_eq!(s.behind_since, None, "a gap restarts the window");
        assert_eq!(s.pod_capacity, Some(500), "but the pods' speed is kept");
        gap.lag_seconds = Some(f64::NAN);
        let s = decide(&spec, Some(&behind), &gap, at(15));
        assert_eq!(s.reason, reason::METRICS_UNAVAILABLE);
        // Behind for the whole window with no processing rate ever seen:
        // nothing to size from.
        let mut s = None;
        for t in (0..=120).step_by(15) {
            s = Some(decide(&spec, s.as_ref(), &sample(4, 60.0, 3000.0, 0.0), at(t)));
        }
        let s = s.unwrap();
        assert_eq!(
            (s.recommended_parallelism, s.reason.as_str()),
            (Some(4), reason::CAPACITY_UNKNOWN)
        );
        // No partitions, no pods.
        let mut none = sample(4, 60.0, 3000.0, 2000.0);
        none.partitions = 0;
        assert_eq!(
            decide(&spec, None, &none, at(0)).reason,
            reason::PARTITIONS_UNKNOWN
        );
        assert_eq!(
            decide(&spec, None, &sample(0, 60.0, 3000.0, 2000.0), at(0)).reason,
            reason::NOT_RUNNING
        );
    }

    #[test]
    fn sizing_counts_the_busiest_pod() {
        // 12 partitions on 5 pods: one holds 3, so 5 pods are 4 pods' worth.
        assert_eq!(effective_pods(5, 12), 4.0);
        assert_eq!(effective_pods(6, 12), 6.0);
        assert_eq!(effective_pods(40, 12), 12.0);
        // Needing 4.5 pods' worth takes 6 pods, not 5.
        assert_eq!(smallest_covering(450.0, 100.0, 1, 12, 12), Some(6));
        assert_eq!(smallest_covering(1300.0, 100.0, 1, 12, 12), None);
        // Behind for the window at 4 saturated pods of 500/s with 3000/s in
        // and 60s of lag on a 30s target: 3000 * (1.2 + 2) = 9600/s, 19.2
        // pods' worth, capped at the 12 partitions.
        let spec = default_spec();
        let mut s = None;
        for t in (0..=120).step_by(15) {
            s = Some(decide(&spec, s.as_ref(), &sample(4, 60.0, 3000.0, 2000.0), at(t)));
        }
        let s = s.unwrap();
        assert_eq!(
            (s.recommended_parallelism, s.reason.as_str()),
            (Some(12), reason::SCALE_UP)
        );
        assert_eq!(s.last_decision_time, Some(Time(at(120))));
        assert_eq!(s.behind_since, None, "a change restarts the evidence");
        // 31s of lag at 2100/s in: 2100 * (1.2 + 31/30) = 4690/s, 9.4 pods'
        // worth: 12 (4 partitions per pod on 10 or 11 pods is 6 pods' worth).
        let mut s = None;
        for t in (0..=120).step_by(15) {
            s = Some(decide(&spec, s.as_ref(), &sample(4, 31.0, 2100.0, 2000.0), at(t)));
        }
        assert_eq!(s.unwrap().recommended_parallelism, Some(12));
    }

    #[test]
    fn bounds_and_a_pending_scale_down_give_way() {
        let spec = parse_spec(serde_json::json!({
            "mode": "recommend", "targetLag": "30s", "minParallelism": 2, "maxParallelism": 6
        }));
        let s = decide(&spec, None, &sample(9, 0.0, 10.0, 10.0), at(0));
        assert_eq!(
            (s.recommended_parallelism, s.reason.as_str()),
            (Some(6), reason::ABOVE_MAXIMUM)
        );
        let s = decide(&spec, None, &sample(1, 0.0, 10.0, 10.0), at(0));
        assert_eq!(
            (s.recommended_parallelism, s.reason.as_str()),
            (Some(2), reason::BELOW_MINIMUM)
        );
        // A recommendation of 3 not carried out; the job runs 5 and falls
        // behind: not below the running pods.
        let pending = AutoscalerStatus {
            recommended_parallelism: Some(3),
            reason: reason::SCALE_DOWN.into(),
            ..AutoscalerStatus::default()
        };
        let s = decide(&spec, Some(&pending), &sample(5, 45.0, 10.0, 10.0), at(0));
        assert_eq!(
            (s.recommended_parallelism, s.reason.as_str()),
            (Some(5), reason::SCALE_DOWN_WITHDRAWN)
        );
        // Off: nothing decided.
        let off = spec_with_mode("off");
        assert_eq!(
            decide(&off, None, &sample(5, 45.0, 10.0, 10.0), at(0)).reason,
            reason::DISABLED
        );
    }

    fn spec_with_mode(mode: &str) -> AutoscalerSpec {
        parse_spec(serde_json::json!({"mode": mode, "targetLag": "30s"}))
    }

    fn any_spec() -> impl Strategy<Value = AutoscalerSpec> {
        (
            1..8i32,
            proptest::option::of(1..40i32),
            1..120u64,
            0..600u64,
            0..1800u64,
        )
            .prop_map(|(min, max, target, window, delay)| {
                let max = max.map(|m| m.max(min));
                parse_spec(serde_json::json!({
                    "mode": "apply",
                    "minParallelism": min,
                    "maxParallelism": max,
                    "targetLag": format!("{target}s"),
                    "stabilizationWindow": format!("{window}s"),
                    "scaleDownDelay": format!("{delay}s"),
                }))
            })
    }

    fn bounds(spec: &AutoscalerSpec, partitions: i32) -> (i32, i32) {
        let hi = spec.max_parallelism.map_or(partitions, |m| m.min(partitions));
        (spec.min_parallelism().min(hi), hi)
    }

    fn any_f64() -> impl Strategy<Value = Option<f64>> {
        proptest::option::of(prop_oneof![
            0.0..1e6f64,
            Just(f64::NAN),
            Just(f64::INFINITY),
            -1e3..0.0f64,
            Just(1e300),
        ])
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Over random rate traces (piecewise constant, each piece 1 to 20
        /// minutes at 0 to 1.5 times what all partitions' pods could carry)
        /// and settings, carried out or only recommended: every
        /// recommendation within the bounds, never below the running pods
        /// while behind, and, carried out, at most one change per
        /// stabilisation window.
        #[test]
        fn recommendations_respect_bounds_backlog_and_cool_down(
            spec in any_spec(),
            partitions in 1..24usize,
            pod_capacity in 50.0..2000.0f64,
            start in 1..24i32,
            pieces in proptest::collection::vec((60..1200i64, 0.0..1.5f64), 1..8),
            apply in any::<bool>(),
        ) {
            let pieces: Vec<(i64, f64)> = pieces
                .into_iter()
                .map(|(d, load)| (d, load * pod_capacity * partitions as f64))
                .collect();
            let (lo, hi) = bounds(&spec, partitions as i32);
            let start = start.clamp(lo, hi);
            let total: i64 = pieces.iter().map(|(d, _)| d).sum();
            let rate = |t: i64| {
                let mut t = t;
                for (d, r) in &pieces {
                    if t < *d {
                        return *r;
                    }
                    t -= d;
                }
                pieces.last().unwrap().1
            };
            let evals = run(&spec, &mut Sim::new(partitions, pod_capacity, start), total, rate, apply);
            let target = spec.target_lag.as_millis() as f64 / 1000.0;
            for e in &evals {
                let rec = e.status.recommended_parallelism.unwrap();
                prop_assert!((lo..=hi).contains(&rec), "{rec} outside [{lo}, {hi}] at {}", e.t);
                if e.sample.lag_seconds.unwrap() > target {
                    prop_assert!(rec >= e.sample.parallelism, "{rec} below {} while behind at {}", e.sample.parallelism, e.t);
                }
            }
            let window = i64::try_from(spec.stabilization_window_ms() / 1000).unwrap();
            for pair in changes(&evals).windows(2).filter(|_| apply) {
                prop_assert!(pair[1].0 - pair[0].0 > window, "{pair:?} within {window}s");
            }
        }

        /// Any status, any observation (NaN, infinite, negative, absent,
        /// nonsense counts), any clock: no panic, and with partitions known
        /// the recommendation is within the bounds and not below what runs
        /// while behind.
        #[test]
        fn any_input_gives_a_bounded_answer(
            spec in any_spec(),
            parallelism in -2..40i32,
            partitions in -1..40i32,
            lag in any_f64(),
            input in any_f64(),
            processing in any_f64(),
            previous in proptest::option::of((
                proptest::option::of(-5..60i32),
                proptest::option::of(-100_000..100_000i64),
                proptest::option::of(-100_000..100_000i64),
                proptest::option::of(-5..1_000_000i64),
                proptest::option::of(-5..1_000_000i64),
            )),
            now in -100_000..100_000i64,
        ) {
            let previous = previous.map(|(rec, behind, within, peak, capacity)| AutoscalerStatus {
                recommended_parallelism: rec,
                behind_since: behind.map(|s| Time(at(s))),
                within_since: within.map(|s| Time(at(s))),
                peak_input_rate: peak,
                pod_capacity: capacity,
                ..AutoscalerStatus::default()
            });
            let sample = Sample { parallelism, partitions, lag_seconds: lag, input_rate: input, processing_rate: processing };
            let s = decide(&spec, previous.as_ref(), &sample, at(now));
            prop_assert_eq!(&s, &decide(&spec, previous.as_ref(), &sample, at(now)), "deterministic");
            prop_assert!(serde_json::to_string(&s).is_ok());
            if partitions >= 1 {
                let (lo, hi) = bounds(&spec, partitions);
                let rec = s.recommended_parallelism.unwrap();
                prop_assert!((lo..=hi).contains(&rec), "{} outside [{}, {}]: {:?}", rec, lo, hi, s);
                let target = spec.target_lag.as_millis() as f64 / 1000.0;
                if lag.is_some_and(|l| l.is_finite() && l > target) && parallelism >= 1 {
                    prop_assert!(rec >= parallelism.min(hi), "{:?}", s);
                }
            }
        }
    }
}
