//! `tarn_wal::format` against WAL written by a real PostgreSQL 15: the record boundaries
//! the tracker finds must be exactly the records `pg_waldump` lists, from the first
//! segment's start to the shutdown checkpoint that `pg_controldata` names, and scanning
//! from any later segment start must find the same records from there on.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use tarn_tests::pgdata::{
    first_segment_of_timeline, parse_controldata, pg_waldump_output, run_pg_controldata,
    start_wal_keeping_cluster,
};
use tarn_tests::{StopMode, TempDir};
use tarn_wal::format::{
    CompleteRecord, RecordBoundaryTracker, ScanStop, WalStreamParams, XLOG_BLCKSZ, find_end_of_wal,
    max_align, segment_file_name,
};
use tarn_wal::{Lsn, SystemId};

/// Timeline of a freshly initialised cluster.
const TIMELINE: u32 = 1;
/// Bytes handed to the tracker per feed: the walsender's message size, so that chunks
/// end mid-page-header and mid-record as they do in production.
const FEED_BYTES: usize = 128 * 1024;

#[test]
fn tracker_finds_the_records_pg_waldump_lists() {
    let dir = TempDir::new("walfmt");
    let (bins, mut cluster) = start_wal_keeping_cluster(&dir, &[]);
    cluster
        .pgbench(&["-i", "-s", "5", "-q"])
        .expect("pgbench -i");
    cluster.psql("SELECT pg_switch_wal()").expect("switch");
    cluster
        .pgbench(&["-c", "2", "-t", "300"])
        .expect("pgbench run");
    // One record spanning ~40 pages.
    cluster
        .psql("SELECT pg_logical_emit_message(false, 'tarn', repeat('x', 300000))")
        .expect("big record");
    cluster.psql("CHECKPOINT").expect("checkpoint");
    cluster.stop(StopMode::Fast).expect("clean stop");

    let control = pg_controldata(&bins.tool("pg_controldata"), cluster.data_dir());
    let segment_size_bytes: u64 = control["Bytes per WAL segment"]
        .parse()
        .expect("segment size");
    let system_id: u64 = control["Database system identifier"]
        .parse()
        .expect("system id");
    let checkpoint: Lsn = control["Latest checkpoint location"]
        .parse()
        .expect("checkpoint LSN");
    assert_eq!(control["Database cluster state"], "shut down");
    let params = WalStreamParams {
        segment_size_bytes,
        system_id: Some(SystemId(system_id)),
    };

    let wal_dir = cluster.data_dir().join("pg_wal");
    let first_segment = first_segment_of_timeline(&wal_dir, segment_size_bytes, TIMELINE);
    let wal_start = Lsn(first_segment * segment_size_bytes);

    // pg_waldump's view: every record from the first segment's start to the end of WAL.
    let dumped = pg_waldump(&bins.tool("pg_waldump"), &wal_dir, wal_start);
    let last = dumped.last().expect("pg_waldump lists records");
    assert_eq!(
        last.start, checkpoint,
        "the shutdown checkpoint is the last record"
    );
    assert!(
        last.description.starts_with("CHECKPOINT_SHUTDOWN"),
        "{}",
        last.description
    );
    let expected_end = record_end(last.start, last.tot_len, segment_size_bytes);

    // The tracker's view, fed as the walsender would send it.
    let mut reader = SegmentReader::new(&wal_dir, segment_size_bytes);
    let (records, stop) = track_all(&mut reader, wal_start, params);
    let starts: Vec<Lsn> = records.iter().map(|r| r.start).collect();
    let dumped_starts: Vec<Lsn> = dumped.iter().map(|r| r.start).collect();
    assert_eq!(
        starts.len(),
        dumped_starts.len(),
        "record count (tracker stopped by {stop:?})"
    );
    assert_eq!(starts, dumped_starts);
    for (record, dumped) in records.iter().zip(&dumped) {
        assert_eq!(
            record.header.tot_len, dumped.tot_len,
            "length of record at {}",
            record.start
        );
    }
    let end = records.last().expect("records").end;
    assert_eq!(end, expected_end);
    assert!(
        stop.is_some(),
        "the scan ends at invalid bytes after the end of WAL"
    );

    // The workload produced what this test claims to cover.
    let switches: Vec<&CompleteRecord> = records
        .iter()
        .filter(|r| r.header.is_xlog_switch())
        .collect();
    assert_eq!(
        switches.len(),
        dumped
            .iter()
            .filter(|r| r.description.starts_with("SWITCH"))
            .count()
    );
    assert!(!switches.is_empty(), "pg_switch_wal wrote a switch record");
    for switch in &switches {
        assert_eq!(
            switch.end.segment_offset(segment_size_bytes),
            0,
            "switch at {}",
            switch.start
        );
    }
    assert!(
        records.iter().any(|r| r.header.tot_len > 300_000),
        "the big logical message"
    );
    assert!(records.len() > 10_000, "only {} records", records.len());
    let last_segment = end.segment_number(segment_size_bytes);
    assert!(
        last_segment > first_segment + 1,
        "WAL spans several segments"
    );

    // find_end_of_wal agrees.
    let eow = find_end_of_wal(&mut reader, wal_start, None, Lsn::MAX, params).expect("scan");
    assert_eq!(eow.end, expected_end);
    assert_eq!(eow.last_record_start, Some(checkpoint));
    assert_eq!(eow.records, records.len() as u64);
    assert!(matches!(eow.stop, ScanStop::Invalid(_)), "{:?}", eow.stop);

    // From every later segment start (most begin inside a record), the same records
    // from there on, and the same end.
    let mut started_inside_a_record = 0;
    for segno in first_segment + 1..=last_segment {
        let segment_start = Lsn(segno * segment_size_bytes);
        let (suffix, _) = track_all(&mut reader, segment_start, params);
        let expected: Vec<Lsn> = starts
            .iter()
            .copied()
            .filter(|s| *s > segment_start)
            .collect();
        let got: Vec<Lsn> = suffix.iter().map(|r| r.start).collect();
        assert_eq!(got, expected, "scan from segment start {segment_start}");
        if expected.first() != Some(&Lsn(segment_start.0 + 40)) {
            started_inside_a_record += 1;
        }
        let eow =
            find_end_of_wal(&mut reader, segment_start, None, Lsn::MAX, params).expect("scan");
        assert_eq!(
            eow.end, expected_end,
            "end found from segment start {segment_start}"
        );
    }
    assert!(
        started_inside_a_record > 0,
        "no segment began with a continued record"
    );
    eprintln!(
        "checked {} records in segments {first_segment}..={last_segment} ({} switches); \
         {started_inside_a_record} segments began inside a record",
        records.len(),
        switches.len()
    );
}

/// Feeds WAL from `start` to a tracker in [`FEED_BYTES`] chunks until the storage ends
/// or the bytes stop being valid WAL; returns the records and the error that stopped it.
fn track_all(
    reader: &mut SegmentReader,
    start: Lsn,
    params: WalStreamParams,
) -> (
    Vec<CompleteRecord>,
    Option<tarn_wal::format::WalFormatError>,
) {
    let mut tracker = RecordBoundaryTracker::new(start, None, params).expect("tracker");
    let mut records = Vec::new();
    let mut buf = vec![0u8; FEED_BYTES];
    loop {
        let pos = tracker.position();
        let segment_left =
            (params.segment_size_bytes - pos.segment_offset(params.segment_size_bytes)) as usize;
        let want = FEED_BYTES.min(segment_left);
        let got = reader.read(pos, &mut buf[..want]).expect("read WAL");
        if got == 0 {
            return (records, None);
        }
        if let Err(error) = tracker.feed_with(&buf[..got], |record| records.push(record)) {
            return (records, Some(error));
        }
    }
}

/// Reads WAL from the segment files of one timeline; a missing segment reads as empty.
struct SegmentReader {
    wal_dir: PathBuf,
    segment_size_bytes: u64,
    open: Option<(u64, File)>,
}

impl SegmentReader {
    fn new(wal_dir: &Path, segment_size_bytes: u64) -> Self {
        SegmentReader {
            wal_dir: wal_dir.to_path_buf(),
            segment_size_bytes,
            open: None,
        }
    }

    /// Reads within one segment.
    fn read(&mut self, lsn: Lsn, buf: &mut [u8]) -> io::Result<usize> {
        let segno = lsn.segment_number(self.segment_size_bytes);
        if self.open.as_ref().map(|(open, _)| *open) != Some(segno) {
            let path =
                self.wal_dir
                    .join(segment_file_name(TIMELINE, segno, self.segment_size_bytes));
            match File::open(&path) {
                Ok(file) => self.open = Some((segno, file)),
                Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(0),
                Err(error) => return Err(error),
            }
        }
        let Some((_, file)) = &self.open else {
            return Ok(0);
        };
        let offset = lsn.segment_offset(self.segment_size_bytes);
        let mut filled = 0;
        while filled < buf.len() {
            match file.read_at(&mut buf[filled..], offset + filled as u64)? {
                0 => break,
                n => filled += n,
            }
        }
        Ok(filled)
    }
}

impl tarn_wal::format::WalRead for SegmentReader {
    fn read_wal(&mut self, lsn: Lsn, buf: &mut [u8]) -> io::Result<usize> {
        self.read(lsn, buf)
    }
}

#[derive(Clone, Debug)]
struct DumpedRecord {
    start: Lsn,
    tot_len: u32,
    description: String,
}

/// Records listed by `pg_waldump -s START` (it reads until the end of WAL, then exits
/// with an error describing where WAL ends, which is expected here).
fn pg_waldump(tool: &Path, wal_dir: &Path, start: Lsn) -> Vec<DumpedRecord> {
    pg_waldump_output(tool, wal_dir, start, &[])
        .lines()
        .map(|line| {
            // rmgr: Heap  len (rec/tot): 54/ 154, tx: 735, lsn: 0/01A6B2A0, prev 0/01A6B268, desc: ...
            let field = |name: &str| {
                let rest = &line[line
                    .find(name)
                    .unwrap_or_else(|| panic!("no {name:?} in {line:?}"))
                    + name.len()..];
                rest[..rest.find(',').unwrap_or(rest.len())].trim()
            };
            let tot_len = field("len (rec/tot):")
                .split('/')
                .nth(1)
                .expect("tot")
                .trim()
                .parse()
                .expect("tot_len");
            let start = field("lsn:").parse().expect("lsn");
            let description = line.split("desc: ").nth(1).unwrap_or("").to_string();
            DumpedRecord {
                start,
                tot_len,
                description,
            }
        })
        .collect()
}

/// The EndRecPtr of a non-switch record of `tot_len` bytes starting at `start`: step
/// over the page headers its bytes cross, then MAXALIGN.
fn record_end(start: Lsn, tot_len: u32, segment_size_bytes: u64) -> Lsn {
    let mut lsn = start.0;
    let mut left = u64::from(tot_len);
    while left > 0 {
        if lsn.is_multiple_of(XLOG_BLCKSZ) {
            lsn += if lsn.is_multiple_of(segment_size_bytes) {
                40
            } else {
                24
            };
        }
        let n = left.min(XLOG_BLCKSZ - lsn % XLOG_BLCKSZ);
        lsn += n;
        left -= n;
    }
    Lsn(max_align(lsn))
}

/// `pg_controldata` output as "field: value" pairs.
fn pg_controldata(tool: &Path, data_dir: &Path) -> BTreeMap<String, String> {
    let output = run_pg_controldata(tool, data_dir);
    assert!(
        output.status.success(),
        "pg_controldata: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    parse_controldata(&output.stdout)
}
