//! Session merging: the pure part of session windows.

use super::Window;

/// Two sessions merge when they overlap or touch (`a.start <= b.end &&
/// b.start <= a.end`), matching Flink's `TimeWindow::intersects`.
pub fn touches(a: &Window, b: &Window) -> bool {
    a.start <= b.end && b.start <= a.end
}

/// Given a key's sessions (pairwise non-touching, any order) and the
/// proto-session of a new event, returns the indices of the sessions the new
/// event bridges and the resulting merged window.
///
/// Invariant kept for callers: after replacing the returned sessions with the
/// merged window, sessions are again pairwise non-touching (a session outside
/// the proto-session's reach cannot touch the union, because the sessions it
/// merges are contiguous).
pub fn merge_target(sessions: &[Window], proto: Window, merged_indices: &mut Vec<usize>) -> Window {
    merged_indices.clear();
    let mut merged = proto;
    for (i, s) in sessions.iter().enumerate() {
        if touches(s, &proto) {
            merged_indices.push(i);
            merged.start = merged.start.min(s.start);
            merged.end = merged.end.max(s.end);
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bridging_event_merges_two_sessions() {
        let sessions = [Window::new(0, 10), Window::new(20, 30)];
        let mut idx = Vec::new();
        let m = merge_target(&sessions, Window::new(10, 20), &mut idx);
        assert_eq!(idx, vec![0, 1]);
        assert_eq!(m, Window::new(0, 30));
        let m = merge_target(&sessions, Window::new(11, 19), &mut idx);
        assert!(idx.is_empty());
        assert_eq!(m, Window::new(11, 19));
    }
}
