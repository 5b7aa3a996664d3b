//! Quorum completion of pipelined appends: which appends a majority of safekeepers has
//! made durable, and when. Pure bookkeeping (no IO), so the load generator's
//! measurement logic is unit-tested on its own.
//!
//! A safekeeper answers every append with an `AppendResponse` carrying its flush LSN,
//! in order per connection, and one group-commit round may answer several appends with
//! the same (latest) flush LSN. So the tracker keeps, per safekeeper, the highest flush
//! LSN seen; the quorum flush LSN is the highest LSN that a majority has reached (the
//! majority-th highest of those); an append is complete once the quorum flush LSN
//! reaches its end. Its latency runs from sending it to receiving the response that
//! moved the quorum flush LSN past its end.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use tarn_wal::Lsn;

/// Smallest number of safekeepers out of `count` that forms a majority.
pub fn majority(count: usize) -> usize {
    count / 2 + 1
}

/// Highest flush LSN acknowledged by each safekeeper, and the quorum's.
#[derive(Clone, Debug)]
pub struct QuorumFlush {
    flush_lsns: Vec<Lsn>,
    majority: usize,
}

impl QuorumFlush {
    /// `count` safekeepers, all starting at `start` (where the timeline begins: nothing
    /// below it is ever appended).
    pub fn new(count: usize, start: Lsn) -> QuorumFlush {
        assert!(count > 0, "a quorum needs at least one safekeeper");
        QuorumFlush {
            flush_lsns: vec![start; count],
            majority: majority(count),
        }
    }

    /// Notes safekeeper `index`'s flush LSN (a stale, lower one changes nothing) and
    /// returns the quorum flush LSN.
    pub fn on_flush(&mut self, index: usize, flush_lsn: Lsn) -> Lsn {
        let slot = &mut self.flush_lsns[index];
        *slot = (*slot).max(flush_lsn);
        self.quorum_lsn()
    }

    /// The highest LSN that at least a majority of safekeepers have flushed.
    pub fn quorum_lsn(&self) -> Lsn {
        let mut sorted = self.flush_lsns.clone();
        sorted.sort_unstable_by(|a, b| b.cmp(a));
        sorted[self.majority - 1]
    }

    pub fn flush_lsns(&self) -> &[Lsn] {
        &self.flush_lsns
    }
}

/// An append that was sent and not yet acknowledged by a majority.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PendingAppend {
    /// End of the append's WAL (a record end).
    pub end_lsn: Lsn,
    pub sent_at: Instant,
    pub wal_bytes: u64,
    pub records: u64,
}

/// An append a majority has made durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CompletedAppend {
    pub append: PendingAppend,
    pub completed_at: Instant,
}

impl CompletedAppend {
    pub fn latency(&self) -> Duration {
        self.completed_at
            .saturating_duration_since(self.append.sent_at)
    }
}

/// Appends in flight on one stream, in send order (so in LSN order).
#[derive(Debug, Default)]
pub struct InFlight {
    pending: VecDeque<PendingAppend>,
}

impl InFlight {
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Records a sent append; its end must lie past every earlier one's.
    pub fn push(&mut self, append: PendingAppend) {
        if let Some(last) = self.pending.back() {
            assert!(
                append.end_lsn > last.end_lsn,
                "appends must be sent in LSN order ({} after {})",
                append.end_lsn,
                last.end_lsn
            );
        }
        self.pending.push_back(append);
    }

    /// Removes and returns, oldest first, every append whose end is at or below
    /// `quorum_lsn`, completed at `now`.
    pub fn complete_up_to(&mut self, quorum_lsn: Lsn, now: Instant) -> Vec<CompletedAppend> {
        let mut done = Vec::new();
        while let Some(front) = self.pending.front() {
            if front.end_lsn > quorum_lsn {
                break;
            }
            let append = *front;
            self.pending.pop_front();
            done.push(CompletedAppend {
                append,
                completed_at: now,
            });
        }
        done
    }

    /// The oldest append still waiting, if any.
    pub fn oldest(&self) -> Option<&PendingAppend> {
        self.pending.front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn majority_of_small_clusters() {
        assert_eq!(majority(1), 1);
        assert_eq!(majority(2), 2);
        assert_eq!(majority(3), 2);
        assert_eq!(majority(4), 3);
        assert_eq!(majority(5), 3);
    }

    #[test]
    fn quorum_lsn_is_the_majority_th_highest() {
        let mut q = QuorumFlush::new(3, Lsn(100));
        assert_eq!(q.quorum_lsn(), Lsn(100));
        // One safekeeper ahead is not a majority.
        assert_eq!(q.on_flush(0, Lsn(300)), Lsn(100));
        // A second one reaching 200 makes 200 durable on two of three.
        assert_eq!(q.on_flush(2, Lsn(200)), Lsn(200));
        // The laggard catching up past both moves the quorum to the second highest.
        assert_eq!(q.on_flush(1, Lsn(400)), Lsn(300));
        // A stale (reordered or repeated) acknowledgement never moves anything back.
        assert_eq!(q.on_flush(1, Lsn(150)), Lsn(300));
        assert_eq!(q.flush_lsns(), &[Lsn(300), Lsn(400), Lsn(200)]);
    }

    #[test]
    fn single_safekeeper_is_its_own_quorum() {
        let mut q = QuorumFlush::new(1, Lsn(0));
        assert_eq!(q.on_flush(0, Lsn(8)), Lsn(8));
    }

    fn pending(end: u64, sent_at: Instant) -> PendingAppend {
        PendingAppend {
            end_lsn: Lsn(end),
            sent_at,
            wal_bytes: 10,
            records: 1,
        }
    }

    #[test]
    fn appends_complete_in_order_when_the_quorum_passes_their_end() {
        let t0 = Instant::now();
        let mut in_flight = InFlight::default();
        in_flight.push(pending(100, t0));
        in_flight.push(pending(200, t0 + Duration::from_micros(10)));
        in_flight.push(pending(300, t0 + Duration::from_micros(20)));
        let mut q = QuorumFlush::new(3, Lsn(0));

        // One safekeeper has everything: nothing is complete yet.
        let t1 = t0 + Duration::from_micros(100);
        assert!(
            in_flight
                .complete_up_to(q.on_flush(0, Lsn(300)), t1)
                .is_empty()
        );
        // A second reaches the middle of the second append: only the first completes.
        let t2 = t0 + Duration::from_micros(150);
        let done = in_flight.complete_up_to(q.on_flush(1, Lsn(150)), t2);
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].append.end_lsn, Lsn(100));
        assert_eq!(done[0].latency(), Duration::from_micros(150));
        // One response covering both remaining appends (group commit) completes both,
        // each measured from its own send time.
        let t3 = t0 + Duration::from_micros(400);
        let done = in_flight.complete_up_to(q.on_flush(2, Lsn(300)), t3);
        assert_eq!(
            done.iter().map(|c| c.latency()).collect::<Vec<_>>(),
            vec![Duration::from_micros(390), Duration::from_micros(380)]
        );
        assert!(in_flight.is_empty());
    }

    #[test]
    #[should_panic(expected = "LSN order")]
    fn appends_out_of_order_are_a_bug() {
        let t0 = Instant::now();
        let mut in_flight = InFlight::default();
        in_flight.push(pending(200, t0));
        in_flight.push(pending(100, t0));
    }
}
