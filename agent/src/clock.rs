//! The edge's clock: Unix milliseconds from the wall clock that never run backward. Alert
//! evaluation, notification timing and the regression detector's samples read it.

use parking_lot::Mutex;

/// The edge's clock, in Unix milliseconds: the wall clock, except that it never runs backward.
/// After the wall clock steps back (NTP, a VM restore, an operator), readings go on advancing
/// from the last one at half the monotonic rate until the wall clock catches up (a step back
/// of 1 h is absorbed in 2 h), so everything measured as a difference of `now`s — `for`,
/// group/repeat intervals, retry times, rate windows over the history — keeps running instead
/// of stalling for the size of the step, and the clock comes back to the true time (rates read
/// meanwhile are up to twice the true ones). A forward step is followed at once (what became
/// due fires, as after a pause).
pub fn now_ms() -> i64 {
    static ANCHOR: Mutex<Option<(i64, std::time::Instant)>> = Mutex::new(None);
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    let mut anchor = ANCHOR.lock();
    let (now, next) = steady(*anchor, wall, std::time::Instant::now());
    *anchor = Some(next);
    now
}

/// One reading of [`now_ms`] (pure): the wall clock, or the anchor (the last reading the wall
/// clock gave) advanced by half the monotonic time since, whichever is later; with the anchor
/// to keep. The anchor moves only when the wall clock is taken, so the projection accumulates
/// no rounding.
fn steady(
    anchor: Option<(i64, std::time::Instant)>,
    wall: i64,
    mono: std::time::Instant,
) -> (i64, (i64, std::time::Instant)) {
    let projected = anchor.map(|(t, at)| {
        let since = mono.saturating_duration_since(at).as_millis() / 2;
        t.saturating_add(i64::try_from(since).unwrap_or(i64::MAX))
    });
    match (anchor, projected) {
        (Some(a), Some(p)) if p > wall => (p, a),
        _ => (wall, (wall, mono)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: i64 = 3_600_000;

    /// The clock steps the fault scenario `faults/clock_jump.sh` makes (+2 h, back 3 h, +1 h):
    /// readings never go back, keep advancing (at half rate) while the wall clock is behind,
    /// and meet the wall clock again, so intervals measured from `now` keep running (before: a
    /// pending alert, a group interval or a retry time set before a backward step waited for
    /// the wall clock to catch up, and the history's rate windows read points out of order).
    #[test]
    fn clock_never_runs_backward_and_keeps_ticking() {
        let m0 = std::time::Instant::now();
        let at = |s: u64| m0 + std::time::Duration::from_secs(s);
        let t0 = 1_700_000_000_000;
        // (monotonic seconds, wall clock) -> reading
        let steps: &[(u64, i64, i64)] = &[
            (0, t0, t0),
            (1, t0 + 1000, t0 + 1000),
            // Forward 2 h: followed at once.
            (2, t0 + 2 * H + 2000, t0 + 2 * H + 2000),
            (3, t0 + 2 * H + 3000, t0 + 2 * H + 3000),
            // Back 3 h: the reading goes on from the last one, at half rate.
            (4, t0 - H + 4000, t0 + 2 * H + 3500),
            (64, t0 - H + 64_000, t0 + 2 * H + 33_500),
            // Forward 1 h (to the true time): still behind the readings, so still projected.
            (65, t0 + 65_000, t0 + 2 * H + 34_000),
            (14_000, t0 + 14_000_000, t0 + 2 * H + 3000 + 6_998_500),
            // The wall clock meets the projection (4 h later): followed again.
            (14_404, t0 + 14_404_000, t0 + 14_404_000),
            (14_405, t0 + 14_405_000, t0 + 14_405_000),
        ];
        let mut anchor = None;
        let mut prev = i64::MIN;
        for &(mono, wall, want) in steps {
            let (now, next) = steady(anchor, wall, at(mono));
            assert_eq!(now, want, "at monotonic {mono}s, wall {}", wall - t0);
            assert!(now >= prev);
            prev = now;
            anchor = Some(next);
        }
    }
}
