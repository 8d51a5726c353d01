//! The built-in benchmark: a deterministic clickstream generator and a
//! runner that measures process CPU time (getrusage), not wall time.

use std::path::Path;
use std::sync::Arc;

use crate::aggregate::AggregateFunction;
use crate::engine::{Engine, Output, SourceRecord};
use crate::error::{Result, RuntimeError};
use crate::operator::window_operator::EmitMode;
use crate::plan::{AggregationDef, JobDefinition, Plan};
use crate::state::{MemoryBackend, RocksBackend, RocksOptions, StateBackend};
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
        BenchWindow::Tumbling => (WindowAssigner::Tumbling { size: 10_000 }, vec![count]),
        BenchWindow::Sliding => (
            WindowAssigner::Sliding {
                size: 10_000,
                slide: 2_000,
            },
            vec![count, sum],
        ),
        BenchWindow::Session => (WindowAssigner::Session { gap: 5_000 }, vec![count, sum]),
    };
    JobDefinition {
        filter: None,
        event_time_field: "record.ts".into(),
        time_format: TimeFormat::EpochMillis,
        out_of_orderness_ms: out_of_order_ms,
        idle_timeout_ms: None,
        max_future_skew_ms: i64::MAX,
        key_by: vec!["record.user_id".into()],
        window: assigner,
        allowed_lateness_ms: 0,
        aggregations,
        emit: EmitMode::OnWindowClose,
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

/// Checkpoints taken during a run: every `every` events, a full engine
/// snapshot into `dir` (flush of the window cache to the backend, RocksDB
/// checkpoint, watermarks), removed again.
#[derive(Debug, Clone, Copy)]
pub struct Checkpoints<'a> {
    pub every: usize,
    pub dir: &'a Path,
}

fn drive<B: StateBackend>(
    engine: &mut Engine<B>,
    input: &GeneratedInput,
    checkpoints: Option<Checkpoints<'_>>,
) -> Result<(u64, u64)> {
    let mut out = Vec::with_capacity(1024);
    let (mut results, mut late) = (0u64, 0u64);
    for i in 0..input.ends.len() {
        if let Some(c) = checkpoints
            && i > 0
            && i % c.every.max(1) == 0
        {
            engine.snapshot(c.dir)?;
            std::fs::remove_dir_all(c.dir)?;
        }
        let rec = SourceRecord {
            partition: 0,
            offset: i as i64,
            key: None,
            value: input.record(i),
        };
        engine.process(rec, 0, &mut out)?;
        for o in out.drain(..) {
            match o {
                Output::Result { .. } => results += 1,
                Output::Late { .. } => late += 1,
                Output::DeadLetter { reason, .. } => {
                    return Err(RuntimeError::InvalidArgument(format!(
                        "benchmark record dead-lettered: {reason}"
                    )));
                }
            }
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
    /// RocksDB: take a checkpoint every this many events (the cache is
    /// written to RocksDB then, as in the pipeline); 0 writes it whenever
    /// windows fire instead.
    pub checkpoint_every: usize,
}

/// Generates the input, then runs the job over it once, single-threaded.
pub fn run(window: BenchWindow, gen_cfg: &GeneratorConfig, state: &StateConfig<'_>) -> Result<BenchResult> {
    let input = generate(gen_cfg);
    let plan = Arc::new(Plan::build(&job(window, gen_cfg.out_of_order_ms))?);
    let (cpu0, _) = process_usage();
    // Each arm measures before its engine (and state) is dropped: teardown
    // is not part of the throughput.
    let (results, late, cpu1, rss) = match state.backend {
        BenchBackend::Memory => {
            let mut engine = Engine::new(plan, &[0], 1, MemoryBackend::new(), 0);
            let (results, late) = drive(&mut engine, &input, None)?;
            let (cpu1, rss) = process_usage();
            (results, late, cpu1, rss)
        }
        BenchBackend::Rocksdb => {
            let opts = RocksOptions {
                block_cache_bytes: state.block_cache_bytes,
                write_buffer_bytes: 16 << 20,
            };
            std::fs::create_dir_all(state.db_dir)?;
            let db = RocksBackend::open(&state.db_dir.join("db"), &opts)?;
            let engine = Engine::new(plan, &[0], 1, db, 0).with_flush_on_fire(state.checkpoint_every == 0);
            // An explicit entry bound wins over the memory bound.
            let mut engine = if state.cache_entries > 0 {
                engine.with_cache_capacity(Some(state.cache_entries))
            } else {
                engine.with_cache_bytes(state.cache_bytes)
            };
            let snapshots = state.db_dir.join("checkpoint");
            let checkpoints = (state.checkpoint_every > 0).then_some(Checkpoints {
                every: state.checkpoint_every,
                dir: &snapshots,
            });
            let (results, late) = drive(&mut engine, &input, checkpoints)?;
            let (cpu1, rss) = process_usage();
            (results, late, cpu1, rss)
        }
    };
    Ok(BenchResult {
        events: input.ends.len(),
        cpu_seconds: cpu1 - cpu0,
        results,
        late,
        peak_rss_bytes: rss,
        input_bytes: input.bytes.len() + input.ends.len() * 8,
    })
}
