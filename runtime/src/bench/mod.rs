//! The built-in benchmark: a deterministic clickstream generator and a
//! runner that measures process CPU time (getrusage), not wall time, of one
//! task of the dataflow [`Harness`]: stage 1, the repartition record
//! encoded and decoded, stage 2, as the pods run it (Kafka left out).

pub mod driver;

use std::path::Path;
use std::sync::Arc;

use streamops_crds::job::ProcessingGuarantee;

use crate::aggregate::AggregateFunction;
use crate::dataflow::harness::{Backends, Harness, HarnessConfig, Log, MemoryBackends, RocksBackends};
use crate::dataflow::task::{Out, StateOptions};
use crate::dataflow::window_operator::{EmitMode, WindowOperator};
use crate::error::{Result, RuntimeError};
use crate::plan::{AggregationDef, JobDefinition, Plan};
use crate::state::RocksOptions;
use crate::time::TimeFormat;
use crate::window::WindowAssigner;

/// Which window the benchmark job uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchWindow {
    /// Tumbling 10 s, count.
    Tumbling,
    /// Sliding 10 s every 2 s, count and sum(amount).
    Sliding,
    /// Session with a 5 s gap, count and sum(amount).
    Session,
    /// No window: a stateless (ETL) job, every record to the sink (with
    /// `--steps`: through the filter and the map of five fields).
    Stateless,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchBackend {
    Memory,
    Rocksdb,
}

/// Shape of the generated input.
#[derive(Debug, Clone, Copy)]
pub struct GeneratorConfig {
    pub events: usize,
    pub keys: u64,
    /// Event time advances 1 ms every this many events (100 = 100k events/s).
    pub events_per_ms: u64,
    /// Events are up to this much older than the generator's clock.
    pub out_of_order_ms: i64,
    pub seed: u64,
}

/// Pre-generated records: one buffer plus offsets (no per-record allocation
/// to skew RSS or the allocator).
pub struct GeneratedInput {
    pub bytes: Vec<u8>,
    pub ends: Vec<usize>,
}

impl GeneratedInput {
    pub fn record(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.bytes[start..self.ends[i]]
    }
}

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Clickstream-like JSON: `{"user_id":"u123","page":"/p/7","amount":12.5,"ts":...}`.
pub fn generate(cfg: &GeneratorConfig) -> GeneratedInput {
    use std::io::Write;
    let mut rng = cfg.seed;
    let mut bytes = Vec::with_capacity(cfg.events * 80);
    let mut ends = Vec::with_capacity(cfg.events);
    let base: i64 = 1_700_000_000_000;
    for i in 0..cfg.events as u64 {
        let clock = base + (i / cfg.events_per_ms.max(1)) as i64;
        let r = splitmix(&mut rng);
        let key = r % cfg.keys.max(1);
        let page = (r >> 40) % 50;
        let cents = (r >> 20) % 10_000;
        let jitter = if cfg.out_of_order_ms > 0 {
            ((r >> 8) % (cfg.out_of_order_ms as u64 + 1)) as i64
        } else {
            0
        };
        // Writing to a Vec cannot fail.
        let _ = write!(
            bytes,
            r#"{{"user_id":"u{key}","page":"/p/{page}","amount":{}.{:02},"ts":{}}}"#,
            cents / 100,
            cents % 100,
            clock - jitter
        );
        ends.push(bytes.len());
    }
    GeneratedInput { bytes, ends }
}

/// The job definition of a benchmark window.
pub fn job(window: BenchWindow, out_of_order_ms: i64) -> JobDefinition {
    let count = AggregationDef {
        name: "count".into(),
        function: AggregateFunction::Count,
        field: None,
    };
    let sum = AggregationDef {
        name: "amount".into(),
        function: AggregateFunction::Sum,
        field: Some("record.amount".into()),
    };
    let (assigner, aggregations) = match window {
        BenchWindow::Tumbling => (Some(WindowAssigner::Tumbling { size: 10_000 }), vec![count]),
        BenchWindow::Sliding => (
            Some(WindowAssigner::Sliding {
                size: 10_000,
                slide: 2_000,
            }),
            vec![count, sum],
        ),
        BenchWindow::Session => (Some(WindowAssigner::Session { gap: 5_000 }), vec![count, sum]),
        BenchWindow::Stateless => (None, Vec::new()),
    };
    JobDefinition {
        filter: None,
        steps: Vec::new(),
        result_steps: Vec::new(),
        event_time_field: "record.ts".into(),
        time_format: TimeFormat::EpochMillis,
        out_of_orderness_ms: out_of_order_ms,
        idle_timeout_ms: None,
        max_future_skew_ms: i64::MAX,
        key_by: if assigner.is_some() {
            vec!["record.user_id".into()]
        } else {
            Vec::new()
        },
        window: assigner,
        allowed_lateness_ms: 0,
        aggregations,
        emit: EmitMode::OnWindowClose,
        sink_key: None,
    }
}

/// What one run measured.
#[derive(Debug, Clone, Copy)]
pub struct BenchResult {
    pub events: usize,
    pub cpu_seconds: f64,
    pub results: u64,
    pub late: u64,
    pub peak_rss_bytes: u64,
    pub input_bytes: usize,
}

impl BenchResult {
    pub fn events_per_cpu_second(&self) -> f64 {
        self.events as f64 / self.cpu_seconds.max(1e-9)
    }
}

/// User + system CPU time of this process, and its peak RSS in bytes.
pub fn process_usage() -> (f64, u64) {
    // SAFETY: getrusage only writes into the zeroed struct we own.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a rusage struct; RUSAGE_SELF is always valid.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (secs(u.ru_utime) + secs(u.ru_stime), u.ru_maxrss as u64 * 1024)
}

/// Drives the input through a one-task [`Harness`] as the runner drives a
/// task: stage 1 reads `commit_every` records, the task checkpoints
/// (watermark record, commit; with the state snapshot every
/// `checkpoint_every` records), stage 2 reads what the commit made visible.
/// Returns (results, late records).
fn drive(h: &mut Harness, events: usize, commit_every: usize, checkpoint_every: usize) -> Result<(u64, u64)> {
    let (mut results, mut late) = (0u64, 0u64);
    let commit_every = commit_every.max(1);
    let mut read = 0;
    let mut next_state = checkpoint_every;
    while read < events {
        let n = h.poll_source(0, commit_every, 0)?;
        if n == 0 {
            return Err(RuntimeError::InvalidArgument(format!(
                "the benchmark input ended after {read} of {events} records"
            )));
        }
        read += n;
        let state = checkpoint_every > 0 && read >= next_state;
        if state {
            next_state += checkpoint_every;
        }
        h.checkpoint(0, 0, state)?;
        h.poll_keyed(0, usize::MAX)?;
        for e in h.take_committed() {
            match e.out {
                Out::Result { .. } | Out::Routed { .. } => results += 1,
                Out::Late { .. } => late += 1,
                Out::DeadLetter { reason, .. } => {
                    return Err(RuntimeError::InvalidArgument(format!(
                        "benchmark record dead-lettered: {reason}"
                    )));
                }
                Out::Keyed { .. } | Out::Watermark { .. } => {}
            }
        }
    }
    // The results of the last commit's records are in the open transaction.
    h.checkpoint(0, 0, false)?;
    for e in h.take_committed() {
        match e.out {
            Out::Result { .. } => results += 1,
            Out::Late { .. } => late += 1,
            _ => {}
        }
    }
    Ok((results, late))
}

/// State settings of a run.
#[derive(Debug, Clone, Copy)]
pub struct StateConfig<'a> {
    pub backend: BenchBackend,
    pub db_dir: &'a Path,
    pub block_cache_bytes: usize,
    /// RocksDB: (window, key) entries cached in memory; 0 derives them from
    /// `cache_bytes`.
    pub cache_entries: usize,
    pub cache_bytes: usize,
    /// RocksDB: the checkpoints take the state snapshot (the cache written
    /// to RocksDB, a RocksDB checkpoint, as in the pipeline) every this many
    /// events; 0 writes the cache whenever windows fire instead, and no
    /// checkpoint takes the state.
    pub checkpoint_every: usize,
    /// The task checkpoints (watermark record to the keyed partition,
    /// commit) every this many events.
    pub commit_every: usize,
    /// The job's key groups (`None`: one per task).
    pub key_groups: Option<u32>,
    /// The job runs [`bench_steps`] before the key.
    pub steps: bool,
}

/// Two steps that change no result: a filter every record passes and a map
/// of five fields (four copied, one computed), which `--steps` measures.
pub fn bench_steps() -> Vec<crate::dataflow::steps::StepDef> {
    use crate::dataflow::steps::{StepDef, StepKind};
    vec![
        StepDef {
            name: "valid".into(),
            kind: StepKind::Filter("record.amount >= 0.0".into()),
        },
        StepDef {
            name: "shape".into(),
            kind: StepKind::Map(
                [
                    ("user_id", "record.user_id"),
                    ("page", "record.page"),
                    ("amount", "record.amount"),
                    ("ts", "record.ts"),
                    ("cents", "int(record.amount * 100.0)"),
                ]
                .iter()
                .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
                .collect(),
            ),
        },
    ]
}

/// Generates the input, then runs the job over it once, single-threaded,
/// through one task of the [`Harness`] (what the runner runs, without
/// Kafka).
pub fn run(window: BenchWindow, gen_cfg: &GeneratorConfig, state: &StateConfig<'_>) -> Result<BenchResult> {
    let input = generate(gen_cfg);
    let (events, input_bytes) = (input.ends.len(), input.bytes.len() + input.ends.len() * 8);
    let mut definition = job(window, gen_cfg.out_of_order_ms);
    if state.steps {
        definition.steps = bench_steps();
    }
    let plan = Arc::new(Plan::build(&definition)?);
    let source = Log::from_values(input.bytes, input.ends)?;
    std::fs::create_dir_all(state.db_dir)?;
    let (backends, options): (Box<dyn Backends>, StateOptions) = match state.backend {
        BenchBackend::Memory => (Box::new(MemoryBackends), StateOptions::default()),
        BenchBackend::Rocksdb => {
            let opts = RocksOptions {
                block_cache_bytes: state.block_cache_bytes,
                write_buffer_bytes: 16 << 20,
            };
            // An explicit entry bound wins over the memory bound.
            let entries = if state.cache_entries > 0 {
                state.cache_entries
            } else {
                plan.window
                    .as_deref()
                    .map_or(0, |w| WindowOperator::entries_for_bytes(w, state.cache_bytes))
            };
            let options = StateOptions {
                cache_capacity: Some(entries),
                flush_on_fire: state.checkpoint_every == 0,
            };
            (
                Box::new(RocksBackends::new(&state.db_dir.join("db"), opts)),
                options,
            )
        }
    };
    let config = HarnessConfig {
        tasks: 1,
        guarantee: ProcessingGuarantee::ExactlyOnce,
        state: options,
        dir: state.db_dir.join("checkpoints"),
        key_groups: state.key_groups,
    };
    let mut h = Harness::new(plan, config, backends, 0)?;
    *h.source_mut(0)? = source;
    let (cpu0, _) = process_usage();
    let (results, late) = drive(&mut h, events, state.commit_every, state.checkpoint_every)?;
    // Measured before the harness (and state) is dropped: teardown is not
    // part of the throughput.
    let (cpu1, rss) = process_usage();
    Ok(BenchResult {
        events,
        cpu_seconds: cpu1 - cpu0,
        results,
        late,
        peak_rss_bytes: rss,
        input_bytes,
    })
}
