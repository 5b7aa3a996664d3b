//! The fixed 24-byte record header (XLogRecord, xlogrecord.h), its validation and the
//! record CRC.
//!
//! Layout (little-endian): xl_tot_len u32 @0 (whole record, header included),
//! xl_xid u32 @4, xl_prev u64 @8 (start of the previous record), xl_info u8 @16,
//! xl_rmid u8 @17, 2 bytes padding @18, xl_crc u32 @20. The body that follows (block
//! headers, then block data and main data) is not interpreted here.

use crate::Lsn;

use super::WalFormatError;

/// SizeOfXLogRecord.
pub const SIZE_OF_XLOG_RECORD: usize = 24;
/// offsetof(XLogRecord, xl_crc): the CRC covers the header up to here.
pub const XLOG_RECORD_CRC_OFFSET: usize = 20;
/// XLogRecordMaxSize (xloginsert.c): Postgres refuses to write a bigger record, so a
/// larger xl_tot_len is garbage. It also bounds what a reader trusts before the CRC.
pub const XLOG_RECORD_MAX_SIZE: u32 = 1020 * 1024 * 1024;

/// Resource manager of XLOG records (checkpoints, switches, ...).
pub const RM_XLOG_ID: u8 = 0;
/// Resource manager of logical decoding messages (pg_logical_emit_message).
pub const RM_LOGICALMSG_ID: u8 = 21;
/// Highest built-in resource manager id in PostgreSQL 15 (RM_MAX_BUILTIN_ID).
pub const RM_MAX_BUILTIN_ID: u8 = RM_LOGICALMSG_ID;
/// Custom (extension) resource managers use ids from here to 255 (RM_MIN_CUSTOM_ID).
pub const RM_MIN_CUSTOM_ID: u8 = 128;

/// Low bits of xl_info that belong to the WAL machinery rather than the rmgr.
pub const XLR_INFO_MASK: u8 = 0x0F;
/// xl_info of an XLOG segment switch (rmgr XLOG).
pub const XLOG_SWITCH: u8 = 0x40;

/// Block id announcing main data of at most 255 bytes (u8 length follows).
pub const XLR_BLOCK_ID_DATA_SHORT: u8 = 255;
/// Block id announcing main data with a u32 length.
pub const XLR_BLOCK_ID_DATA_LONG: u8 = 254;

/// Whether `rmid` names a built-in or custom resource manager (RmgrIdIsValid, rmgr.h).
pub const fn rmgr_id_is_valid(rmid: u8) -> bool {
    rmid <= RM_MAX_BUILTIN_ID || rmid >= RM_MIN_CUSTOM_ID
}

/// A decoded record header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XLogRecordHeader {
    pub tot_len: u32,
    pub xid: u32,
    pub prev: Lsn,
    pub info: u8,
    pub rmid: u8,
    pub crc: u32,
}

impl XLogRecordHeader {
    pub fn decode(bytes: &[u8; SIZE_OF_XLOG_RECORD]) -> Self {
        let u32_at = |at: usize| {
            u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
        };
        let mut prev = [0u8; 8];
        prev.copy_from_slice(&bytes[8..16]);
        XLogRecordHeader {
            tot_len: u32_at(0),
            xid: u32_at(4),
            prev: Lsn(u64::from_le_bytes(prev)),
            info: bytes[16],
            rmid: bytes[17],
            crc: u32_at(20),
        }
    }

    /// Encodes with zeroed padding, as Postgres writes it (the padding is covered by the
    /// CRC, so it must be reproduced exactly).
    pub fn encode(&self) -> [u8; SIZE_OF_XLOG_RECORD] {
        let mut out = [0u8; SIZE_OF_XLOG_RECORD];
        out[0..4].copy_from_slice(&self.tot_len.to_le_bytes());
        out[4..8].copy_from_slice(&self.xid.to_le_bytes());
        out[8..16].copy_from_slice(&self.prev.0.to_le_bytes());
        out[16] = self.info;
        out[17] = self.rmid;
        out[20..24].copy_from_slice(&self.crc.to_le_bytes());
        out
    }

    /// An XLOG_SWITCH record: the rest of its segment is unused, so the record "ends" at
    /// the segment end.
    pub const fn is_xlog_switch(&self) -> bool {
        self.rmid == RM_XLOG_ID && self.info & !XLR_INFO_MASK == XLOG_SWITCH
    }

    /// Checks the header of the record starting at `record`. `expected_prev` is the
    /// previous record's start when known; otherwise (the first record read after a
    /// random positioning) xl_prev only has to be before the record.
    /// Mirrors ValidXLogRecordHeader (xlogreader.c), plus the XLogRecordMaxSize bound.
    pub fn validate(&self, record: Lsn, expected_prev: Option<Lsn>) -> Result<(), WalFormatError> {
        check_total_length(record, self.tot_len)?;
        if !rmgr_id_is_valid(self.rmid) {
            return Err(WalFormatError::ResourceManager {
                record,
                rmid: self.rmid,
            });
        }
        match expected_prev {
            Some(expected) if self.prev != expected => Err(WalFormatError::PrevLink {
                record,
                found: self.prev,
                expected,
            }),
            None if self.prev >= record => Err(WalFormatError::PrevLinkNotBefore {
                record,
                found: self.prev,
            }),
            _ => Ok(()),
        }
    }
}

/// The first check on a record, possible as soon as xl_tot_len is read (it is always on
/// the record's first page, since records start MAXALIGNed): at least a header, at most
/// XLogRecordMaxSize. Zero here is how the end of WAL usually shows up.
pub fn check_total_length(record: Lsn, tot_len: u32) -> Result<(), WalFormatError> {
    if (tot_len as usize) < SIZE_OF_XLOG_RECORD || tot_len > XLOG_RECORD_MAX_SIZE {
        return Err(WalFormatError::RecordLength { record, tot_len });
    }
    Ok(())
}

/// CRC-32C of a record computed piece by piece as its bytes stream past: first the body
/// (everything after the 24-byte header) in order, then the header up to xl_crc. This is
/// Postgres's order (ValidXLogRecord / XLogRecordAssemble), which is what lets a reader
/// check a record without holding it in memory.
#[derive(Clone, Copy, Debug, Default)]
pub struct RecordCrc(u32);

impl RecordCrc {
    pub const fn new() -> Self {
        RecordCrc(0)
    }

    /// Adds the next piece of the record body.
    pub fn update(&mut self, body: &[u8]) {
        self.0 = crc32c::crc32c_append(self.0, body);
    }

    /// Adds the header (without xl_crc) and returns the CRC Postgres stores in xl_crc.
    pub fn finish(self, header: &[u8; SIZE_OF_XLOG_RECORD]) -> u32 {
        crc32c::crc32c_append(self.0, &header[..XLOG_RECORD_CRC_OFFSET])
    }
}

/// CRC of a whole record held in memory (`record.len()` is at least the header).
pub fn record_crc(record: &[u8]) -> u32 {
    let mut header = [0u8; SIZE_OF_XLOG_RECORD];
    let header_len = record.len().min(SIZE_OF_XLOG_RECORD);
    header[..header_len].copy_from_slice(&record[..header_len]);
    let mut crc = RecordCrc::new();
    crc.update(&record[header_len..]);
    crc.finish(&header)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> XLogRecordHeader {
        XLogRecordHeader {
            tot_len: 50,
            xid: 7,
            prev: Lsn(0x100_0028),
            info: 0x10,
            rmid: 10,
            crc: 0xDEAD_BEEF,
        }
    }

    #[test]
    fn encode_decode_round_trip() {
        let h = header();
        assert_eq!(XLogRecordHeader::decode(&h.encode()), h);
    }

    #[test]
    fn crc_is_body_then_header_prefix() {
        let mut record = vec![0u8; 50];
        record[..24].copy_from_slice(&header().encode());
        for (i, b) in record[24..].iter_mut().enumerate() {
            *b = i as u8;
        }
        let mut concatenated = record[24..].to_vec();
        concatenated.extend_from_slice(&record[..20]);
        let expected = crc32c::crc32c(&concatenated);
        assert_eq!(record_crc(&record), expected);
        // Streaming in pieces gives the same result, and xl_crc itself is not covered.
        let mut crc = RecordCrc::new();
        crc.update(&record[24..30]);
        crc.update(&record[30..]);
        let mut h = [0u8; 24];
        h.copy_from_slice(&record[..24]);
        h[20..].copy_from_slice(&[1, 2, 3, 4]);
        assert_eq!(crc.finish(&h), expected);
    }

    #[test]
    fn header_validation() {
        let at = Lsn(0x200_0000);
        let h = header();
        h.validate(at, Some(Lsn(0x100_0028))).expect("valid");
        h.validate(at, None)
            .expect("random access: prev before record");
        assert!(matches!(
            h.validate(at, Some(Lsn(8))),
            Err(WalFormatError::PrevLink { .. })
        ));
        assert!(matches!(
            h.validate(Lsn(0x100_0028), None),
            Err(WalFormatError::PrevLinkNotBefore { .. })
        ));
        for (tot_len, ok) in [
            (0, false),
            (23, false),
            (24, true),
            (XLOG_RECORD_MAX_SIZE, true),
            (u32::MAX, false),
        ] {
            let h = XLogRecordHeader {
                tot_len,
                ..header()
            };
            assert_eq!(h.validate(at, None).is_ok(), ok, "tot_len {tot_len}");
        }
        for (rmid, ok) in [
            (0, true),
            (21, true),
            (22, false),
            (127, false),
            (128, true),
            (255, true),
        ] {
            let h = XLogRecordHeader { rmid, ..header() };
            assert_eq!(h.validate(at, None).is_ok(), ok, "rmid {rmid}");
        }
    }

    #[test]
    fn switch_detection_ignores_low_info_bits() {
        let switch = XLogRecordHeader {
            rmid: RM_XLOG_ID,
            info: XLOG_SWITCH | 0x01,
            ..header()
        };
        assert!(switch.is_xlog_switch());
        assert!(!XLogRecordHeader { rmid: 1, ..switch }.is_xlog_switch());
        assert!(
            !XLogRecordHeader {
                info: 0x50,
                ..switch
            }
            .is_xlog_switch()
        );
    }
}
