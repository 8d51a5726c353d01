//! Shared by the operator benchmarks (`topic_bench.rs`, `job_bench.rs`): the
//! real operator binary as a child process, its memory and CPU from `/proc`,
//! its HTTP endpoints, and the statistics printed.

use std::{
    fs::File,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api, Client, ResourceExt,
    api::{ObjectMeta, PostParams},
};

pub fn knob(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

pub async fn create_namespace(client: &Client) -> String {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &Namespace {
                metadata: ObjectMeta {
                    generate_name: Some("streamops-bench-".into()),
                    ..ObjectMeta::default()
                },
                ..Namespace::default()
            },
        )
        .await
        .expect("create namespace")
        .name_any()
}

/// A child process killed when dropped, so a failing benchmark (a panic)
/// leaves no operator behind.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The operator binary watching only `ns`, without leader election, with
/// `extra` arguments appended.
pub fn spawn_operator(
    kubeconfig: &str,
    bootstrap: &str,
    ns: &str,
    port: u16,
    log: &std::path::Path,
    extra: &[&str],
) -> Child {
    let out = File::create(log).expect("operator log file");
    let err = out.try_clone().expect("log file handle");
    Command::new(env!("CARGO_BIN_EXE_streamops-operator"))
        .args(["run", "--leader-election", "false", "--resync-interval", "1h"])
        .args(["--watch-namespace", ns, "--kafka-bootstrap", bootstrap])
        .args(["--http-addr", &format!("127.0.0.1:{port}")])
        .args(extra)
        .env("KUBECONFIG", kubeconfig)
        .env(
            "RUST_LOG",
            std::env::var("STREAMOPS_BENCH_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .expect("start streamops-operator")
}

pub async fn wait_ready(port: u16, operator: &mut Child, log: &std::path::Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = operator.try_wait().expect("operator status") {
            panic!("operator exited ({status}); log: {}", log.display());
        }
        if try_http_get(port, "/readyz")
            .await
            .is_some_and(|b| b.starts_with("HTTP/1.1 200"))
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "operator not ready; log: {}",
            log.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn proc_status_kib(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/<pid>/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} missing in /proc/{pid}/status"))
}

/// Value of the sample whose name and labels are exactly `series`.
pub fn metric(body: &str, series: &str) -> f64 {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

pub async fn try_http_get(port: u16, path: &str) -> Option<String> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
        stream
            .write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
            .ok()?;
        let mut out = String::new();
        stream.read_to_string(&mut out).ok()?;
        Some(out)
    })
    .await
    .ok()
    .flatten()
}

pub async fn http_get(port: u16, path: &str) -> String {
    try_http_get(port, path)
        .await
        .unwrap_or_else(|| panic!("GET {path} from the operator failed"))
}

/// Nearest-rank percentile; sorts `values`.
pub fn percentile(values: &mut [f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * values.len() as f64).ceil() as usize;
    values[rank.clamp(1, values.len()) - 1]
}

pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// CPU seconds (user + system) the process has used, from `/proc/<pid>/stat`.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/<pid>/stat");
    // The fields after the command name (which may hold spaces) start after
    // the last ')': utime and stime are the 12th and 13th of them.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<f64>().ok())
        .sum();
    // /proc reports clock ticks in USER_HZ, which Linux fixes at 100.
    ticks / 100.0
}
