//! `tarn_wal::decode` against WAL written by a real PostgreSQL 15 with full-page
//! writes compressed by pglz, LZ4 and zstd, and for a while `wal_consistency_checking =
//! 'all'` (an image on every block reference): decoding every record from the first
//! segment to the end of WAL must give, per record type, exactly the counts, record
//! bytes and FPI bytes of `pg_waldump --stats=record` over the same WAL; every page
//! image must restore to a sane page; and random mutations of the real records must
//! never make the decoder panic.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use tarn_tests::pgdata::{first_segment_of_timeline, pg_waldump_output, start_wal_keeping_cluster};
use tarn_tests::{StopMode, TempDir};
use tarn_wal::decode::{
    BLCKSZ, DecodedRecord, ImageCompression, PgWalDir, RawRecord, WalRecordReader,
    decode_record_at, record_type_name,
};
use tarn_wal::format::{ScanStop, WalStreamParams};
use tarn_wal::{Lsn, SystemId};

/// Timeline of a freshly initialised cluster.
const TIMELINE: u32 = 1;
/// RM_XACT_ID: pg_waldump's statistics group its records by opcode only.
const RM_XACT_ID: u8 = 1;
/// Records kept for the mutation test, and mutations of each.
const MUTATION_SAMPLE_RECORDS: usize = 3000;
const MUTATIONS_PER_RECORD: usize = 30;
/// When set, the test writes fuzz seeds made of the real records it read to this
/// directory (wal/fuzz/seeds/ is made this way).
const SEEDS_DIR_ENV: &str = "TARN_WRITE_FUZZ_SEEDS";
/// Largest real record written as a seed.
const MAX_SEED_RECORD_BYTES: usize = 16 * 1024;

#[test]
fn decoder_matches_pg_waldump_stats_and_restores_every_image() {
    let dir = TempDir::new("waldec");
    let (bins, mut cluster) = start_wal_keeping_cluster(
        &dir,
        &[("full_page_writes", "on"), ("wal_compression", "pglz")],
    );
    for method in ["pglz", "lz4", "zstd", "off"] {
        let shown = cluster
            .psql(&format!(
                "SET wal_compression = '{method}'; SHOW wal_compression"
            ))
            .unwrap_or_else(|error| {
                panic!("this build does not take wal_compression = {method}: {error}")
            });
        assert_eq!(shown, method);
    }
    let set = |settings: &str| {
        cluster
            .psql(&format!("{settings}; SELECT pg_reload_conf()"))
            .expect("set and reload");
    };

    // pglz: pgbench's initial load, a checkpoint, so that the run below logs images.
    cluster
        .pgbench(&["-i", "-s", "2", "-q"])
        .expect("pgbench -i");
    cluster.psql("CHECKPOINT").expect("checkpoint");
    cluster
        .pgbench(&["-c", "2", "-t", "150"])
        .expect("pgbench pglz");

    // LZ4.
    set("ALTER SYSTEM SET wal_compression = 'lz4'");
    cluster.psql("CHECKPOINT").expect("checkpoint");
    cluster
        .pgbench(&["-c", "2", "-t", "150"])
        .expect("pgbench lz4");
    cluster
        .psql(
            "CREATE TABLE docs (id int PRIMARY KEY, body text, tags int[]);
             INSERT INTO docs SELECT g, md5(g::text), ARRAY[g % 7, g % 11]
               FROM generate_series(1, 3000) g;
             CREATE INDEX docs_body ON docs (body);
             CREATE INDEX docs_hash ON docs USING hash (id);
             CREATE INDEX docs_brin ON docs USING brin (id);
             CREATE INDEX docs_tags ON docs USING gin (tags);",
        )
        .expect("DDL under lz4");

    // zstd, with an image on every block reference.
    set("ALTER SYSTEM SET wal_compression = 'zstd';
         ALTER SYSTEM SET wal_consistency_checking = 'all'");
    cluster.psql("CHECKPOINT").expect("checkpoint");
    cluster
        .pgbench(&["-c", "2", "-t", "100"])
        .expect("pgbench zstd");
    cluster
        .psql(
            "UPDATE docs SET body = body || 'x' WHERE id % 3 = 0;
             DELETE FROM docs WHERE id % 5 = 0;
             VACUUM docs;
             VACUUM pgbench_accounts;
             -- Out-of-line TOAST: about 1 MB of incompressible text.
             CREATE TABLE blobs (id int, body text);
             INSERT INTO blobs VALUES (1,
               (SELECT string_agg(md5(random()::text), '') FROM generate_series(1, 32000)));
             CREATE SEQUENCE seq; SELECT nextval('seq');
             TRUNCATE pgbench_history;",
        )
        .expect("DDL under zstd with consistency checking");

    // Uncompressed images again, and a record spanning many pages.
    set("ALTER SYSTEM SET wal_compression = 'off';
         ALTER SYSTEM RESET wal_consistency_checking");
    cluster.psql("CHECKPOINT").expect("checkpoint");
    cluster
        .pgbench(&["-c", "2", "-t", "100"])
        .expect("pgbench off");
    cluster
        .psql("SELECT pg_logical_emit_message(false, 'tarn', repeat('x', 300000))")
        .expect("big record");
    cluster.psql("CHECKPOINT").expect("checkpoint");
    cluster.stop(StopMode::Fast).expect("clean stop");

    let system_id = cluster.system_id().expect("system id");
    let wal_dir = cluster.data_dir().join("pg_wal");
    let segment_size_bytes = 16 * 1024 * 1024;
    let params = WalStreamParams {
        segment_size_bytes,
        system_id: Some(SystemId(system_id)),
    };
    let first_segment = first_segment_of_timeline(&wal_dir, segment_size_bytes, TIMELINE);
    let wal_start = Lsn(first_segment * segment_size_bytes);

    // tarn's view: every record from the first segment's start to the end of WAL.
    let decode_started = std::time::Instant::now();
    let mut reader = WalRecordReader::new(
        PgWalDir::new(&wal_dir, TIMELINE, segment_size_bytes),
        wal_start,
        None,
        params,
    )
    .expect("reader");
    let mut stats: BTreeMap<String, TypeStats> = BTreeMap::new();
    let mut images = ImageCensus::default();
    let mut sample: Vec<RawRecord> = Vec::new();
    let mut records = 0u64;
    let mut wal_bytes = 0u64;
    // The smallest record of each type, and of each image compression, for fuzz seeds.
    let mut seeds: BTreeMap<String, RawRecord> = BTreeMap::new();
    while let Some(raw) = reader.next_raw_record().expect("every record decodes") {
        let record = raw
            .decode()
            .unwrap_or_else(|error| panic!("record at {}: {error}", raw.lsn));
        records += 1;
        wal_bytes += u64::from(record.total_len);
        let entry = stats.entry(stats_type_name(&record)).or_default();
        entry.count += 1;
        entry.rec_len += record.rec_len();
        entry.fpi_len += record.fpi_len();
        images.check(&record);
        let mut seed_keys = vec![record.type_name()];
        seed_keys.extend(record.blocks.iter().filter_map(|block| {
            let image = block.image.as_ref()?;
            Some(format!(
                "image-{:?}-hole-{}",
                image.compression,
                image.hole_length > 0
            ))
        }));
        for key in seed_keys {
            let smaller = seeds
                .get(&key)
                .is_none_or(|seed| seed.bytes.len() > raw.bytes.len());
            if smaller && raw.bytes.len() <= MAX_SEED_RECORD_BYTES {
                seeds.insert(key, raw.clone());
            }
        }
        let interesting = !record.blocks.is_empty() || record.origin.is_some();
        if sample.len() < MUTATION_SAMPLE_RECORDS && (interesting || records.is_multiple_of(20)) {
            sample.push(raw);
        }
    }
    let decode_elapsed = decode_started.elapsed();
    assert!(
        matches!(reader.stop(), Some(ScanStop::Invalid(_))),
        "the scan ends at the bytes after the end of WAL: {:?}",
        reader.stop()
    );
    let end = reader.complete_end();

    // pg_waldump's view of the same WAL.
    let dumped = pg_waldump_stats(&bins.tool("pg_waldump"), &wal_dir, wal_start);
    assert_eq!(dumped.end, end, "end of WAL");
    let ours: Vec<(&String, &TypeStats)> = stats.iter().collect();
    let theirs: Vec<(&String, &TypeStats)> = dumped.types.iter().collect();
    if ours != theirs {
        for (name, ours) in &stats {
            let theirs = dumped.types.get(name);
            if theirs != Some(ours) {
                eprintln!("{name}: tarn {ours:?}, pg_waldump {theirs:?}");
            }
        }
        for name in dumped
            .types
            .keys()
            .filter(|name| !stats.contains_key(*name))
        {
            eprintln!("{name}: only in pg_waldump");
        }
        panic!("per-type statistics differ from pg_waldump --stats=record");
    }
    let total = stats
        .values()
        .fold(TypeStats::default(), |sum, t| TypeStats {
            count: sum.count + t.count,
            rec_len: sum.rec_len + t.rec_len,
            fpi_len: sum.fpi_len + t.fpi_len,
        });
    assert_eq!(total, dumped.total, "totals");

    // The workload produced what this test claims to cover.
    for name in [
        "Heap/INSERT",
        "Heap/HOT_UPDATE",
        "Heap2/PRUNE",
        "Heap2/VACUUM",
        "Btree/INSERT_LEAF",
        "Hash/INSERT",
        "Gin/UPDATE_META_PAGE",
        "BRIN/CREATE_INDEX",
        "Transaction/COMMIT",
        "XLOG/FPI",
        "Sequence/LOG",
        "LogicalMessage/MESSAGE",
        "XLOG/CHECKPOINT_SHUTDOWN",
    ] {
        assert!(stats.contains_key(name), "no {name} record");
    }
    for compression in [
        ImageCompression::None,
        ImageCompression::Pglz,
        ImageCompression::Lz4,
        ImageCompression::Zstd,
    ] {
        assert!(
            images
                .by_compression
                .get(&format!("{compression:?}"))
                .copied()
                > Some(100),
            "few {compression:?} images: {:?}",
            images.by_compression
        );
    }
    assert!(
        images.with_hole > 100 && images.consistency_only > 100,
        "{images:?}"
    );

    // Seeded mutations of real records: errors or records, never a panic.
    let mutation_started = std::time::Instant::now();
    let (decoded, rejected) = mutate_and_decode(&sample, 0x5EED);
    assert!(rejected > 0 && decoded > 0);

    if let Some(dir) = std::env::var_os(SEEDS_DIR_ENV) {
        write_fuzz_seeds(Path::new(&dir), &seeds);
    }

    eprintln!(
        "decoded {records} records ({} MiB) in {decode_elapsed:?}, {} types, end {end}; \
         images: {images:?}; mutations: {decoded} decoded, {rejected} rejected in {:?}",
        wal_bytes >> 20,
        stats.len(),
        mutation_started.elapsed(),
    );
    for (name, t) in &stats {
        eprintln!(
            "  {name:<28} {:>8} {:>12} {:>12}",
            t.count, t.rec_len, t.fpi_len
        );
    }
}

/// The record type under which XLogRecStoreStats (xlogstats.c) counts a record: the
/// rmgr bits of xl_info, for Transaction only the opcode bits.
fn stats_type_name(record: &DecodedRecord) -> String {
    let mut recid = record.info >> 4;
    if record.rmid == RM_XACT_ID {
        recid &= 0x07;
    }
    record_type_name(record.rmid, recid << 4)
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct TypeStats {
    count: u64,
    rec_len: u64,
    fpi_len: u64,
}

/// Restores every page image and checks the page is plausible.
#[derive(Debug, Default)]
struct ImageCensus {
    by_compression: BTreeMap<String, u64>,
    with_hole: u64,
    consistency_only: u64,
    new_pages: u64,
}

impl ImageCensus {
    fn check(&mut self, record: &DecodedRecord) {
        for block in &record.blocks {
            let Some(image) = &block.image else { continue };
            let at = format!(
                "block {} of {} at {}",
                block.block_id,
                record.type_name(),
                record.lsn
            );
            let page = record
                .restore_image(block.block_id)
                .unwrap_or_else(|error| panic!("{at}: {error}"));
            *self
                .by_compression
                .entry(format!("{:?}", image.compression))
                .or_default() += 1;
            if !image.apply {
                self.consistency_only += 1;
            }
            let u16_at = |at: usize| u16::from_le_bytes([page[at], page[at + 1]]);
            // pd_lsn is {xlogid, xrecoff}; an image is of the page before this record
            // set its LSN (consistency-check images are taken before PageSetLSN too).
            let pd_lsn = Lsn(
                (u64::from(u32::from_le_bytes(page[0..4].try_into().expect("4"))) << 32)
                    | u64::from(u32::from_le_bytes(page[4..8].try_into().expect("4"))),
            );
            assert!(
                pd_lsn <= record.lsn,
                "{at}: pd_lsn {pd_lsn} is after the record"
            );
            let (lower, upper, special) = (u16_at(12), u16_at(14), u16_at(16));
            if upper == 0 {
                // PageIsNew: an all-zero page.
                assert!(page.iter().all(|b| *b == 0), "{at}: new page with content");
                self.new_pages += 1;
                continue;
            }
            assert!(
                24 <= lower && lower <= upper && upper <= special && usize::from(special) <= BLCKSZ,
                "{at}: pd_lower {lower} pd_upper {upper} pd_special {special}"
            );
            assert_eq!(u16_at(18), 8192 | 4, "{at}: pd_pagesize_version");
            if image.hole_length > 0 {
                // Standard pages are logged without their free space.
                self.with_hole += 1;
                assert_eq!(
                    (image.hole_offset, image.hole_offset + image.hole_length),
                    (lower, upper),
                    "{at}: the hole is the page's free space"
                );
            }
        }
    }
}

/// Decodes `MUTATIONS_PER_RECORD` random mutations of each record (bit flips, byte
/// overwrites, truncations, insertions, deletions, edits of length-like header bytes),
/// restoring the images of whatever decodes. Returns (decoded, rejected).
fn mutate_and_decode(sample: &[RawRecord], seed: u64) -> (u64, u64) {
    let mut state = seed;
    let mut next = move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) as usize
    };
    let (mut decoded, mut rejected) = (0, 0);
    for raw in sample {
        for _ in 0..MUTATIONS_PER_RECORD {
            let mut bytes = raw.bytes.to_vec();
            for _ in 0..=next() % 3 {
                if bytes.is_empty() {
                    break;
                }
                let at = next() % bytes.len();
                match next() % 6 {
                    0 => bytes[at] ^= 1 << (next() % 8),
                    1 => bytes[at] = next() as u8,
                    2 => bytes.truncate(at),
                    3 => bytes.insert(at, next() as u8),
                    4 => {
                        let len = (next() % 16).min(bytes.len() - at);
                        bytes.drain(at..at + len);
                    }
                    _ => {
                        // Header bytes (block headers start at 24) get small values.
                        let at = 24 + next() % 40;
                        if let Some(byte) = bytes.get_mut(at) {
                            *byte = [0, 1, 0x20, 0x80, 0xff][next() % 5];
                        }
                    }
                }
            }
            // Mostly keep xl_tot_len consistent, so that the body gets decoded.
            if next() % 8 != 0 && bytes.len() >= 4 {
                let len = bytes.len() as u32;
                bytes[..4].copy_from_slice(&len.to_le_bytes());
            }
            match decode_record_at(raw.lsn, raw.end_lsn, bytes.into()) {
                Ok(record) => {
                    decoded += 1;
                    for block in &record.blocks {
                        if let Some(image) = &block.image {
                            let _ = image.restore();
                        }
                    }
                }
                Err(_) => rejected += 1,
            }
        }
    }
    (decoded, rejected)
}

/// Seeds for the fuzz targets of wal/fuzz: each real record alone (decode_record: a
/// mode byte, then the record), and all of them as a record list for wal_reader's
/// laid-out mode (mode 1, a chunk-size byte, then rmid, info, u16 body length, body per
/// record).
fn write_fuzz_seeds(dir: &Path, seeds: &BTreeMap<String, RawRecord>) {
    let decode_dir = dir.join("decode_record");
    let reader_dir = dir.join("wal_reader");
    fs::create_dir_all(&decode_dir).expect("create seed dir");
    fs::create_dir_all(&reader_dir).expect("create seed dir");
    let file_name = |key: &str| -> String {
        key.chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect()
    };
    let mut laid_out = vec![1u8, 3];
    for (key, raw) in seeds {
        let mut seed = vec![0u8];
        seed.extend_from_slice(&raw.bytes);
        fs::write(decode_dir.join(file_name(key)), &seed).expect("write seed");
        let body = &raw.bytes[24..];
        if laid_out.len() + body.len() < 60_000 {
            laid_out.extend_from_slice(&[raw.bytes[17], raw.bytes[16]]);
            laid_out.extend_from_slice(&(body.len() as u16).to_le_bytes());
            laid_out.extend_from_slice(body);
        }
    }
    fs::write(reader_dir.join("real_records"), &laid_out).expect("write seed");
    // Raw mode (0) reads WAL of 1 MiB segments from the start of segment 1.
    let segment_size_bytes = 1 << 20;
    let mut generator = tarn_wal::format::synth::WalGenerator::new(
        Lsn(segment_size_bytes),
        None,
        SystemId(1),
        segment_size_bytes,
        1,
    )
    .expect("generator");
    for payload_len in [10, 300, 9000, 0, 100] {
        generator.append_record(payload_len);
    }
    let mut raw_stream = vec![0u8, 200];
    raw_stream.extend_from_slice(generator.bytes());
    fs::write(reader_dir.join("synthetic_stream"), &raw_stream).expect("write seed");
    eprintln!("wrote {} fuzz seeds to {}", seeds.len() + 1, dir.display());
}

struct DumpedStats {
    types: BTreeMap<String, TypeStats>,
    total: TypeStats,
    end: Lsn,
}

/// `pg_waldump --stats=record` from `start` to the end of WAL. It prints the statistics,
/// then fails describing where WAL ends, which is expected here.
fn pg_waldump_stats(tool: &Path, wal_dir: &Path, start: Lsn) -> DumpedStats {
    let stdout = pg_waldump_output(tool, wal_dir, start, &["--stats=record"]);
    let mut types = BTreeMap::new();
    let mut total = None;
    let mut end = None;
    for line in stdout.lines() {
        // WAL statistics between 0/1000028 and 0/3A1B2C8:
        if let Some(range) = line.strip_prefix("WAL statistics between ") {
            let to = range
                .trim_end_matches(':')
                .split(" and ")
                .nth(1)
                .expect("end LSN");
            end = Some(to.parse().expect("end LSN"));
            continue;
        }
        if let Some(rest) = line.strip_prefix("Total") {
            // Total  N  rec [pct%]  fpi [pct%]  combined [100%]
            let numbers: Vec<u64> = rest
                .split_whitespace()
                .filter_map(|token| token.parse().ok())
                .collect();
            total = Some(TypeStats {
                count: numbers[0],
                rec_len: numbers[1],
                fpi_len: numbers[2],
            });
            continue;
        }
        if let Some((name, row)) = parse_stats_row(line) {
            types.insert(name, row);
        }
    }
    DumpedStats {
        types,
        total: total.unwrap_or_else(|| panic!("no Total line in:\n{stdout}")),
        end: end.unwrap_or_else(|| panic!("no range line in:\n{stdout}")),
    }
}

/// A row "NAME  N (pct)  rec (pct)  fpi (pct)  combined (pct)"; NAME may itself hold
/// a parenthesised number ("XLOG/UNKNOWN (c0)"), so the row is read from the right.
fn parse_stats_row(line: &str) -> Option<(String, TypeStats)> {
    let mut rest = line.trim_end();
    let mut numbers = Vec::new();
    for _ in 0..4 {
        let pct_start = rest.rfind('(')?;
        let pct = &rest[pct_start + 1..rest.len().checked_sub(1)?];
        pct.trim().parse::<f64>().ok()?;
        rest = rest[..pct_start].trim_end();
        let number_start = rest.rfind(' ')? + 1;
        numbers.push(rest[number_start..].parse::<u64>().ok()?);
        rest = rest[..number_start].trim_end();
    }
    let name = rest.trim();
    if name.is_empty() || !name.contains('/') {
        return None;
    }
    // Read right to left: combined, fpi, rec, count.
    Some((
        name.to_string(),
        TypeStats {
            count: numbers[3],
            rec_len: numbers[2],
            fpi_len: numbers[1],
        },
    ))
}
