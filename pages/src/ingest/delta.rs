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
//!
//! [`DeltaRecord`] is the owned form, for building a delta; replay reads the stored
//! bytes in place with [`delta_records`], an iterator of [`DeltaRecordRef`]s whose
//! payloads (WAL record, page image, xid and member lists) are slices of the delta:
//! reading allocates nothing. [`decode_delta`] is the same reader, collected.

use std::fmt;
use std::marker::PhantomData;

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

/// One change to a page, read in place from an encoded delta: [`DeltaRecord`]
/// borrowing the delta's bytes (see [`delta_records`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeltaRecordRef<'a> {
    /// See [`DeltaRecord::Wal`].
    Wal {
        block_id: u8,
        settings: RedoSettings,
        lsn: Lsn,
        end_lsn: Lsn,
        record: &'a [u8],
    },
    /// See [`DeltaRecord::Image`].
    Image(&'a [u8; BLCKSZ]),
    ZeroPage,
    InitPage,
    ClearVmBits {
        heap_block: u32,
        flags: u8,
    },
    TruncateVmPage {
        new_heap_nblocks: u32,
    },
    ClogSetStatus {
        status: u8,
        xids: Entries<'a, u32>,
    },
    MultiXactOffsets {
        entries: Entries<'a, (u16, u32)>,
    },
    MultiXactMembers {
        members: Entries<'a, MemberWrite>,
    },
}

/// A fixed-size entry of a list in an encoded delta.
pub trait ListEntry: Sized {
    /// Encoded length in bytes.
    const LEN: usize;
    /// Reads one entry from exactly [`ListEntry::LEN`] bytes.
    fn read(bytes: &[u8]) -> Self;
}

fn le_u16(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}

fn le_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

impl ListEntry for u32 {
    const LEN: usize = 4;
    fn read(bytes: &[u8]) -> u32 {
        le_u32(bytes, 0)
    }
}

impl ListEntry for (u16, u32) {
    const LEN: usize = 6;
    fn read(bytes: &[u8]) -> (u16, u32) {
        (le_u16(bytes, 0), le_u32(bytes, 2))
    }
}

impl ListEntry for MemberWrite {
    const LEN: usize = 9;
    fn read(bytes: &[u8]) -> MemberWrite {
        MemberWrite {
            offset: le_u32(bytes, 0),
            xid: le_u32(bytes, 4),
            status: bytes[8],
        }
    }
}

/// A list of [`ListEntry`]s as the delta holds it, decoded one by one as it is iterated.
pub struct Entries<'a, T> {
    /// A whole number of entries.
    bytes: &'a [u8],
    entry: PhantomData<T>,
}

impl<'a, T: ListEntry> Entries<'a, T> {
    pub fn len(&self) -> usize {
        self.bytes.len() / T::LEN
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = T> + 'a
    where
        T: 'a,
    {
        self.bytes.chunks_exact(T::LEN).map(T::read)
    }
}

// Not derived: those would require T: Clone / Copy / PartialEq, which the bytes do not
// need.
impl<T> Clone for Entries<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Entries<'_, T> {}

impl<T> PartialEq for Entries<'_, T> {
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes
    }
}

impl<T> Eq for Entries<'_, T> {}

impl<T: ListEntry + fmt::Debug> fmt::Debug for Entries<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl DeltaRecordRef<'_> {
    /// The owned record, its payloads slices of `delta`, the bytes this record was
    /// read from (slice_ref panics on others).
    fn to_owned_in(self, delta: &Bytes) -> DeltaRecord {
        match self {
            DeltaRecordRef::Wal {
                block_id,
                settings,
                lsn,
                end_lsn,
                record,
            } => DeltaRecord::Wal {
                block_id,
                settings,
                lsn,
                end_lsn,
                record: delta.slice_ref(record),
            },
            DeltaRecordRef::Image(page) => DeltaRecord::Image(delta.slice_ref(&page[..])),
            DeltaRecordRef::ZeroPage => DeltaRecord::ZeroPage,
            DeltaRecordRef::InitPage => DeltaRecord::InitPage,
            DeltaRecordRef::ClearVmBits { heap_block, flags } => {
                DeltaRecord::ClearVmBits { heap_block, flags }
            }
            DeltaRecordRef::TruncateVmPage { new_heap_nblocks } => {
                DeltaRecord::TruncateVmPage { new_heap_nblocks }
            }
            DeltaRecordRef::ClogSetStatus { status, xids } => DeltaRecord::ClogSetStatus {
                status,
                xids: xids.iter().collect(),
            },
            DeltaRecordRef::MultiXactOffsets { entries } => DeltaRecord::MultiXactOffsets {
                entries: entries.iter().collect(),
            },
            DeltaRecordRef::MultiXactMembers { members } => DeltaRecord::MultiXactMembers {
                members: members.iter().collect(),
            },
        }
    }
}

/// Reads little-endian fields of an encoded delta, never past its end.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn fail(&self, detail: impl Into<String>) -> DeltaError {
        DeltaError {
            len: self.bytes.len(),
            at: self.pos,
            detail: detail.into(),
        }
    }

    fn take(&mut self, len: usize, what: &str) -> Result<&'a [u8], DeltaError> {
        let end = self
            .pos
            .checked_add(len)
            .filter(|end| *end <= self.bytes.len())
            .ok_or_else(|| self.fail(format!("{what} of {len} bytes runs past the end")))?;
        let slice = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<&'a [u8; N], DeltaError> {
        let slice = self.take(N, what)?;
        slice
            .try_into()
            .map_err(|_| self.fail(format!("{what} is not {N} bytes")))
    }

    fn u8(&mut self, what: &str) -> Result<u8, DeltaError> {
        Ok(self.array::<1>(what)?[0])
    }

    fn u16(&mut self, what: &str) -> Result<u16, DeltaError> {
        Ok(u16::from_le_bytes(*self.array(what)?))
    }

    fn u32(&mut self, what: &str) -> Result<u32, DeltaError> {
        Ok(u32::from_le_bytes(*self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64, DeltaError> {
        Ok(u64::from_le_bytes(*self.array(what)?))
    }

    /// A u32 count of entries, then the entries, which must fit in what is left.
    fn entries<T: ListEntry>(&mut self, what: &str) -> Result<Entries<'a, T>, DeltaError> {
        let count = self.u32(what)? as usize;
        if count.saturating_mul(T::LEN) > self.bytes.len() - self.pos {
            return Err(self.fail(format!("{count} {what} do not fit in what is left")));
        }
        Ok(Entries {
            bytes: self.take(count * T::LEN, what)?,
            entry: PhantomData,
        })
    }

    fn record(&mut self) -> Result<DeltaRecordRef<'a>, DeltaError> {
        let tag = self.u8("record tag")?;
        Ok(match tag {
            TAG_WAL => {
                let block_id = self.u8("block id")?;
                let flags = self.u8("settings")?;
                if flags & !(SETTING_DATA_CHECKSUMS | SETTING_WAL_LOG_HINTS) != 0 {
                    return Err(self.fail(format!("unknown settings bits {flags:#04x}")));
                }
                let lsn = Lsn(self.u64("lsn")?);
                let end_lsn = Lsn(self.u64("end lsn")?);
                if end_lsn <= lsn {
                    return Err(self.fail(format!("record ends at {end_lsn}, before {lsn}")));
                }
                let len = self.u32("record length")? as usize;
                DeltaRecordRef::Wal {
                    block_id,
                    settings: RedoSettings {
                        data_checksums: flags & SETTING_DATA_CHECKSUMS != 0,
                        wal_log_hints: flags & SETTING_WAL_LOG_HINTS != 0,
                    },
                    lsn,
                    end_lsn,
                    record: self.take(len, "WAL record")?,
                }
            }
            TAG_IMAGE => DeltaRecordRef::Image(self.array("page image")?),
            TAG_ZERO_PAGE => DeltaRecordRef::ZeroPage,
            TAG_INIT_PAGE => DeltaRecordRef::InitPage,
            TAG_CLEAR_VM_BITS => DeltaRecordRef::ClearVmBits {
                heap_block: self.u32("heap block")?,
                flags: self.u8("vm flags")?,
            },
            TAG_TRUNCATE_VM_PAGE => DeltaRecordRef::TruncateVmPage {
                new_heap_nblocks: self.u32("heap blocks")?,
            },
            TAG_CLOG_SET_STATUS => {
                let status = self.u8("status")?;
                if !matches!(
                    status,
                    TRANSACTION_STATUS_COMMITTED | TRANSACTION_STATUS_ABORTED
                ) {
                    return Err(self.fail(format!("transaction status {status}")));
                }
                DeltaRecordRef::ClogSetStatus {
                    status,
                    xids: self.entries("xids")?,
                }
            }
            TAG_MULTIXACT_OFFSETS => DeltaRecordRef::MultiXactOffsets {
                entries: self.entries("offset entries")?,
            },
            TAG_MULTIXACT_MEMBERS => DeltaRecordRef::MultiXactMembers {
                members: self.entries("members")?,
            },
            other => return Err(self.fail(format!("unknown record tag {other}"))),
        })
    }
}

/// The records of an encoded delta, read in place, in order: the iterator
/// [`delta_records`] returns. A corrupt record, or bytes left over after the last
/// one, is an error item, after which the iterator ends.
pub struct DeltaRecords<'a> {
    reader: Reader<'a>,
    /// Records still to read.
    left: u16,
    count: u16,
    failed: bool,
}

/// Reads what [`encode_delta`] wrote, in place and without allocating: checks the
/// format byte and the record count here, each record as it is reached.
pub fn delta_records(bytes: &[u8]) -> Result<DeltaRecords<'_>, DeltaError> {
    let mut reader = Reader { bytes, pos: 0 };
    let format = reader.u8("format byte")?;
    if format != DELTA_FORMAT {
        return Err(reader.fail(format!("unknown delta format {format:#04x}")));
    }
    let count = reader.u16("record count")?;
    if count == 0 {
        return Err(reader.fail("a delta without records"));
    }
    Ok(DeltaRecords {
        reader,
        left: count,
        count,
        failed: false,
    })
}

impl<'a> Iterator for DeltaRecords<'a> {
    type Item = Result<DeltaRecordRef<'a>, DeltaError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let result = if self.left > 0 {
            self.left -= 1;
            self.reader.record()
        } else if self.reader.pos != self.reader.bytes.len() {
            Err(self.reader.fail(format!(
                "{} bytes left over after {} records",
                self.reader.bytes.len() - self.reader.pos,
                self.count
            )))
        } else {
            return None;
        };
        self.failed = result.is_err();
        Some(result)
    }
}

/// Decodes what [`encode_delta`] wrote into owned records (through
/// [`delta_records`]). The [`DeltaRecord::Wal`] and [`DeltaRecord::Image`] payloads
/// are slices of `bytes` (no copy).
pub fn decode_delta(bytes: &Bytes) -> Result<Vec<DeltaRecord>, DeltaError> {
    delta_records(bytes)?
        .map(|record| record.map(|record| record.to_owned_in(bytes)))
        .collect()
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

    #[test]
    fn reading_in_place_yields_borrowed_records_then_stops_at_an_error() {
        let records = samples();
        let encoded = encode_delta(&records);
        let read: Vec<DeltaRecordRef<'_>> = delta_records(&encoded)
            .expect("header")
            .collect::<Result<_, _>>()
            .expect("records");
        assert_eq!(read.len(), records.len());
        let DeltaRecordRef::ClogSetStatus { status, xids } = read[6] else {
            panic!("not a CLOG record: {:?}", read[6]);
        };
        assert_eq!(status, TRANSACTION_STATUS_ABORTED);
        assert_eq!(xids.len(), 3);
        assert_eq!(xids.iter().collect::<Vec<_>>(), [700, 701, 9000]);
        let DeltaRecordRef::Wal { record, .. } = read[1] else {
            panic!("not a WAL record: {:?}", read[1]);
        };
        // In place: the payload is the delta's own bytes.
        assert!(encoded.as_ptr_range().contains(&record.as_ptr()));

        // Bytes left over: every record, then one error, then nothing.
        let mut padded = encoded.to_vec();
        padded.push(0);
        let mut iter = delta_records(&padded).expect("header");
        for _ in 0..records.len() {
            assert!(matches!(iter.next(), Some(Ok(_))));
        }
        assert!(matches!(iter.next(), Some(Err(_))));
        assert!(iter.next().is_none());
        // A corrupt record ends the iteration too.
        let mut corrupt = encode_delta(&[DeltaRecord::ZeroPage, DeltaRecord::InitPage]).to_vec();
        corrupt[4] = 0xEE;
        let mut iter = delta_records(&corrupt).expect("header");
        assert!(matches!(iter.next(), Some(Ok(DeltaRecordRef::ZeroPage))));
        assert!(matches!(iter.next(), Some(Err(_))));
        assert!(iter.next().is_none());
    }
}
