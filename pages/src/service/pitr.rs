//! Questions answered by reading a timeline's committed WAL back from the safekeepers:
//! point in time → LSN (the first commit after a wall-clock time, from the commit
//! timestamps, `xact_time`), and the start of the last record before an LSN (the
//! xl_prev a compute booted there must write, when the pageserver did not see that
//! record ingested since it started). A branch
//! at that commit's start LSN holds every transaction committed up to the time and
//! none after, as `recovery_target_time` with `recovery_target_inclusive` would.
//!
//! The scan reads WAL from the safekeepers (they keep all of it), so its cost grows
//! with the WAL between the bounds.

use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use tarn_wal::decode::{RawRecord, WalStreamDecoder};
use tarn_wal::format::WalStreamParams;
use tarn_wal::{Lsn, TimelineId};

use super::follower::WalFollower;
use super::timeline::WalSource;

/// Seconds from the Unix epoch to Postgres's (2000-01-01 00:00:00 UTC).
pub const POSTGRES_EPOCH_UNIX_SECONDS: i64 = 946_684_800;
/// RM_XACT_ID.
const RM_XACT_ID: u8 = 1;
/// XLOG_XACT_OPMASK and the commit kinds (xact.h).
const XLOG_XACT_OPMASK: u8 = 0x70;
const XLOG_XACT_COMMIT: u8 = 0x00;
const XLOG_XACT_COMMIT_PREPARED: u8 = 0x30;

#[derive(Debug, thiserror::Error)]
pub enum PitrError {
    #[error("no safekeeper holds timeline {timeline}")]
    NoTimeline { timeline: TimelineId },
    #[error("reading timeline {timeline}'s WAL: {detail}")]
    Wal {
        timeline: TimelineId,
        detail: String,
    },
    #[error(
        "timed out after {}s reading timeline {timeline}'s WAL: at {at}, wanted up to {to}",
        timeout.as_secs()
    )]
    Timeout {
        timeline: TimelineId,
        at: Lsn,
        to: Lsn,
        timeout: Duration,
    },
}

/// Microseconds since the Postgres epoch (a `TimestampTz`) of Unix time `unix_micros`.
pub fn timestamptz_from_unix_micros(unix_micros: i64) -> i64 {
    unix_micros - POSTGRES_EPOCH_UNIX_SECONDS * 1_000_000
}

/// The start LSN of the first commit in `[from, to)` of `timeline` whose `xact_time`
/// is after `time` (a `TimestampTz`), or `None` if there is none. `from` must be a
/// record start or a page start; `to` at most the committed end.
pub fn first_commit_after(
    source: &WalSource,
    timeline: TimelineId,
    from: Lsn,
    to: Lsn,
    time: i64,
    timeout: Duration,
) -> Result<Option<Lsn>, PitrError> {
    let mut found = None;
    scan_records(
        source,
        timeline,
        from,
        to,
        timeout,
        |raw| match commit_time(raw) {
            Ok(Some(commit_time)) if commit_time > time => {
                found = Some(raw.lsn);
                Ok(ControlFlow::Break(()))
            }
            Ok(_) => Ok(ControlFlow::Continue(())),
            Err(detail) => Err(detail),
        },
    )?;
    Ok(found)
}

/// The start of the last record of `timeline` that starts in `[from, to)`: what the
/// first record written at `to` must name as xl_prev. `from` must be a record start.
pub fn last_record_start(
    source: &WalSource,
    timeline: TimelineId,
    from: Lsn,
    to: Lsn,
    timeout: Duration,
) -> Result<Option<Lsn>, PitrError> {
    let mut last = None;
    scan_records(source, timeline, from, to, timeout, |raw| {
        last = Some(raw.lsn);
        Ok(ControlFlow::Continue(()))
    })?;
    Ok(last)
}

/// Reads `timeline`'s committed WAL from the safekeepers and calls `visit` on every
/// record starting in `[from, to)`, in order, until it breaks.
fn scan_records(
    source: &WalSource,
    timeline: TimelineId,
    from: Lsn,
    to: Lsn,
    timeout: Duration,
    mut visit: impl FnMut(&RawRecord) -> Result<ControlFlow<()>, String>,
) -> Result<(), PitrError> {
    let wal_error = |detail: String| PitrError::Wal { timeline, detail };
    let mut follower = WalFollower::new(
        timeline,
        source.safekeepers.clone(),
        source.segment_size_bytes,
    );
    follower.discover();
    let system_id = follower
        .system_id()
        .ok_or(PitrError::NoTimeline { timeline })?;
    let params = WalStreamParams::new(source.segment_size_bytes, Some(system_id))
        .map_err(|e| wal_error(e.to_string()))?;
    let mut decoder =
        WalStreamDecoder::new(from, None, params).map_err(|e| wal_error(e.to_string()))?;
    let deadline = Instant::now() + timeout;
    while decoder.position() < to {
        let at = decoder.position();
        let chunk = follower
            .next_chunk(at)
            .map_err(|e| wal_error(e.to_string()))?;
        let Some(chunk) = chunk else {
            if Instant::now() >= deadline {
                return Err(PitrError::Timeout {
                    timeline,
                    at,
                    to,
                    timeout,
                });
            }
            // The follower paces its own status polls; this only avoids a busy loop.
            std::thread::sleep(Duration::from_millis(5));
            continue;
        };
        let fed = decoder.feed(&chunk.wal);
        while let Some(raw) = decoder.next_raw_record() {
            let raw = raw.map_err(|e| wal_error(e.to_string()))?;
            if raw.lsn >= to {
                return Ok(());
            }
            if visit(&raw).map_err(wal_error)?.is_break() {
                return Ok(());
            }
        }
        fed.map_err(|e| wal_error(e.to_string()))?;
    }
    Ok(())
}

/// The `xact_time` of a commit record (xl_xact_commit starts with it), `None` for any
/// other record.
fn commit_time(raw: &RawRecord) -> Result<Option<i64>, String> {
    let (Some(&info), Some(&rmid)) = (raw.bytes.get(16), raw.bytes.get(17)) else {
        return Err(format!("record at {} is shorter than its header", raw.lsn));
    };
    let op = info & XLOG_XACT_OPMASK;
    if rmid != RM_XACT_ID || (op != XLOG_XACT_COMMIT && op != XLOG_XACT_COMMIT_PREPARED) {
        return Ok(None);
    }
    let decoded = raw.decode().map_err(|e| e.to_string())?;
    let time = decoded
        .main_data
        .get(..8)
        .ok_or_else(|| format!("commit record at {} has no xact_time", raw.lsn))?;
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(time);
    Ok(Some(i64::from_le_bytes(bytes)))
}
