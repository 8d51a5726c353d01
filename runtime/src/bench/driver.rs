//! The `streamops-runtime bench` command: the benchmark's command line and
//! its driver (one process per configuration and run).

use std::path::PathBuf;

use super::{BenchBackend, BenchWindow, GeneratorConfig};
use crate::RuntimeError;

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Windows to run.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [BenchWindow::Tumbling, BenchWindow::Sliding, BenchWindow::Session])]
    pub window: Vec<BenchWindow>,
    /// State backends to run.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [BenchBackend::Rocksdb, BenchBackend::Memory])]
    pub backend: Vec<BenchBackend>,
    /// Key cardinalities to run.
    #[arg(long, value_delimiter = ',', default_values_t = [1_000u64, 100_000, 1_000_000])]
    pub keys: Vec<u64>,
    /// Events per run.
    #[arg(long, default_value_t = 2_000_000)]
    pub events: usize,
    /// Event-time rate: events per millisecond.
    #[arg(long, default_value_t = 100)]
    pub events_per_ms: u64,
    /// Maximum out-of-orderness of generated events (also the watermark bound).
    #[arg(long, default_value_t = 500)]
    pub out_of_order_ms: i64,
    /// Runs per configuration; the median is reported with min and max.
    #[arg(long, default_value_t = 1)]
    pub runs: usize,
    /// RocksDB block cache size in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    pub block_cache_bytes: usize,
    /// RocksDB runs: (window, key) entries kept in memory, the rest is
    /// evicted to RocksDB; 0 derives the bound from --cache-bytes.
    #[arg(long, default_value_t = 0)]
    pub cache_entries: usize,
    /// RocksDB runs without --cache-entries: memory for the window cache
    /// (an estimate from the in-memory layout, converted to entries).
    #[arg(long, default_value_t = 256 << 20)]
    pub cache_bytes: usize,
    /// RocksDB runs: the checkpoint takes the state snapshot (cache written
    /// to RocksDB, RocksDB checkpoint, as the pipeline does every interval)
    /// every this many events; 0 writes the cache to RocksDB whenever windows
    /// fire instead.
    #[arg(long, default_value_t = 0)]
    pub checkpoint_every_events: usize,
    /// The task checkpoints (watermark record to the keyed partition, the
    /// transaction committed, stage 2 reads it) every this many events.
    #[arg(long, default_value_t = 10_000)]
    pub commit_every_events: usize,
    /// The job's key groups (0: one per task, the layout of jobs deployed
    /// before key groups; a job deployed now with one task has 128).
    #[arg(long, default_value_t = 0)]
    pub key_groups: u32,
    /// Where RocksDB databases are created (one fresh directory per run).
    #[arg(long)]
    pub db_dir: Option<PathBuf>,
    /// The job runs two steps before the key: a filter that keeps every
    /// record and a map of five fields (what `spec.pipeline.steps` cost).
    #[arg(long)]
    pub steps: bool,
    /// Internal: run exactly one configuration in this process and print one
    /// machine-readable line (the driver spawns one process per run so peak
    /// RSS is per configuration).
    #[arg(long, hide = true)]
    pub single: bool,
}

/// Runs the benchmark: with `--single`, one configuration in this process
/// (one machine-readable line); otherwise one process per configuration and
/// run (so peak RSS is per configuration), and a Markdown table of the
/// medians with min and max.
pub fn run(args: BenchArgs) -> Result<(), RuntimeError> {
    if args.single {
        let (Some(window), Some(backend), Some(keys)) =
            (args.window.first(), args.backend.first(), args.keys.first())
        else {
            return Err(RuntimeError::InvalidArgument(
                "--single needs one window, backend and keys".into(),
            ));
        };
        let base = args.db_dir.clone().unwrap_or_else(std::env::temp_dir);
        let db_dir = base.join(format!("streamops-bench-{}", std::process::id()));
        let cfg = GeneratorConfig {
            events: args.events,
            keys: *keys,
            events_per_ms: args.events_per_ms,
            out_of_order_ms: args.out_of_order_ms,
            seed: 42,
        };
        let r = super::run(
            *window,
            &cfg,
            &super::StateConfig {
                backend: *backend,
                db_dir: &db_dir,
                block_cache_bytes: args.block_cache_bytes,
                cache_entries: args.cache_entries,
                cache_bytes: args.cache_bytes,
                checkpoint_every: args.checkpoint_every_events,
                commit_every: args.commit_every_events,
                key_groups: Some(args.key_groups).filter(|g| *g > 0),
                steps: args.steps,
            },
        );
        let db_bytes = dir_size(&db_dir.join("db"));
        let _ = std::fs::remove_dir_all(&db_dir);
        let r = r?;
        println!(
            "{} {} {} {} {} {} {}",
            r.events, r.cpu_seconds, r.results, r.late, r.peak_rss_bytes, r.input_bytes, db_bytes
        );
        return Ok(());
    }
    let exe = std::env::current_exe()?;
    println!(
        "events/run={} events/ms={} out-of-order={}ms runs={} block-cache={}B cache-entries={} cache-bytes={} \
         checkpoint-every={} events commit-every={} events key-groups={} steps={}",
        args.events,
        args.events_per_ms,
        args.out_of_order_ms,
        args.runs,
        args.block_cache_bytes,
        args.cache_entries,
        args.cache_bytes,
        args.checkpoint_every_events,
        args.commit_every_events,
        args.key_groups,
        args.steps
    );
    println!(
        "| window | keys | backend | events/s per core (median) | min | max | peak RSS MiB | input MiB | RocksDB dir MiB | results | late |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for window in &args.window {
        for keys in &args.keys {
            for backend in &args.backend {
                let mut rates = Vec::new();
                let mut last = Vec::new();
                for _ in 0..args.runs.max(1) {
                    let mut cmd = std::process::Command::new(&exe);
                    cmd.arg("bench")
                        .arg("--single")
                        .arg(format!("--window={}", value_name(*window)))
                        .arg(format!("--backend={}", value_name(*backend)))
                        .arg(format!("--keys={keys}"))
                        .arg(format!("--events={}", args.events))
                        .arg(format!("--events-per-ms={}", args.events_per_ms))
                        .arg(format!("--out-of-order-ms={}", args.out_of_order_ms))
                        .arg(format!("--block-cache-bytes={}", args.block_cache_bytes))
                        .arg(format!("--cache-entries={}", args.cache_entries))
                        .arg(format!("--cache-bytes={}", args.cache_bytes))
                        .arg(format!(
                            "--checkpoint-every-events={}",
                            args.checkpoint_every_events
                        ))
                        .arg(format!("--commit-every-events={}", args.commit_every_events))
                        .arg(format!("--key-groups={}", args.key_groups));
                    if let Some(d) = &args.db_dir {
                        cmd.arg("--db-dir").arg(d);
                    }
                    if args.steps {
                        cmd.arg("--steps");
                    }
                    let out = cmd.output()?;
                    if !out.status.success() {
                        return Err(RuntimeError::InvalidArgument(format!(
                            "benchmark run failed: {}",
                            String::from_utf8_lossy(&out.stderr)
                        )));
                    }
                    let fields: Vec<f64> = String::from_utf8_lossy(&out.stdout)
                        .split_whitespace()
                        .filter_map(|f| f.parse().ok())
                        .collect();
                    if fields.len() != 7 {
                        return Err(RuntimeError::InvalidArgument(
                            "unexpected benchmark output".into(),
                        ));
                    }
                    rates.push(fields[0] / fields[1].max(1e-9));
                    last = fields;
                }
                rates.sort_by(f64::total_cmp);
                let mib = |b: f64| b / (1024.0 * 1024.0);
                println!(
                    "| {} | {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.1} | {} | {} |",
                    value_name(*window),
                    keys,
                    value_name(*backend),
                    rates[rates.len() / 2],
                    rates[0],
                    rates[rates.len() - 1],
                    mib(last[4]),
                    mib(last[5]),
                    mib(last[6]),
                    last[2],
                    last[3],
                );
            }
        }
    }
    Ok(())
}

fn value_name<T: clap::ValueEnum>(v: T) -> String {
    v.to_possible_value()
        .map(|p| p.get_name().to_string())
        .unwrap_or_default()
}

/// Bytes of the files under `dir`, recursively (the harness opens each
/// task's database in a directory of its own under it).
fn dir_size(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter_map(|e| Some((e.path(), e.metadata().ok()?)))
                .map(|(path, m)| if m.is_dir() { dir_size(&path) } else { m.len() })
                .sum()
        })
        .unwrap_or(0)
}
