//! The simulation's view of WAL bytes: it tracks record boundaries, scans for the end of
//! WAL and generates new WAL with the same `format` code the servers use.

use std::io;

use crate::Lsn;
use crate::format::synth::WalGenerator;
use crate::format::{RecordBoundaryTracker, WalStreamParams, find_end_of_wal};

use super::SYSTEM_ID;

fn params(segment_size_bytes: u64) -> WalStreamParams {
    // The simulation only uses valid segment sizes, so this cannot fail.
    WalStreamParams::new(segment_size_bytes, Some(SYSTEM_ID))
        .unwrap_or_else(|e| panic!("simulation segment size: {e}"))
}

pub struct Tracker(RecordBoundaryTracker);

impl Tracker {
    pub fn new(start: Lsn, prev: Option<Lsn>, segment_size_bytes: u64) -> Tracker {
        let t = RecordBoundaryTracker::new(start, prev, params(segment_size_bytes))
            .unwrap_or_else(|e| panic!("tracker at {start}: {e}"));
        Tracker(t)
    }
    pub fn feed(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.0.feed(bytes).map_err(|e| e.to_string())
    }
    pub fn complete_end(&self) -> Lsn {
        self.0.complete_end()
    }
    pub fn position(&self) -> Lsn {
        self.0.position()
    }
}

/// End of valid WAL in `bytes` (which start at `base`), scanning from `start`; returns
/// that end and the start of the last record before it.
pub fn scan_end_of_wal(
    bytes: &[u8],
    base: Lsn,
    start: Lsn,
    segment_size_bytes: u64,
) -> (Lsn, Option<Lsn>) {
    let mut read = |lsn: Lsn, buf: &mut [u8]| -> io::Result<usize> {
        let off = (lsn.0 - base.0) as usize;
        if off >= bytes.len() {
            return Ok(0);
        }
        let n = buf.len().min(bytes.len() - off);
        buf[..n].copy_from_slice(&bytes[off..off + n]);
        Ok(n)
    };
    match find_end_of_wal(&mut read, start, None, Lsn::MAX, params(segment_size_bytes)) {
        Ok(end) => (end.end, end.last_record_start),
        Err(e) => panic!("scanning simulated WAL from {start}: {e}"),
    }
}

pub struct Generator(WalGenerator);

impl Generator {
    pub fn new(start: Lsn, prev: Option<Lsn>, segment_size_bytes: u64, seed: u64) -> Generator {
        let g = WalGenerator::new(start, prev, SYSTEM_ID, segment_size_bytes, seed)
            .unwrap_or_else(|e| panic!("generator at {start}: {e}"));
        Generator(g)
    }
    /// Appends one record with a body of about `payload_len` bytes; returns the WAL
    /// bytes it added (page headers and padding included).
    pub fn append_record(&mut self, payload_len: usize) -> Vec<u8> {
        self.0.append_record(payload_len);
        self.0.take_bytes().1
    }
}
