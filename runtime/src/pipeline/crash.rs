//! Test-only fault injection at the checkpoint protocol's steps
//! ([`Steps`]), compiled only with the `crash-points` feature. The crate's
//! tests turn it on (a dev-dependency of the crate on itself), so every
//! `cargo test` build, and the debug images the end-to-end tests build from
//! them, have crash points; a release build has none and refuses
//! `STREAMOPS_TEST_CRASH_POINTS`.

use crate::checkpoint::protocol::{Step, Steps};

#[cfg(feature = "crash-points")]
pub use enabled::{CRASH_POINTS, CrashPoints};

#[cfg(feature = "crash-points")]
mod enabled {
    use std::collections::HashMap;

    use super::{Step, Steps};

    /// Test-only fault injection: `STREAMOPS_TEST_CRASH_POINTS=after-upload:0.1,in-commit:0.05`
    /// kills the process with SIGKILL at the named point with the given
    /// probability, after printing `streamops-crash-point: <name>` to stderr;
    /// `slow-upload:<ms>:<n>` makes the process's `n`-th checkpoint upload
    /// (counting every task's) take `ms` longer (printing
    /// `streamops-slow-upload`). Unset (always, in
    /// production): no effect.
    pub struct CrashPoints {
        points: HashMap<String, f64>,
        rng: u64,
        /// (delay, uploads left before the slow one).
        slow_upload: Option<(u64, u64)>,
    }

    pub const CRASH_POINTS: [&str; 6] = [
        "after-upload",
        "in-transaction",
        "before-commit",
        "in-commit",
        "after-commit",
        "during-restore",
    ];

    impl Steps for CrashPoints {
        /// Dies at a step whose crash point fires (`in-commit`: a few
        /// milliseconds into the commit); `slow-upload` sleeps before an upload.
        fn at(&mut self, step: Step) -> crate::error::Result<()> {
            match step {
                Step::Upload => self.slow_upload(),
                Step::Uploaded => self.hit("after-upload"),
                Step::InTransaction => self.hit("in-transaction"),
                Step::BeforeCommit => self.hit("before-commit"),
                Step::Commit => self.arm("in-commit"),
                Step::Committed => self.hit("after-commit"),
                Step::Restoring => self.hit("during-restore"),
            }
            Ok(())
        }
    }

    impl CrashPoints {
        pub fn none() -> Self {
            CrashPoints {
                points: HashMap::new(),
                rng: 1,
                slow_upload: None,
            }
        }

        pub fn parse(text: &str, seed: u64) -> Result<Self, String> {
            let mut points = HashMap::new();
            let mut slow_upload = None;
            for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                let (name, p) = part.split_once(':').unwrap_or((part, "1"));
                if name == "slow-upload" {
                    let (ms, n) = p.split_once(':').unwrap_or((p, "1"));
                    let ms = ms.parse().map_err(|_| format!("bad milliseconds in {part:?}"))?;
                    let n: u64 = n.parse().map_err(|_| format!("bad upload number in {part:?}"))?;
                    slow_upload = Some((ms, n.saturating_sub(1)));
                    continue;
                }
                if !CRASH_POINTS.contains(&name) {
                    return Err(format!(
                        "unknown crash point {name:?}; known: {}",
                        CRASH_POINTS.join(", ")
                    ));
                }
                let p: f64 = p.parse().map_err(|_| format!("bad probability in {part:?}"))?;
                points.insert(name.to_string(), p);
            }
            Ok(CrashPoints {
                points,
                rng: seed | 1,
                slow_upload,
            })
        }

        /// Called before every upload: the `n`-th of `slow-upload:<ms>:<n>`
        /// sleeps `ms`.
        pub fn slow_upload(&mut self) {
            match &mut self.slow_upload {
                Some((_, left)) if *left > 0 => *left -= 1,
                Some((ms, _)) => {
                    let ms = *ms;
                    self.slow_upload = None;
                    eprintln!("streamops-slow-upload: {ms} ms");
                    std::thread::sleep(std::time::Duration::from_millis(ms));
                }
                None => {}
            }
        }

        fn roll(&mut self) -> f64 {
            // xorshift64*
            self.rng ^= self.rng >> 12;
            self.rng ^= self.rng << 25;
            self.rng ^= self.rng >> 27;
            (self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
        }

        fn fires(&mut self, name: &str) -> bool {
            match self.points.get(name).copied() {
                Some(p) => self.roll() < p,
                None => false,
            }
        }

        /// Dies here if the point fires.
        pub fn hit(&mut self, name: &str) {
            if self.fires(name) {
                die(name);
            }
        }

        /// For `in-commit`: if the point fires, a thread kills the process a few
        /// milliseconds from now, while the caller is inside the commit.
        pub fn arm(&mut self, name: &str) {
            if self.fires(name) {
                let delay = std::time::Duration::from_micros((self.roll() * 20_000.0) as u64);
                let name = name.to_string();
                std::thread::spawn(move || {
                    std::thread::sleep(delay);
                    die(&name);
                });
            }
        }
    }

    fn die(name: &str) {
        use std::io::Write;
        let mut e = std::io::stderr();
        let _ = writeln!(e, "streamops-crash-point: {name}");
        let _ = e.flush();
        // SAFETY: kill(2) on our own pid and _exit(2) have no memory-safety
        // preconditions. As PID 1 of a container (no shared process namespace)
        // the kernel ignores a SIGKILL the process sends itself; _exit is the
        // same crash without it: no destructor, no flush, no commit.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
            libc::_exit(137);
        }
    }
}

/// Without the `crash-points` feature: no crash points.
#[cfg(not(feature = "crash-points"))]
pub struct CrashPoints;

#[cfg(not(feature = "crash-points"))]
impl CrashPoints {
    pub fn none() -> Self {
        CrashPoints
    }

    /// Refuses any crash point: this build has none.
    pub fn parse(text: &str, _seed: u64) -> Result<Self, String> {
        if text.trim().is_empty() {
            return Ok(CrashPoints);
        }
        Err("crash points are test-only and this build has none (the crate's tests build them in)".into())
    }
}

#[cfg(not(feature = "crash-points"))]
impl Steps for CrashPoints {
    fn at(&mut self, _: Step) -> crate::error::Result<()> {
        Ok(())
    }
}
