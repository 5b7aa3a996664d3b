//! WAL segments: valid sizes and the 24-hex-digit file names Postgres gives them.

use crate::Lsn;

/// Postgres's default `--wal-segsize` (16 MiB).
pub const DEFAULT_SEGMENT_SIZE_BYTES: u64 = 16 * 1024 * 1024;
/// Smallest segment size initdb accepts (WalSegMinSize).
pub const MIN_SEGMENT_SIZE_BYTES: u64 = 1024 * 1024;
/// Largest segment size initdb accepts (WalSegMaxSize).
pub const MAX_SEGMENT_SIZE_BYTES: u64 = 1024 * 1024 * 1024;

/// Whether Postgres accepts this segment size (IsValidWalSegSize, xlog_internal.h):
/// a power of two from 1 MiB to 1 GiB.
pub const fn is_valid_segment_size(segment_size_bytes: u64) -> bool {
    segment_size_bytes.is_power_of_two()
        && segment_size_bytes >= MIN_SEGMENT_SIZE_BYTES
        && segment_size_bytes <= MAX_SEGMENT_SIZE_BYTES
}

/// Segments per 4 GiB "xlogid" (XLogSegmentsPerXLogId): the middle 8 hex digits of a
/// file name count these units, the last 8 count segments within one.
fn segments_per_xlog_id(segment_size_bytes: u64) -> u64 {
    debug_assert!(is_valid_segment_size(segment_size_bytes));
    // `max(1)` keeps an invalid size from dividing by zero; names are then merely odd.
    ((1u64 << 32) / segment_size_bytes.max(1)).max(1)
}

/// The file name of segment `segno` on `timeline`, e.g. `000000010000000000000001`
/// (mirrors XLogFileName, xlog_internal.h). `segment_size_bytes` must be valid
/// ([`is_valid_segment_size`]).
pub fn segment_file_name(timeline: u32, segno: u64, segment_size_bytes: u64) -> String {
    let per_id = segments_per_xlog_id(segment_size_bytes);
    format!(
        "{:08X}{:08X}{:08X}",
        timeline,
        segno / per_id,
        segno % per_id
    )
}

/// A parsed segment file name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SegmentFileName {
    pub timeline: u32,
    pub segno: u64,
}

impl SegmentFileName {
    /// LSN of the first byte of this segment.
    pub fn start_lsn(&self, segment_size_bytes: u64) -> Lsn {
        Lsn(self.segno.saturating_mul(segment_size_bytes))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid WAL segment file name {0:?}: expected 24 upper-case hexadecimal digits \
     (timeline, xlogid, segment), e.g. 000000010000000000000001"
)]
pub struct ParseSegmentFileNameError(pub String);

/// Parses a name made by [`segment_file_name`] (mirrors IsXLogFileName +
/// XLogFromFileName). Stricter than Postgres in one way: the segment part must be below
/// the number of segments per xlogid, so every accepted name round-trips.
pub fn parse_segment_file_name(
    name: &str,
    segment_size_bytes: u64,
) -> Result<SegmentFileName, ParseSegmentFileNameError> {
    let err = || ParseSegmentFileNameError(name.to_string());
    let is_upper_hex = |b: u8| b.is_ascii_digit() || (b'A'..=b'F').contains(&b);
    if name.len() != 24 || !name.bytes().all(is_upper_hex) {
        return Err(err());
    }
    let field =
        |range: std::ops::Range<usize>| u32::from_str_radix(&name[range], 16).map_err(|_| err());
    let timeline = field(0..8)?;
    let xlog_id = u64::from(field(8..16)?);
    let seg_in_id = u64::from(field(16..24)?);
    let per_id = segments_per_xlog_id(segment_size_bytes);
    if seg_in_id >= per_id {
        return Err(err());
    }
    Ok(SegmentFileName {
        timeline,
        segno: xlog_id * per_id + seg_in_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_postgres() {
        let mib16 = DEFAULT_SEGMENT_SIZE_BYTES;
        assert_eq!(segment_file_name(1, 1, mib16), "000000010000000000000001");
        // 256 segments of 16 MiB per xlogid.
        assert_eq!(
            segment_file_name(1, 0x1FF, mib16),
            "0000000100000001000000FF"
        );
        assert_eq!(
            segment_file_name(0x2A, 0x300, mib16),
            "0000002A0000000300000000"
        );
        // 1 MiB segments: 4096 per xlogid.
        assert_eq!(
            segment_file_name(1, 4097, MIN_SEGMENT_SIZE_BYTES),
            "000000010000000100000001"
        );
        // 1 GiB segments: 4 per xlogid.
        assert_eq!(
            segment_file_name(3, 6, MAX_SEGMENT_SIZE_BYTES),
            "000000030000000100000002"
        );
    }

    #[test]
    fn names_round_trip() {
        for size in [
            MIN_SEGMENT_SIZE_BYTES,
            DEFAULT_SEGMENT_SIZE_BYTES,
            MAX_SEGMENT_SIZE_BYTES,
        ] {
            for segno in [0, 1, 255, 256, 4095, 4096, 1 << 20, (1 << 32) - 1] {
                let name = segment_file_name(7, segno, size);
                let parsed = parse_segment_file_name(&name, size).expect("round trip");
                assert_eq!(parsed, SegmentFileName { timeline: 7, segno });
                assert_eq!(parsed.start_lsn(size), Lsn(segno * size));
            }
        }
    }

    #[test]
    fn bad_names_are_rejected() {
        let size = DEFAULT_SEGMENT_SIZE_BYTES;
        for name in [
            "",
            "00000001000000000000001",
            "0000000100000000000000010",
            "00000001000000000000000a",
            "00000001000000000000000G",
            "000000010000000000000100", // segment part 0x100 >= 256 per xlogid
            "00000001000000000000000A.partial",
            "000000010000000000000001.history",
            "+00000010000000000000001",
        ] {
            assert!(
                parse_segment_file_name(name, size).is_err(),
                "{name:?} accepted"
            );
        }
    }

    #[test]
    fn segment_sizes() {
        assert!(is_valid_segment_size(MIN_SEGMENT_SIZE_BYTES));
        assert!(is_valid_segment_size(DEFAULT_SEGMENT_SIZE_BYTES));
        assert!(is_valid_segment_size(MAX_SEGMENT_SIZE_BYTES));
        assert!(!is_valid_segment_size(0));
        assert!(!is_valid_segment_size(512 * 1024));
        assert!(!is_valid_segment_size(3 * 1024 * 1024));
        assert!(!is_valid_segment_size(2 * MAX_SEGMENT_SIZE_BYTES));
    }
}
