//! WAL page headers (XLogPageHeaderData / XLogLongPageHeaderData, xlog_internal.h) and
//! their validation against the stream they belong to.
//!
//! Every XLOG_BLCKSZ page starts with a 24-byte header; the first page of each segment
//! has the 40-byte long form, which adds the system identifier, the segment size and the
//! page size. Layout (little-endian, offsets in bytes):
//!
//! | off | field            | notes                                             |
//! |-----|------------------|---------------------------------------------------|
//! | 0   | xlp_magic u16    | XLOG_PAGE_MAGIC                                   |
//! | 2   | xlp_info u16     | XLP_* flags                                       |
//! | 4   | xlp_tli u32      | timeline of the first record on the page         |
//! | 8   | xlp_pageaddr u64 | LSN of this page                                  |
//! | 16  | xlp_rem_len u32  | bytes of a continued record that follow the header|
//! | 20  | 4 bytes padding  | MAXALIGN to 24                                    |
//! | 24  | xlp_sysid u64    | long header only                                  |
//! | 32  | xlp_seg_size u32 | long header only                                  |
//! | 36  | xlp_xlog_blcksz u32 | long header only                               |

use crate::{Lsn, SystemId};

use super::segment::is_valid_segment_size;
use super::{WalFormatError, XLOG_BLCKSZ};

/// Page magic of PostgreSQL 15 WAL (XLOG_PAGE_MAGIC); changes with every WAL format
/// change, so it also pins the major version.
pub const XLOG_PAGE_MAGIC: u16 = 0xD110;

/// The page starts with the continuation of a record begun on an earlier page.
pub const XLP_FIRST_IS_CONTRECORD: u16 = 0x0001;
/// The header is the long form (always at the start of a segment).
pub const XLP_LONG_HEADER: u16 = 0x0002;
/// No online backup was running when the page was written; backup blocks in records
/// starting here may be removed.
pub const XLP_BKP_REMOVABLE: u16 = 0x0004;
/// A record that was incomplete when WAL ended (at a crash) was abandoned; this page
/// holds an XLOG_OVERWRITE_CONTRECORD instead of its continuation.
pub const XLP_FIRST_IS_OVERWRITE_CONTRECORD: u16 = 0x0008;
/// All defined flag bits; any other bit makes a header invalid.
pub const XLP_ALL_FLAGS: u16 = 0x000F;

/// SizeOfXLogShortPHD: MAXALIGN of the 20 bytes of fields.
pub const SIZE_OF_XLOG_SHORT_PHD: usize = 24;
/// SizeOfXLogLongPHD.
pub const SIZE_OF_XLOG_LONG_PHD: usize = 40;

/// The fields only a long page header has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LongPageHeader {
    pub system_id: SystemId,
    pub segment_size_bytes: u32,
    pub xlog_blcksz: u32,
}

/// A decoded WAL page header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageHeader {
    pub magic: u16,
    pub info: u16,
    pub timeline: u32,
    pub page_addr: Lsn,
    /// Bytes of the record continued from the previous page (0 when none).
    pub rem_len: u32,
    /// Present exactly when `info` has [`XLP_LONG_HEADER`].
    pub long: Option<LongPageHeader>,
}

impl PageHeader {
    /// Header size implied by the info bits (XLogPageHeaderSize).
    pub const fn size_for_info(info: u16) -> usize {
        if info & XLP_LONG_HEADER != 0 {
            SIZE_OF_XLOG_LONG_PHD
        } else {
            SIZE_OF_XLOG_SHORT_PHD
        }
    }

    /// Size of this header in bytes.
    pub const fn size(&self) -> usize {
        Self::size_for_info(self.info)
    }

    pub const fn is_contrecord(&self) -> bool {
        self.info & XLP_FIRST_IS_CONTRECORD != 0
    }

    pub const fn is_overwrite_contrecord(&self) -> bool {
        self.info & XLP_FIRST_IS_OVERWRITE_CONTRECORD != 0
    }

    /// Decodes the header at the start of `bytes`. Returns `None` when `bytes` is shorter
    /// than the header (24 bytes, or 40 when the info bits say it is long). Performs no
    /// validation: see [`PageValidator`].
    pub fn decode(bytes: &[u8]) -> Option<PageHeader> {
        if bytes.len() < SIZE_OF_XLOG_SHORT_PHD {
            return None;
        }
        let info = le_u16(bytes, 2);
        let long = if info & XLP_LONG_HEADER != 0 {
            if bytes.len() < SIZE_OF_XLOG_LONG_PHD {
                return None;
            }
            Some(LongPageHeader {
                system_id: SystemId(le_u64(bytes, 24)),
                segment_size_bytes: le_u32(bytes, 32),
                xlog_blcksz: le_u32(bytes, 36),
            })
        } else {
            None
        };
        Some(PageHeader {
            magic: le_u16(bytes, 0),
            info,
            timeline: le_u32(bytes, 4),
            page_addr: Lsn(le_u64(bytes, 8)),
            rem_len: le_u32(bytes, 16),
            long,
        })
    }

    /// Writes the header into the first [`size`](Self::size) bytes of `out`, padding
    /// included (zeroed). `long` must be present exactly when `info` says so; a missing
    /// long part is written as zeros.
    pub fn encode(&self, out: &mut [u8]) {
        let out = &mut out[..self.size()];
        out.fill(0);
        out[0..2].copy_from_slice(&self.magic.to_le_bytes());
        out[2..4].copy_from_slice(&self.info.to_le_bytes());
        out[4..8].copy_from_slice(&self.timeline.to_le_bytes());
        out[8..16].copy_from_slice(&self.page_addr.0.to_le_bytes());
        out[16..20].copy_from_slice(&self.rem_len.to_le_bytes());
        if let (Some(long), true) = (self.long, out.len() == SIZE_OF_XLOG_LONG_PHD) {
            out[24..32].copy_from_slice(&long.system_id.0.to_le_bytes());
            out[32..36].copy_from_slice(&long.segment_size_bytes.to_le_bytes());
            out[36..40].copy_from_slice(&long.xlog_blcksz.to_le_bytes());
        }
    }
}

/// What page headers must agree with: facts about the WAL stream known before reading
/// it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalStreamParams {
    /// `wal_segment_size` of the cluster; long headers must declare it.
    pub segment_size_bytes: u64,
    /// The cluster's system identifier when known; long headers must then carry it.
    pub system_id: Option<SystemId>,
}

impl WalStreamParams {
    pub fn new(
        segment_size_bytes: u64,
        system_id: Option<SystemId>,
    ) -> Result<Self, WalFormatError> {
        let params = WalStreamParams {
            segment_size_bytes,
            system_id,
        };
        params.validate()?;
        Ok(params)
    }

    pub(crate) fn validate(&self) -> Result<(), WalFormatError> {
        if is_valid_segment_size(self.segment_size_bytes) {
            Ok(())
        } else {
            Err(WalFormatError::InvalidSegmentSize {
                segment_size_bytes: self.segment_size_bytes,
            })
        }
    }
}

/// Validates successive page headers of one WAL stream; remembers the last page's
/// timeline, which must never go backwards.
#[derive(Clone, Debug)]
pub struct PageValidator {
    params: WalStreamParams,
    /// Last validated page and its timeline (latestPagePtr / latestPageTLI).
    latest_page: Option<(Lsn, u32)>,
}

impl PageValidator {
    pub fn new(params: WalStreamParams) -> Result<Self, WalFormatError> {
        params.validate()?;
        Ok(PageValidator {
            params,
            latest_page: None,
        })
    }

    pub fn params(&self) -> &WalStreamParams {
        &self.params
    }

    /// Checks `header` as the header of the page at `page` (which must be page-aligned).
    /// Mirrors XLogReaderValidatePageHeader (xlogreader.c), in the same order: magic,
    /// info bits, long-header fields (system id only when known) or a long header's
    /// absence at a segment start, pageaddr, then the timeline sequence.
    pub fn validate(&mut self, page: Lsn, header: &PageHeader) -> Result<(), WalFormatError> {
        debug_assert_eq!(page.0 % XLOG_BLCKSZ, 0, "page LSN must be page-aligned");
        if header.magic != XLOG_PAGE_MAGIC {
            return Err(WalFormatError::PageMagic {
                page,
                magic: header.magic,
            });
        }
        if header.info & !XLP_ALL_FLAGS != 0 {
            return Err(WalFormatError::PageInfoBits {
                page,
                info: header.info,
            });
        }
        match header.long {
            Some(long) => {
                match self.params.system_id {
                    Some(expected) if long.system_id != expected => {
                        return Err(WalFormatError::SystemIdMismatch {
                            page,
                            found: long.system_id,
                            expected,
                        });
                    }
                    _ => {}
                }
                if u64::from(long.segment_size_bytes) != self.params.segment_size_bytes {
                    return Err(WalFormatError::SegmentSizeMismatch {
                        page,
                        found: long.segment_size_bytes,
                        expected: self.params.segment_size_bytes,
                    });
                }
                if u64::from(long.xlog_blcksz) != XLOG_BLCKSZ {
                    return Err(WalFormatError::BlockSizeMismatch {
                        page,
                        found: long.xlog_blcksz,
                    });
                }
            }
            None if page.segment_offset(self.params.segment_size_bytes) == 0 => {
                return Err(WalFormatError::MissingLongHeader {
                    page,
                    info: header.info,
                });
            }
            None => {}
        }
        if header.page_addr != page {
            return Err(WalFormatError::PageAddress {
                page,
                found: header.page_addr,
            });
        }
        // Pages re-read at or before the last one are not checked, as in Postgres.
        match self.latest_page {
            Some((latest_page, latest_tli))
                if page > latest_page && header.timeline < latest_tli =>
            {
                return Err(WalFormatError::TimelineBackwards {
                    page,
                    found: header.timeline,
                    previous: latest_tli,
                });
            }
            _ => {}
        }
        self.latest_page = Some((page, header.timeline));
        Ok(())
    }
}

fn le_u16(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}

fn le_u32(bytes: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(b)
}

fn le_u64(bytes: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEG: u64 = 1 << 20;

    fn params() -> WalStreamParams {
        WalStreamParams {
            segment_size_bytes: SEG,
            system_id: Some(SystemId(42)),
        }
    }

    fn long_header(page: Lsn) -> PageHeader {
        PageHeader {
            magic: XLOG_PAGE_MAGIC,
            info: XLP_LONG_HEADER | XLP_BKP_REMOVABLE,
            timeline: 1,
            page_addr: page,
            rem_len: 0,
            long: Some(LongPageHeader {
                system_id: SystemId(42),
                segment_size_bytes: SEG as u32,
                xlog_blcksz: 8192,
            }),
        }
    }

    fn short_header(page: Lsn) -> PageHeader {
        PageHeader {
            magic: XLOG_PAGE_MAGIC,
            info: XLP_FIRST_IS_CONTRECORD,
            timeline: 1,
            page_addr: page,
            rem_len: 100,
            long: None,
        }
    }

    #[test]
    fn encode_decode_round_trip() {
        for header in [long_header(Lsn(SEG)), short_header(Lsn(SEG + 8192))] {
            let mut bytes = [0xAAu8; 40];
            header.encode(&mut bytes);
            assert_eq!(PageHeader::decode(&bytes[..header.size()]), Some(header));
            assert_eq!(&bytes[20..24], &[0; 4], "padding is zeroed");
            assert_eq!(PageHeader::decode(&bytes[..header.size() - 1]), None);
        }
    }

    #[test]
    fn valid_headers_pass() {
        let mut v = PageValidator::new(params()).expect("params");
        v.validate(Lsn(SEG), &long_header(Lsn(SEG))).expect("long");
        v.validate(Lsn(SEG + 8192), &short_header(Lsn(SEG + 8192)))
            .expect("short");
        // Without a known system id any long header's sysid is accepted.
        let mut v = PageValidator::new(WalStreamParams {
            system_id: None,
            ..params()
        })
        .expect("params");
        let mut h = long_header(Lsn(SEG));
        h.long = Some(LongPageHeader {
            system_id: SystemId(7),
            ..h.long.expect("long")
        });
        v.validate(Lsn(SEG), &h).expect("unknown sysid");
    }

    #[test]
    fn each_check_names_the_page() {
        let page = Lsn(SEG);
        let check = |h: PageHeader| {
            PageValidator::new(params())
                .expect("params")
                .validate(page, &h)
        };
        let mut h = long_header(page);
        h.magic = 0xD10D; // PG14
        assert_eq!(
            check(h),
            Err(WalFormatError::PageMagic {
                page,
                magic: 0xD10D
            })
        );
        let mut h = long_header(page);
        h.info |= 0x10;
        assert!(matches!(check(h), Err(WalFormatError::PageInfoBits { .. })));
        let mut h = long_header(page);
        h.long = Some(LongPageHeader {
            system_id: SystemId(1),
            ..h.long.expect("long")
        });
        assert!(matches!(
            check(h),
            Err(WalFormatError::SystemIdMismatch { .. })
        ));
        let mut h = long_header(page);
        h.long = Some(LongPageHeader {
            segment_size_bytes: 16 << 20,
            ..h.long.expect("long")
        });
        assert!(matches!(
            check(h),
            Err(WalFormatError::SegmentSizeMismatch { .. })
        ));
        let mut h = long_header(page);
        h.long = Some(LongPageHeader {
            xlog_blcksz: 16384,
            ..h.long.expect("long")
        });
        assert!(matches!(
            check(h),
            Err(WalFormatError::BlockSizeMismatch { .. })
        ));
        let mut h = long_header(page);
        h.page_addr = Lsn(0);
        assert_eq!(
            check(h),
            Err(WalFormatError::PageAddress {
                page,
                found: Lsn(0)
            })
        );
        assert!(matches!(
            check(short_header(page)),
            Err(WalFormatError::MissingLongHeader { .. })
        ));
    }

    #[test]
    fn timeline_may_not_go_backwards() {
        let mut v = PageValidator::new(params()).expect("params");
        let mut h = long_header(Lsn(SEG));
        h.timeline = 2;
        v.validate(Lsn(SEG), &h).expect("tli 2");
        let next = Lsn(SEG + 8192);
        assert_eq!(
            v.validate(next, &short_header(next)),
            Err(WalFormatError::TimelineBackwards {
                page: next,
                found: 1,
                previous: 2
            })
        );
        let mut h = short_header(next);
        h.timeline = 3;
        v.validate(next, &h).expect("tli may go up");
    }
}
