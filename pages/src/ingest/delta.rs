//! What a [`Value::Delta`](crate::store::Value::Delta) holds: a short list of
//! [`DeltaRecord`]s, applied to the page in order. A WAL record's change to one of its
//! block references is kept as the record itself ([`DeltaRecord::Wal`], replayed by
//! [`crate::redo`]); the changes Postgres's redo makes without a block reference are
//! tarn-synthesised records, each mirroring one routine of Postgres.
//!
//! A list rather than one record because one WAL record can change one page in more
//! than one way (a heap update clearing the bits of two heap blocks on the same VM
//! page, a commit of several transactions on one CLOG page, extension before the
//! change), and the store keeps at most one version per key and LSN.
//!
//! Encoding (little-endian): format byte [`DELTA_FORMAT`], u16 count, then per record
//! a tag byte and its fields (see [`encode_delta`]). Decoding checks every length and
//! the count, and that nothing is left over.

use bytes::{BufMut, Bytes, BytesMut};
use tarn_wal::Lsn;

use crate::page::BLCKSZ;
use crate::redo::RedoSettings;

/// The first byte of every encoded delta; a new format gets a new byte.
pub const DELTA_FORMAT: u8 = 0xD1;

/// TRANSACTION_STATUS_COMMITTED (clog.h).
pub const TRANSACTION_STATUS_COMMITTED: u8 = 0x01;
/// TRANSACTION_STATUS_ABORTED (clog.h).
pub const TRANSACTION_STATUS_ABORTED: u8 = 0x02;

/// One member write of a multixact (a MultiXactMember at its offset).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemberWrite {
    /// The member's MultiXactOffset (it determines the page, group and slot).
    pub offset: u32,
    pub xid: u32,
    /// MultiXactStatus (0..=5).
    pub status: u8,
}

/// One change to a page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeltaRecord {
    /// Block `block_id` of the WAL record `record` (its bytes as written, header
    /// included), replayed with [`crate::redo::apply_record_with`] and `settings` (the
    /// cluster's settings when the record was written).
    Wal {
        block_id: u8,
        settings: RedoSettings,
        lsn: Lsn,
        end_lsn: Lsn,
        record: Bytes,
    },
    /// The whole page ([`BLCKSZ`] bytes): a restored full-page image, or a page tarn
    /// built (an image pushed down inside a list).
    Image(Bytes),
    /// An all-zero page: what relation extension (smgrextend of a zero page, as
    /// XLogReadBufferExtended does through P_NEW) and SimpleLruZeroPage leave.
    ZeroPage,
    /// `PageInit(page, BLCKSZ, 0)`: a visibility map page added by vm_extend.
    InitPage,
    /// visibilitymap_clear of a heap block's bits, without a block reference.
    ClearVmBits { heap_block: u32, flags: u8 },
    /// visibilitymap_prepare_truncate's change to the last remaining VM page.
    TruncateVmPage { new_heap_nblocks: u32 },
    /// TransactionIdSetStatusBit for each xid (all on this CLOG page).
    ClogSetStatus { status: u8, xids: Vec<u32> },
    /// RecordNewMultiXact's writes to a pg_multixact/offsets page: `(entry, offset)`.
    MultiXactOffsets { entries: Vec<(u16, u32)> },
    /// RecordNewMultiXact's writes to a pg_multixact/members page.
    MultiXactMembers { members: Vec<MemberWrite> },
}

const TAG_WAL: u8 = 1;
const TAG_IMAGE: u8 = 2;
const TAG_ZERO_PAGE: u8 = 3;
const TAG_INIT_PAGE: u8 = 4;
const TAG_CLEAR_VM_BITS: u8 = 5;
const TAG_TRUNCATE_VM_PAGE: u8 = 6;
const TAG_CLOG_SET_STATUS: u8 = 7;
const TAG_MULTIXACT_OFFSETS: u8 = 8;
const TAG_MULTIXACT_MEMBERS: u8 = 9;

const SETTING_DATA_CHECKSUMS: u8 = 0x01;
const SETTING_WAL_LOG_HINTS: u8 = 0x02;

/// Why encoded delta bytes do not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("corrupt delta ({len} bytes) at byte {at}: {detail}")]
pub struct DeltaError {
    pub len: usize,
    pub at: usize,
    pub detail: String,
}

impl DeltaRecord {
    /// Whether the page before this record does not matter (it replaces the page).
    /// For [`DeltaRecord::Wal`] that depends on the block reference, which the caller
    /// knows when it builds the value.
    pub fn replaces_page(&self) -> bool {
        matches!(
            self,
            DeltaRecord::Image(_) | DeltaRecord::ZeroPage | DeltaRecord::InitPage
        )
    }

    pub fn kind(&self) -> &'static str {
        match self {
            DeltaRecord::Wal { .. } => "wal",
            DeltaRecord::Image(_) => "image",
            DeltaRecord::ZeroPage => "zero page",
            DeltaRecord::InitPage => "init page",
            DeltaRecord::ClearVmBits { .. } => "clear vm bits",
            DeltaRecord::TruncateVmPage { .. } => "truncate vm page",
            DeltaRecord::ClogSetStatus { .. } => "clog set status",
            DeltaRecord::MultiXactOffsets { .. } => "multixact offsets",
            DeltaRecord::MultiXactMembers { .. } => "multixact members",
        }
    }
}

fn settings_byte(settings: &RedoSettings) -> u8 {
    let mut byte = 0;
    if settings.data_checksums {
        byte |= SETTING_DATA_CHECKSUMS;
    }
    if settings.wal_log_hints {
        byte |= SETTING_WAL_LOG_HINTS;
    }
    byte
}

/// Encodes a non-empty list of records. Panics on lists no caller can build (empty,
/// more than u16::MAX records, an image that is not a page): those are bugs.
pub fn encode_delta(records: &[DeltaRecord]) -> Bytes {
    assert!(!records.is_empty(), "a delta needs at least one record");
    let count = u16::try_from(records.len()).expect("at most u16::MAX records per delta");
    let mut out = BytesMut::new();
    out.put_u8(DELTA_FORMAT);
    out.put_u16_le(count);
    for record in records {
        match record {
            DeltaRecord::Wal {
                block_id,
                settings,
                lsn,
                end_lsn,
                record,
            } => {
                out.put_u8(TAG_WAL);
                out.put_u8(*block_id);
                out.put_u8(settings_byte(settings));
                out.put_u64_le(lsn.0);
                out.put_u64_le(end_lsn.0);
                out.put_u32_le(u32::try_from(record.len()).expect("WAL records are < 4 GiB"));
                out.put_slice(record);
            }
            DeltaRecord::Image(page) => {
                assert_eq!(page.len(), BLCKSZ, "an image is one page");
                out.put_u8(TAG_IMAGE);
                out.put_slice(page);
            }
            DeltaRecord::ZeroPage => out.put_u8(TAG_ZERO_PAGE),
            DeltaRecord::InitPage => out.put_u8(TAG_INIT_PAGE),
            DeltaRecord::ClearVmBits { heap_block, flags } => {
                out.put_u8(TAG_CLEAR_VM_BITS);
                out.put_u32_le(*heap_block);
                out.put_u8(*flags);
            }
            DeltaRecord::TruncateVmPage { new_heap_nblocks } => {
                out.put_u8(TAG_TRUNCATE_VM_PAGE);
                out.put_u32_le(*new_heap_nblocks);
            }
            DeltaRecord::ClogSetStatus { status, xids } => {
                out.put_u8(TAG_CLOG_SET_STATUS);
                out.put_u8(*status);
                out.put_u32_le(xids.len() as u32);
                for xid in xids {
                    out.put_u32_le(*xid);
                }
            }
            DeltaRecord::MultiXactOffsets { entries } => {
                out.put_u8(TAG_MULTIXACT_OFFSETS);
                out.put_u32_le(entries.len() as u32);
                for (entry, offset) in entries {
                    out.put_u16_le(*entry);
                    out.put_u32_le(*offset);
                }
            }
            DeltaRecord::MultiXactMembers { members } => {
                out.put_u8(TAG_MULTIXACT_MEMBERS);
                out.put_u32_le(members.len() as u32);
                for member in members {
                    out.put_u32_le(member.offset);
                    out.put_u32_le(member.xid);
                    out.put_u8(member.status);
                }
            }
        }
    }
    out.freeze()
}

/// Reads little-endian fields of an encoded delta, never past its end.
struct Reader<'a> {
    bytes: &'a Bytes,
    pos: usize,
}

impl Reader<'_> {
    fn fail(&self, detail: impl Into<String>) -> DeltaError {
        DeltaError {
            len: self.bytes.len(),
            at: self.pos,
            detail: detail.into(),
        }
    }

    fn take(&mut self, len: usize, what: &str) -> Result<Bytes, DeltaError> {
        let end = self
            .pos
            .checked_add(len)
            .filter(|end| *end <= self.bytes.len())
            .ok_or_else(|| self.fail(format!("{what} of {len} bytes runs past the end")))?;
        let slice = self.bytes.slice(self.pos..end);
        self.pos = end;
        Ok(slice)
    }

    fn u8(&mut self, what: &str) -> Result<u8, DeltaError> {
        Ok(self.take(1, what)?[0])
    }

    fn u16(&mut self, what: &str) -> Result<u16, DeltaError> {
        let b = self.take(2, what)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self, what: &str) -> Result<u32, DeltaError> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self, what: &str) -> Result<u64, DeltaError> {
        let b = self.take(8, what)?;
        let mut word = [0u8; 8];
        word.copy_from_slice(&b);
        Ok(u64::from_le_bytes(word))
    }

    /// A count of entries of `entry_len` bytes each that must fit in what is left.
    fn count(&mut self, entry_len: usize, what: &str) -> Result<usize, DeltaError> {
        let count = self.u32(what)? as usize;
        if count.saturating_mul(entry_len) > self.bytes.len() - self.pos {
            return Err(self.fail(format!("{count} {what} do not fit in what is left")));
        }
        Ok(count)
    }
}

/// Decodes what [`encode_delta`] wrote. The [`DeltaRecord::Wal`] and
/// [`DeltaRecord::Image`] payloads are slices of `bytes` (no copy).
pub fn decode_delta(bytes: &Bytes) -> Result<Vec<DeltaRecord>, DeltaError> {
    let mut reader = Reader { bytes, pos: 0 };
    let format = reader.u8("format byte")?;
    if format != DELTA_FORMAT {
        return Err(reader.fail(format!("unknown delta format {format:#04x}")));
    }
    let count = reader.u16("record count")?;
    if count == 0 {
        return Err(reader.fail("a delta without records"));
    }
    let mut records = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        let tag = reader.u8("record tag")?;
        let record = match tag {
            TAG_WAL => {
                let block_id = reader.u8("block id")?;
                let flags = reader.u8("settings")?;
                if flags & !(SETTING_DATA_CHECKSUMS | SETTING_WAL_LOG_HINTS) != 0 {
                    return Err(reader.fail(format!("unknown settings bits {flags:#04x}")));
                }
                let lsn = Lsn(reader.u64("lsn")?);
                let end_lsn = Lsn(reader.u64("end lsn")?);
                if end_lsn <= lsn {
                    return Err(reader.fail(format!("record ends at {end_lsn}, before {lsn}")));
                }
                let len = reader.u32("record length")? as usize;
                DeltaRecord::Wal {
                    block_id,
                    settings: RedoSettings {
                        data_checksums: flags & SETTING_DATA_CHECKSUMS != 0,
                        wal_log_hints: flags & SETTING_WAL_LOG_HINTS != 0,
                    },
                    lsn,
                    end_lsn,
                    record: reader.take(len, "WAL record")?,
                }
            }
            TAG_IMAGE => DeltaRecord::Image(reader.take(BLCKSZ, "page image")?),
            TAG_ZERO_PAGE => DeltaRecord::ZeroPage,
            TAG_INIT_PAGE => DeltaRecord::InitPage,
            TAG_CLEAR_VM_BITS => DeltaRecord::ClearVmBits {
                heap_block: reader.u32("heap block")?,
                flags: reader.u8("vm flags")?,
            },
            TAG_TRUNCATE_VM_PAGE => DeltaRecord::TruncateVmPage {
                new_heap_nblocks: reader.u32("heap blocks")?,
            },
            TAG_CLOG_SET_STATUS => {
                let status = reader.u8("status")?;
                if !matches!(
                    status,
                    TRANSACTION_STATUS_COMMITTED | TRANSACTION_STATUS_ABORTED
                ) {
                    return Err(reader.fail(format!("transaction status {status}")));
                }
                let count = reader.count(4, "xids")?;
                let xids = (0..count)
                    .map(|_| reader.u32("xid"))
                    .collect::<Result<_, _>>()?;
                DeltaRecord::ClogSetStatus { status, xids }
            }
            TAG_MULTIXACT_OFFSETS => {
                let count = reader.count(6, "offset entries")?;
                let entries = (0..count)
                    .map(|_| Ok((reader.u16("entry")?, reader.u32("offset")?)))
                    .collect::<Result<_, DeltaError>>()?;
                DeltaRecord::MultiXactOffsets { entries }
            }
            TAG_MULTIXACT_MEMBERS => {
                let count = reader.count(9, "members")?;
                let members = (0..count)
                    .map(|_| {
                        Ok(MemberWrite {
                            offset: reader.u32("member offset")?,
                            xid: reader.u32("member xid")?,
                            status: reader.u8("member status")?,
                        })
                    })
                    .collect::<Result<_, DeltaError>>()?;
                DeltaRecord::MultiXactMembers { members }
            }
            other => return Err(reader.fail(format!("unknown record tag {other}"))),
        };
        records.push(record);
    }
    if reader.pos != bytes.len() {
        return Err(reader.fail(format!(
            "{} bytes left over after {count} records",
            bytes.len() - reader.pos
        )));
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<DeltaRecord> {
        vec![
            DeltaRecord::ZeroPage,
            DeltaRecord::Wal {
                block_id: 3,
                settings: RedoSettings {
                    data_checksums: false,
                    wal_log_hints: true,
                },
                lsn: Lsn(0x1000028),
                end_lsn: Lsn(0x10000A0),
                record: Bytes::from_static(b"not really a record"),
            },
            DeltaRecord::Image(Bytes::from(vec![7u8; BLCKSZ])),
            DeltaRecord::InitPage,
            DeltaRecord::ClearVmBits {
                heap_block: 40_000,
                flags: 3,
            },
            DeltaRecord::TruncateVmPage {
                new_heap_nblocks: 17,
            },
            DeltaRecord::ClogSetStatus {
                status: TRANSACTION_STATUS_ABORTED,
                xids: vec![700, 701, 9000],
            },
            DeltaRecord::MultiXactOffsets {
                entries: vec![(0, 1), (2047, 77)],
            },
            DeltaRecord::MultiXactMembers {
                members: vec![MemberWrite {
                    offset: 1636,
                    xid: 800,
                    status: 4,
                }],
            },
        ]
    }

    #[test]
    fn every_record_kind_round_trips() {
        let records = samples();
        let encoded = encode_delta(&records);
        assert_eq!(decode_delta(&encoded), Ok(records.clone()));
        for record in &records {
            let one = encode_delta(std::slice::from_ref(record));
            assert_eq!(
                decode_delta(&one),
                Ok(vec![record.clone()]),
                "{}",
                record.kind()
            );
        }
    }

    #[test]
    fn truncated_or_padded_deltas_are_errors() {
        let encoded = encode_delta(&samples());
        for len in 0..encoded.len() {
            assert!(
                decode_delta(&encoded.slice(..len)).is_err(),
                "prefix of {len}"
            );
        }
        let mut padded = encoded.to_vec();
        padded.push(0);
        assert!(decode_delta(&Bytes::from(padded)).is_err());
        let mut wrong_format = encoded.to_vec();
        wrong_format[0] = 0;
        assert!(decode_delta(&Bytes::from(wrong_format)).is_err());
        // A huge count must not allocate or read out of bounds.
        let mut huge = vec![DELTA_FORMAT, 1, 0, TAG_CLOG_SET_STATUS, 1];
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode_delta(&Bytes::from(huge)).is_err());
    }
}
