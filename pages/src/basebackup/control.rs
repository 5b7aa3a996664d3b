//! `global/pg_control` (ControlFileData, catalog/pg_control.h, PostgreSQL 15 on a 64-bit
//! platform): reading the fields a basebackup needs from the stored copy, and rewriting
//! it to point at the basebackup's shutdown checkpoint.
//!
//! The file is [`PG_CONTROL_FILE_SIZE`] bytes of which the struct is the first 296; its
//! CRC-32C covers the bytes before the `crc` field at [`CRC_OFFSET`]. Field offsets
//! include the padding the C compiler inserts.

use tarn_wal::Lsn;
use tarn_wal::format::is_valid_segment_size;

use crate::ingest::SIZE_OF_CHECKPOINT;
use crate::page::BLCKSZ;

/// PG_CONTROL_FILE_SIZE: the file is padded to this size with zeros.
pub const PG_CONTROL_FILE_SIZE: usize = 8192;
/// PG_CONTROL_VERSION of PostgreSQL 15.
pub const PG_CONTROL_VERSION: u32 = 1300;
/// offsetof(ControlFileData, crc).
pub const CRC_OFFSET: usize = 288;
/// DBState's DB_SHUTDOWNED.
pub const DB_SHUTDOWNED: u32 = 1;
/// RELSEG_SIZE the cluster must have been built with.
const RELSEG_SIZE: u32 = 131_072;
/// XLOG_BLCKSZ the cluster must have been built with.
const XLOG_BLCKSZ: u32 = 8192;

mod offsets {
    pub const SYSTEM_IDENTIFIER: usize = 0;
    pub const PG_CONTROL_VERSION: usize = 8;
    pub const STATE: usize = 16;
    pub const TIME: usize = 24;
    pub const CHECKPOINT: usize = 32;
    pub const CHECKPOINT_COPY: usize = 40;
    pub const MIN_RECOVERY_POINT: usize = 136;
    pub const MIN_RECOVERY_POINT_TLI: usize = 144;
    pub const BACKUP_START_POINT: usize = 152;
    pub const BACKUP_END_POINT: usize = 160;
    pub const BACKUP_END_REQUIRED: usize = 168;
    pub const BLCKSZ: usize = 216;
    pub const RELSEG_SIZE: usize = 220;
    pub const XLOG_BLCKSZ: usize = 224;
    pub const XLOG_SEG_SIZE: usize = 228;
    pub const DATA_CHECKSUM_VERSION: usize = 252;
}

/// Why a stored `pg_control` cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the stored pg_control is not usable: {0}")]
pub struct ControlFileError(pub String);

/// A validated copy of `pg_control`.
#[derive(Clone, PartialEq, Eq)]
pub struct ControlFile {
    bytes: Vec<u8>,
}

fn le32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

fn le64(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

impl ControlFile {
    /// Checks length, version, CRC and the compile-time sizes tarn assumes.
    pub fn parse(bytes: &[u8]) -> Result<ControlFile, ControlFileError> {
        let fail = |detail: String| Err(ControlFileError(detail));
        if bytes.len() < CRC_OFFSET + 4 || bytes.len() > PG_CONTROL_FILE_SIZE {
            return fail(format!(
                "{} bytes (expected {} to {PG_CONTROL_FILE_SIZE})",
                bytes.len(),
                CRC_OFFSET + 4
            ));
        }
        let version = le32(bytes, offsets::PG_CONTROL_VERSION);
        if version != PG_CONTROL_VERSION {
            return fail(format!(
                "pg_control_version {version}, expected {PG_CONTROL_VERSION} (PostgreSQL 15)"
            ));
        }
        let stored_crc = le32(bytes, CRC_OFFSET);
        let computed = crc32c::crc32c(&bytes[..CRC_OFFSET]);
        if stored_crc != computed {
            return fail(format!(
                "CRC mismatch: stored {stored_crc:08x}, computed {computed:08x}"
            ));
        }
        for (what, at, expected) in [
            ("blcksz", offsets::BLCKSZ, BLCKSZ as u32),
            ("relseg_size", offsets::RELSEG_SIZE, RELSEG_SIZE),
            ("xlog_blcksz", offsets::XLOG_BLCKSZ, XLOG_BLCKSZ),
        ] {
            let found = le32(bytes, at);
            if found != expected {
                return fail(format!("{what} is {found}, tarn supports only {expected}"));
            }
        }
        let segment_size = le32(bytes, offsets::XLOG_SEG_SIZE);
        if !is_valid_segment_size(u64::from(segment_size)) {
            return fail(format!("invalid WAL segment size {segment_size}"));
        }
        Ok(ControlFile {
            bytes: bytes.to_vec(),
        })
    }

    pub fn system_identifier(&self) -> u64 {
        le64(&self.bytes, offsets::SYSTEM_IDENTIFIER)
    }

    /// `xlog_seg_size`: the WAL segment size in bytes (validated).
    pub fn segment_size_bytes(&self) -> u64 {
        u64::from(le32(&self.bytes, offsets::XLOG_SEG_SIZE))
    }

    /// Whether the cluster has data checksums (`data_checksum_version != 0`).
    pub fn data_checksums(&self) -> bool {
        le32(&self.bytes, offsets::DATA_CHECKSUM_VERSION) != 0
    }

    /// `checkPoint`: the last checkpoint record's LSN.
    pub fn checkpoint_lsn(&self) -> Lsn {
        Lsn(le64(&self.bytes, offsets::CHECKPOINT))
    }

    /// `state` (DBState).
    pub fn state(&self) -> u32 {
        le32(&self.bytes, offsets::STATE)
    }

    /// The file as a cluster cleanly shut down at the checkpoint record at
    /// `checkpoint_lsn` whose contents are `checkpoint` would have it: `state`
    /// DB_SHUTDOWNED, `checkPoint` and `checkPointCopy` set, no minimum recovery point and
    /// no backup in progress, `time` set, CRC recomputed; padded to
    /// [`PG_CONTROL_FILE_SIZE`]. Everything else (system identifier, settings, sizes,
    /// the mock authentication nonce, unloggedLSN) is the stored file's.
    pub fn for_shutdown_checkpoint(
        &self,
        checkpoint_lsn: Lsn,
        checkpoint: &[u8; SIZE_OF_CHECKPOINT],
        time: i64,
    ) -> Vec<u8> {
        let mut out = self.bytes.clone();
        out.resize(PG_CONTROL_FILE_SIZE, 0);
        let mut put = |at: usize, bytes: &[u8]| out[at..at + bytes.len()].copy_from_slice(bytes);
        put(offsets::STATE, &DB_SHUTDOWNED.to_le_bytes());
        put(offsets::TIME, &time.to_le_bytes());
        put(offsets::CHECKPOINT, &checkpoint_lsn.0.to_le_bytes());
        put(offsets::CHECKPOINT_COPY, checkpoint);
        put(offsets::MIN_RECOVERY_POINT, &0u64.to_le_bytes());
        put(offsets::MIN_RECOVERY_POINT_TLI, &0u32.to_le_bytes());
        put(offsets::BACKUP_START_POINT, &0u64.to_le_bytes());
        put(offsets::BACKUP_END_POINT, &0u64.to_le_bytes());
        put(offsets::BACKUP_END_REQUIRED, &[0]);
        let crc = crc32c::crc32c(&out[..CRC_OFFSET]);
        out[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_le_bytes());
        out
    }
}

impl std::fmt::Debug for ControlFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlFile")
            .field("system_identifier", &self.system_identifier())
            .field("state", &self.state())
            .field("checkpoint_lsn", &self.checkpoint_lsn())
            .field("segment_size_bytes", &self.segment_size_bytes())
            .field("data_checksums", &self.data_checksums())
            .finish()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A plausible pg_control: version, sizes, a system id, checksums as asked, CRC.
    pub(crate) fn sample_control_file(system_id: u64, checksums: bool) -> Vec<u8> {
        let mut bytes = vec![0u8; PG_CONTROL_FILE_SIZE];
        let mut put = |at: usize, value: &[u8]| bytes[at..at + value.len()].copy_from_slice(value);
        put(offsets::SYSTEM_IDENTIFIER, &system_id.to_le_bytes());
        put(
            offsets::PG_CONTROL_VERSION,
            &PG_CONTROL_VERSION.to_le_bytes(),
        );
        put(offsets::STATE, &6u32.to_le_bytes());
        put(offsets::MIN_RECOVERY_POINT, &0x0300_0000u64.to_le_bytes());
        put(offsets::BLCKSZ, &(BLCKSZ as u32).to_le_bytes());
        put(offsets::RELSEG_SIZE, &RELSEG_SIZE.to_le_bytes());
        put(offsets::XLOG_BLCKSZ, &XLOG_BLCKSZ.to_le_bytes());
        put(offsets::XLOG_SEG_SIZE, &(16u32 << 20).to_le_bytes());
        put(
            offsets::DATA_CHECKSUM_VERSION,
            &u32::from(checksums).to_le_bytes(),
        );
        let crc = crc32c::crc32c(&bytes[..CRC_OFFSET]);
        bytes[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_le_bytes());
        bytes
    }

    #[test]
    fn rewrites_for_a_shutdown_checkpoint() {
        let control = ControlFile::parse(&sample_control_file(77, true)).expect("valid");
        assert_eq!(control.system_identifier(), 77);
        assert!(control.data_checksums());
        assert_eq!(control.segment_size_bytes(), 16 << 20);
        let checkpoint = [7u8; SIZE_OF_CHECKPOINT];
        let out = control.for_shutdown_checkpoint(Lsn(0x0500_0028), &checkpoint, 1_700_000_000);
        assert_eq!(out.len(), PG_CONTROL_FILE_SIZE);
        let rewritten = ControlFile::parse(&out).expect("the CRC is recomputed");
        assert_eq!(rewritten.state(), DB_SHUTDOWNED);
        assert_eq!(rewritten.checkpoint_lsn(), Lsn(0x0500_0028));
        assert_eq!(&out[40..128], &checkpoint[..]);
        assert_eq!(le64(&out, offsets::MIN_RECOVERY_POINT), 0);
        assert_eq!(le64(&out, offsets::TIME), 1_700_000_000);
        assert_eq!(rewritten.system_identifier(), 77);
    }

    #[test]
    fn refuses_what_it_cannot_use() {
        let mut bytes = sample_control_file(1, false);
        assert!(ControlFile::parse(&bytes[..200]).is_err());
        bytes[100] ^= 1;
        let error = ControlFile::parse(&bytes).expect_err("bad CRC");
        assert!(error.to_string().contains("CRC mismatch"), "{error}");
        let mut old = sample_control_file(1, false);
        old[offsets::PG_CONTROL_VERSION..offsets::PG_CONTROL_VERSION + 4]
            .copy_from_slice(&1201u32.to_le_bytes());
        let crc = crc32c::crc32c(&old[..CRC_OFFSET]);
        old[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_le_bytes());
        let error = ControlFile::parse(&old).expect_err("PG14");
        assert!(error.to_string().contains("1201"), "{error}");
    }
}
