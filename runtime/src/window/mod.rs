//! Window assigners: which windows an event time belongs to. Pure and
//! allocation-free (callers pass the output buffer).

pub mod session;

use crate::time::EventTime;

/// A half-open event-time interval `[start, end)`.
///
/// Ordered by `end`, then `start`: the order in which windows fire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Window {
    pub end: EventTime,
    pub start: EventTime,
}

impl Window {
    pub fn new(start: EventTime, end: EventTime) -> Self {
        Window { end, start }
    }
}

/// How events are grouped in time. Sizes are in milliseconds and positive
/// (checked by [`WindowAssigner::new_tumbling`] and friends).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowAssigner {
    /// `[k*size, (k+1)*size)`, aligned to the epoch.
    Tumbling { size: i64 },
    /// Windows of `size` starting at every multiple of `slide` (aligned to the
    /// epoch). `slide` need not divide `size`: an event then belongs to
    /// `floor(size/slide)` or `ceil(size/slide)` windows depending on its
    /// phase; when it divides, to exactly `size/slide`. `slide > size`
    /// (gaps between windows) is allowed: events in a gap belong to no window
    /// and are counted as `unassigned`.
    Sliding { size: i64, slide: i64 },
    /// Per key, events closer than `gap` (an event at exactly `last + gap`
    /// still joins, as in Flink) form one session `[first, last + gap)`.
    Session { gap: i64 },
}

impl WindowAssigner {
    pub fn tumbling(size: i64) -> Result<Self, String> {
        positive("size", size)?;
        Ok(WindowAssigner::Tumbling { size })
    }

    pub fn sliding(size: i64, slide: i64) -> Result<Self, String> {
        positive("size", size)?;
        positive("slide", slide)?;
        Ok(WindowAssigner::Sliding { size, slide })
    }

    pub fn session(gap: i64) -> Result<Self, String> {
        positive("gap", gap)?;
        Ok(WindowAssigner::Session { gap })
    }

    /// Appends the fixed (tumbling or sliding) windows containing `t` to
    /// `out` in increasing start order. Session windows are assigned by
    /// [`session::SessionSet`] instead; for them this appends the event's own
    /// proto-session `[t, t + gap)`.
    pub fn assign(&self, t: EventTime, out: &mut Vec<Window>) {
        match *self {
            WindowAssigner::Tumbling { size } => {
                let start = t.div_euclid(size).saturating_mul(size);
                out.push(Window::new(start, start.saturating_add(size)));
            }
            WindowAssigner::Sliding { size, slide } => {
                let last_start = t.div_euclid(slide).saturating_mul(slide);
                let first = out.len();
                let mut start = last_start;
                while start.saturating_add(size) > t {
                    out.push(Window::new(start, start.saturating_add(size)));
                    match start.checked_sub(slide) {
                        Some(s) => start = s,
                        None => break,
                    }
                }
                out[first..].reverse();
            }
            WindowAssigner::Session { gap } => out.push(Window::new(t, t.saturating_add(gap))),
        }
    }

    pub fn is_session(&self) -> bool {
        matches!(self, WindowAssigner::Session { .. })
    }
}

fn positive(name: &str, v: i64) -> Result<(), String> {
    if v > 0 {
        Ok(())
    } else {
        Err(format!("window {name} must be positive, got {v} ms"))
    }
}

/// Why a result was emitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Firing {
    /// `onUpdate` mode: the window changed and is still open (`final: false`).
    Early,
    /// The watermark passed the window end (`final: true`); exactly one per
    /// (key, window) that received on-time data.
    OnTime,
    /// A record within `allowedLateness` updated a window whose end had
    /// passed: a revised final result (`final: true`, `firing: "late"`).
    Late,
}

impl Firing {
    pub fn is_final(self) -> bool {
        !matches!(self, Firing::Early)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Firing::Early => "early",
            Firing::OnTime => "onTime",
            Firing::Late => "late",
        }
    }
}

/// One aggregation result of one (key, window).
#[derive(Debug, Clone, PartialEq)]
pub struct WindowResult {
    pub group_key: Vec<u8>,
    pub window: Window,
    pub firing: Firing,
    /// One value per aggregation, in plan order.
    pub aggregates: Vec<serde_json::Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn windows(a: WindowAssigner, t: i64) -> Vec<(i64, i64)> {
        let mut v = Vec::new();
        a.assign(t, &mut v);
        v.into_iter().map(|w| (w.start, w.end)).collect()
    }

    #[test]
    fn tumbling_handles_negative_times() {
        let a = WindowAssigner::tumbling(10).unwrap();
        assert_eq!(windows(a, 0), vec![(0, 10)]);
        assert_eq!(windows(a, 9), vec![(0, 10)]);
        assert_eq!(windows(a, -1), vec![(-10, 0)]);
    }

    #[test]
    fn sliding_membership_is_ceil_size_over_slide() {
        let a = WindowAssigner::sliding(10, 2).unwrap();
        assert_eq!(windows(a, 5), vec![(-4, 6), (-2, 8), (0, 10), (2, 12), (4, 14)]);
        let b = WindowAssigner::sliding(10, 3).unwrap();
        // 3 or 4 windows when 3 does not divide 10.
        assert_eq!(windows(b, 0), vec![(-9, 1), (-6, 4), (-3, 7), (0, 10)]);
        assert_eq!(windows(b, 2), vec![(-6, 4), (-3, 7), (0, 10)]);
        let gaps = WindowAssigner::sliding(2, 5).unwrap();
        assert_eq!(windows(gaps, 3), vec![]);
    }
}
