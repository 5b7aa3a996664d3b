//! [`decode_record`]: one record's bytes into a [`DecodedRecord`]. Mirrors
//! DecodeXLogRecord (xlogreader.c) check for check, in the same order, plus the checks
//! Postgres leaves to RestoreBlockImage or never makes (fork numbers, a hole that fits
//! the page), so that whatever decodes can be restored and redone without re-checking.
//!
//! Record layout after the 24-byte header (xlogrecord.h), all little-endian and
//! unaligned: a sequence of fragment headers, then the fragments' payloads in the same
//! order (each block's image, then its data), then the main data.
//!
//! | header                 | bytes                                                   |
//! |------------------------|---------------------------------------------------------|
//! | block (id 0..=32)      | id u8, fork_flags u8, data_length u16; if HAS_IMAGE: bimg_len u16, hole_offset u16, bimg_info u8 (+ hole_length u16 if compressed with a hole); unless SAME_REL: spcNode, dbNode, relNode u32; block u32 |
//! | XLR_BLOCK_ID_ORIGIN    | 253, origin u16                                         |
//! | XLR_BLOCK_ID_TOPLEVEL_XID | 252, xid u32                                         |
//! | XLR_BLOCK_ID_DATA_SHORT | 255, length u8 — always the last header               |
//! | XLR_BLOCK_ID_DATA_LONG | 254, length u32 — always the last header                |

use bytes::Bytes;

use crate::Lsn;
use crate::format::{
    DEFAULT_SEGMENT_SIZE_BYTES, SIZE_OF_XLOG_LONG_PHD, SIZE_OF_XLOG_RECORD, SIZE_OF_XLOG_SHORT_PHD,
    XLOG_BLCKSZ, XLR_BLOCK_ID_DATA_LONG, XLR_BLOCK_ID_DATA_SHORT, XLogRecordHeader, max_align,
};

use super::{
    BlockImage, BlockRef, BlockRefs, DecodeError, DecodedRecord, DecodedRecordRef, ForkNumber,
    ImageCompression, MAX_BLOCK_REFS, RecordBytes, RelFileNode,
};

/// Size of a relation page (BLCKSZ); page images restore to this many bytes.
pub const BLCKSZ: usize = 8192;

/// Highest block reference id (XLR_MAX_BLOCK_ID).
pub const XLR_MAX_BLOCK_ID: u8 = 32;
/// Fragment header announcing the replication origin (u16) of the record.
pub const XLR_BLOCK_ID_ORIGIN: u8 = 253;
/// Fragment header announcing the top-level transaction id (u32) of a subtransaction.
pub const XLR_BLOCK_ID_TOPLEVEL_XID: u8 = 252;

/// fork_flags: the fork number.
pub const BKPBLOCK_FORK_MASK: u8 = 0x0F;
/// fork_flags: an image header follows and the payload has a page image.
pub const BKPBLOCK_HAS_IMAGE: u8 = 0x10;
/// fork_flags: the payload has block data.
pub const BKPBLOCK_HAS_DATA: u8 = 0x20;
/// fork_flags: redo re-initialises the page.
pub const BKPBLOCK_WILL_INIT: u8 = 0x40;
/// fork_flags: no RelFileNode follows; the block is in the previous block's relation.
pub const BKPBLOCK_SAME_REL: u8 = 0x80;

/// bimg_info: the image has a hole (the unused middle of the page) removed.
pub const BKPIMAGE_HAS_HOLE: u8 = 0x01;
/// bimg_info: redo restores the image (otherwise it is for consistency checking).
pub const BKPIMAGE_APPLY: u8 = 0x02;
pub const BKPIMAGE_COMPRESS_PGLZ: u8 = 0x04;
pub const BKPIMAGE_COMPRESS_LZ4: u8 = 0x08;
pub const BKPIMAGE_COMPRESS_ZSTD: u8 = 0x10;
const BKPIMAGE_COMPRESSED_MASK: u8 =
    BKPIMAGE_COMPRESS_PGLZ | BKPIMAGE_COMPRESS_LZ4 | BKPIMAGE_COMPRESS_ZSTD;

/// Decodes the record whose bytes (header included, page headers removed) are `bytes`
/// and which starts at `lsn`. Copies `bytes` once into a [`Bytes`] that the parts
/// slice; see [`decode_record_bytes`] to avoid the copy.
///
/// `end_lsn` is computed by [`standard_record_end`] for 16 MiB segments; readers that
/// know the stream use [`decode_record_at`].
pub fn decode_record(lsn: Lsn, bytes: &[u8]) -> Result<DecodedRecord, DecodeError> {
    decode_record_bytes(lsn, Bytes::copy_from_slice(bytes))
}

/// [`decode_record`] over a [`Bytes`]: the block images, block data and main data of
/// the result are slices of `bytes` (no copy).
pub fn decode_record_bytes(lsn: Lsn, bytes: Bytes) -> Result<DecodedRecord, DecodeError> {
    let header = read_header(lsn, &bytes)?;
    let end_lsn = standard_record_end(lsn, &header, DEFAULT_SEGMENT_SIZE_BYTES)
        .ok_or_else(|| DecodeError::new(lsn, "the record would end beyond the last LSN"))?;
    let mut record = DecodedRecord::default();
    decode_body(lsn, end_lsn, header, bytes, &mut record)?;
    Ok(record)
}

/// [`decode_record_bytes`] with the record's end (EndRecPtr) known to the caller, as a
/// WAL reader knows it from the page headers it skipped.
pub fn decode_record_at(
    lsn: Lsn,
    end_lsn: Lsn,
    bytes: Bytes,
) -> Result<DecodedRecord, DecodeError> {
    let header = read_header(lsn, &bytes)?;
    let mut record = DecodedRecord::default();
    decode_body(lsn, end_lsn, header, bytes, &mut record)?;
    Ok(record)
}

/// [`decode_record_at`] over borrowed bytes, into `record`: its parts borrow `bytes`.
/// The same decoder as the others, for redo of records kept in stored deltas in a
/// loop: it allocates nothing (block references are inline), and decoding into the
/// same `record` each time spares initialising and moving its block array. On error
/// `record` holds whatever was decoded so far.
pub fn decode_record_ref<'a>(
    lsn: Lsn,
    end_lsn: Lsn,
    bytes: &'a [u8],
    record: &mut DecodedRecordRef<'a>,
) -> Result<(), DecodeError> {
    let header = read_header(lsn, bytes)?;
    decode_body(lsn, end_lsn, header, bytes, record)
}

/// Where the record with `header` starting at `start` ends (EndRecPtr) in a stream of
/// `segment_size_bytes` segments laid out as Postgres writes them: its bytes skip the
/// page header of every page they enter (the long one at segment starts), the end is
/// MAXALIGNed, and an XLOG_SWITCH extends to the end of its segment. `None` if that is
/// past the last LSN.
pub fn standard_record_end(
    start: Lsn,
    header: &XLogRecordHeader,
    segment_size_bytes: u64,
) -> Option<Lsn> {
    let segment_size_bytes = segment_size_bytes.max(XLOG_BLCKSZ);
    let mut pos = start.0;
    let mut left = u64::from(header.tot_len);
    // Bounded: each round consumes the rest of a page (at least 1 byte of the record,
    // since a page header is shorter than a page) or finishes.
    while left > 0 {
        if pos.is_multiple_of(XLOG_BLCKSZ) {
            let header_size = if pos.is_multiple_of(segment_size_bytes) {
                SIZE_OF_XLOG_LONG_PHD
            } else {
                SIZE_OF_XLOG_SHORT_PHD
            };
            pos = pos.checked_add(header_size as u64)?;
        }
        let in_page = (XLOG_BLCKSZ - pos % XLOG_BLCKSZ).min(left);
        pos = pos.checked_add(in_page)?;
        left -= in_page;
    }
    let mut end = max_align(pos);
    if end < pos {
        return None;
    }
    if header.is_xlog_switch() {
        end = end
            .div_ceil(segment_size_bytes)
            .checked_mul(segment_size_bytes)?;
    }
    Some(Lsn(end))
}

/// The fixed header, checked against the bytes given.
fn read_header(lsn: Lsn, bytes: &[u8]) -> Result<XLogRecordHeader, DecodeError> {
    let header: &[u8; SIZE_OF_XLOG_RECORD] = bytes
        .get(..SIZE_OF_XLOG_RECORD)
        .and_then(|prefix| prefix.try_into().ok())
        .ok_or_else(|| {
            DecodeError::new(
                lsn,
                format!(
                    "record of {} bytes is shorter than its {SIZE_OF_XLOG_RECORD}-byte header",
                    bytes.len()
                ),
            )
        })?;
    let header = XLogRecordHeader::decode(header);
    if header.tot_len as usize != bytes.len() {
        return Err(DecodeError::new(
            lsn,
            format!(
                "xl_tot_len is {} but the record has {} bytes",
                header.tot_len,
                bytes.len()
            ),
        ));
    }
    Ok(header)
}

/// An image header read but not located in the payload yet.
struct PendingImage {
    bimg_len: u16,
    hole_offset: u16,
    hole_length: u16,
    apply: bool,
    compression: ImageCompression,
}

/// Reads the fragment headers, then slices the payloads, into `out` (whatever it
/// held is replaced). Mirrors DecodeXLogRecord.
fn decode_body<D: RecordBytes>(
    lsn: Lsn,
    end_lsn: Lsn,
    header: XLogRecordHeader,
    bytes: D,
    out: &mut DecodedRecord<D>,
) -> Result<(), DecodeError> {
    let err = |detail: String| DecodeError::new(lsn, detail);
    let short = || err("record with invalid length".to_string());

    let mut headers = Cursor {
        bytes: &bytes,
        pos: SIZE_OF_XLOG_RECORD,
    };
    // The block references as their headers are read, their parts empty until the
    // payloads are located; each one's (image, data) payload lengths alongside.
    let blocks: &mut BlockRefs<D> = &mut out.blocks;
    blocks.clear();
    let mut payload_lens = [(0u16, 0u16); MAX_BLOCK_REFS];
    let mut main_data_len: u32 = 0;
    let mut origin = None;
    let mut toplevel_xid = None;
    let mut last_rel: Option<RelFileNode> = None;
    // Payload bytes announced so far. u64: a u32 main-data length plus block payloads
    // cannot overflow it (Postgres's uint32 could wrap; the comparison below is then
    // only stricter).
    let mut data_total: u64 = 0;

    // Bounded: every round reads at least one byte of the record.
    while headers.remaining() as u64 > data_total {
        let block_id = headers.u8().ok_or_else(short)?;
        match block_id {
            XLR_BLOCK_ID_DATA_SHORT => {
                main_data_len = u32::from(headers.u8().ok_or_else(short)?);
                data_total += u64::from(main_data_len);
                // By convention the main data header is the last one.
                break;
            }
            XLR_BLOCK_ID_DATA_LONG => {
                main_data_len = headers.u32().ok_or_else(short)?;
                data_total += u64::from(main_data_len);
                break;
            }
            XLR_BLOCK_ID_ORIGIN => origin = Some(headers.u16().ok_or_else(short)?),
            XLR_BLOCK_ID_TOPLEVEL_XID => toplevel_xid = Some(headers.u32().ok_or_else(short)?),
            0..=XLR_MAX_BLOCK_ID => {
                if let Some(last) = blocks.last()
                    && block_id <= last.block_id
                {
                    return Err(err(format!("out-of-order block_id {block_id}")));
                }
                let fork_flags = headers.u8().ok_or_else(short)?;
                let fork_number = fork_flags & BKPBLOCK_FORK_MASK;
                // Postgres trusts the fork number here; tarn's ForkNumber cannot hold an
                // invalid one, and redo would index by it.
                let fork = ForkNumber::from_u8(fork_number).ok_or_else(|| {
                    err(format!(
                        "invalid fork number {fork_number} in block {block_id}"
                    ))
                })?;
                let has_image = fork_flags & BKPBLOCK_HAS_IMAGE != 0;
                let has_data = fork_flags & BKPBLOCK_HAS_DATA != 0;
                let data_len = headers.u16().ok_or_else(short)?;
                if has_data && data_len == 0 {
                    return Err(err(
                        "BKPBLOCK_HAS_DATA set, but no data included".to_string()
                    ));
                }
                if !has_data && data_len != 0 {
                    return Err(err(format!(
                        "BKPBLOCK_HAS_DATA not set, but data length is {data_len}"
                    )));
                }
                data_total += u64::from(data_len);
                let (image, bimg_len) = if has_image {
                    let image = read_image_header(&mut headers, &err, short)?;
                    data_total += u64::from(image.bimg_len);
                    let located = BlockImage {
                        stored: D::default(),
                        hole_offset: image.hole_offset,
                        hole_length: image.hole_length,
                        apply: image.apply,
                        compression: image.compression,
                    };
                    (Some(located), image.bimg_len)
                } else {
                    (None, 0)
                };
                let rel = if fork_flags & BKPBLOCK_SAME_REL == 0 {
                    let rel = RelFileNode {
                        spc_node: headers.u32().ok_or_else(short)?,
                        db_node: headers.u32().ok_or_else(short)?,
                        rel_node: headers.u32().ok_or_else(short)?,
                    };
                    last_rel = Some(rel);
                    rel
                } else {
                    last_rel.ok_or_else(|| {
                        err("BKPBLOCK_SAME_REL set but no previous rel".to_string())
                    })?
                };
                let block = headers.u32().ok_or_else(short)?;
                payload_lens[blocks.len()] = (bimg_len, data_len);
                // Cannot fail: the id is above the last one (checked first, as
                // Postgres does) and at most XLR_MAX_BLOCK_ID.
                blocks
                    .push(BlockRef {
                        block_id,
                        rel,
                        fork,
                        block,
                        will_init: fork_flags & BKPBLOCK_WILL_INIT != 0,
                        image,
                        data: D::default(),
                    })
                    .map_err(|_| err(format!("out-of-order block_id {block_id}")))?;
            }
            _ => return Err(err(format!("invalid block_id {block_id}"))),
        }
    }
    if headers.remaining() as u64 != data_total {
        return Err(short());
    }

    // The payloads, in header order: each block's image then its data, then main data.
    // Their lengths add up to exactly the rest of the record (checked just above).
    let mut payload = headers.pos;
    let mut take = |len: u32| {
        let len = len as usize;
        let part = bytes.part(payload..payload + len);
        payload += len;
        part
    };
    for (block, &(bimg_len, data_len)) in blocks.slots_mut().iter_mut().zip(&payload_lens) {
        if let Some(image) = &mut block.image {
            image.stored = take(u32::from(bimg_len));
        }
        block.data = take(u32::from(data_len));
    }
    out.main_data = take(main_data_len);
    debug_assert_eq!(payload, bytes.len());
    out.lsn = lsn;
    out.end_lsn = end_lsn;
    out.xid = header.xid;
    out.prev = header.prev;
    out.info = header.info;
    out.rmid = header.rmid;
    out.total_len = header.tot_len;
    out.origin = origin;
    out.toplevel_xid = toplevel_xid;
    Ok(())
}

/// Reads an XLogRecordBlockImageHeader (and XLogRecordBlockCompressHeader) and checks
/// it as DecodeXLogRecord does, plus the hole fitting the page (which RestoreBlockImage
/// assumes).
fn read_image_header(
    headers: &mut Cursor<'_>,
    err: &impl Fn(String) -> DecodeError,
    short: impl Fn() -> DecodeError,
) -> Result<PendingImage, DecodeError> {
    let bimg_len = headers.u16().ok_or_else(&short)?;
    let hole_offset = headers.u16().ok_or_else(&short)?;
    let bimg_info = headers.u8().ok_or_else(&short)?;
    let has_hole = bimg_info & BKPIMAGE_HAS_HOLE != 0;
    let compressed = bimg_info & BKPIMAGE_COMPRESSED_MASK != 0;
    // Postgres computes BLCKSZ - bimg_len into a uint16, which wraps for a bimg_len
    // above BLCKSZ; computed wide, such a hole is out of the page and rejected below.
    let hole_length: i64 = if compressed {
        if has_hole {
            i64::from(headers.u16().ok_or_else(&short)?)
        } else {
            0
        }
    } else {
        BLCKSZ as i64 - i64::from(bimg_len)
    };

    if has_hole && (hole_offset == 0 || hole_length == 0 || usize::from(bimg_len) == BLCKSZ) {
        return Err(err(format!(
            "BKPIMAGE_HAS_HOLE set, but hole offset {hole_offset} length {hole_length} \
             block image length {bimg_len}"
        )));
    }
    if !has_hole && (hole_offset != 0 || hole_length != 0) {
        return Err(err(format!(
            "BKPIMAGE_HAS_HOLE not set, but hole offset {hole_offset} length {hole_length}"
        )));
    }
    if compressed && usize::from(bimg_len) == BLCKSZ {
        return Err(err(format!(
            "BKPIMAGE_COMPRESSED set, but block image length {bimg_len}"
        )));
    }
    if !has_hole && !compressed && usize::from(bimg_len) != BLCKSZ {
        return Err(err(format!(
            "neither BKPIMAGE_HAS_HOLE nor BKPIMAGE_COMPRESSED set, but block image length \
             is {bimg_len}"
        )));
    }
    // Not checked by Postgres (its RestoreBlockImage would copy out of bounds).
    if hole_length < 0 || i64::from(hole_offset) + hole_length > BLCKSZ as i64 {
        return Err(err(format!(
            "hole at offset {hole_offset} of {hole_length} bytes does not fit in a \
             {BLCKSZ}-byte page (block image length {bimg_len})"
        )));
    }
    // RestoreBlockImage tries the methods in this order when several bits are set.
    let compression = if bimg_info & BKPIMAGE_COMPRESS_PGLZ != 0 {
        ImageCompression::Pglz
    } else if bimg_info & BKPIMAGE_COMPRESS_LZ4 != 0 {
        ImageCompression::Lz4
    } else if bimg_info & BKPIMAGE_COMPRESS_ZSTD != 0 {
        ImageCompression::Zstd
    } else {
        ImageCompression::None
    };
    Ok(PendingImage {
        bimg_len,
        hole_offset,
        // In 0..=BLCKSZ, checked above.
        hole_length: hole_length as u16,
        apply: bimg_info & BKPIMAGE_APPLY != 0,
        compression,
    })
}

/// Reads fragment headers: little-endian, unaligned, never past the record.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let end = self.pos.checked_add(N)?;
        let field: [u8; N] = self.bytes.get(self.pos..end)?.try_into().ok()?;
        self.pos = end;
        Some(field)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take::<1>().map(|[byte]| byte)
    }

    fn u16(&mut self) -> Option<u16> {
        self.take().map(u16::from_le_bytes)
    }

    fn u32(&mut self) -> Option<u32> {
        self.take().map(u32::from_le_bytes)
    }
}
