//! The GetPage@LSN wire protocol: length-prefixed binary frames over TCP.
//!
//! Every frame is `magic (u32) | kind (u8) | body length (u32) | body`, little-endian.
//! A client may pipeline requests; the server answers each, in order, with exactly one
//! response. Bodies are decoded strictly (a wrong length is an error naming the kind),
//! so a malformed request gets an error response instead of a guess. A frame whose
//! magic is wrong cannot be resynchronised: the server answers it with an error and
//! closes the connection.
//!
//! Requests (`kind`, body); every request but ListTimelines names its timeline
//! (`timeline u128`, first):
//! - `1` GetPage, `2` RelSize, `3` RelExists: `timeline u128 | spc u32 | db u32 |
//!   rel u32 | fork u8 | blk u32 | lsn u64` (41 bytes; `blk` is ignored but for
//!   GetPage). `lsn == 0` means "the newest LSN ingested".
//! - `4` Status: `timeline u128`.
//! - `5` CreateBranch: `timeline u128 | branch u128 | lsn u64` — a new timeline
//!   `branch` from `timeline` at `lsn` (0: the newest ingested); waits, as a read does,
//!   until the parent's ingest reaches `lsn`. Answered with `0x85` BranchCreated
//!   (`lsn u64`, the branch point).
//! - `6` ListTimelines: empty body. Answered with `0x86` Timelines: `count u32`, then
//!   per timeline `id u128 | has_ancestor u8 | ancestor u128 | branch lsn u64`.
//! - `7` Basebackup: `timeline u128 | lsn u64` (0: the newest ingested) — a tar of a
//!   data directory that vanilla Postgres 15 boots at `lsn` (see
//!   [`crate::basebackup`]); waits, as a read does, for ingest to reach `lsn`.
//!   Answered with any number of `0x87` BasebackupChunk frames (the tar's bytes, in
//!   order), then `0x88` BasebackupDone (`lsn u64`, the backup's LSN) or an Error.
//!
//! Responses: `0x81` Page (8192 bytes), `0x82` Size (`u32` blocks), `0x83` Exists
//! (`u8` 0/1), `0x84` Status (`last_ingested_lsn u64 | durable_lsn u64 |` the
//! deltas replayed per GetPage: `threshold u32 | gets u64 | deltas_replayed u64 |
//! max_deltas u32 | over_threshold u64 | store_nanos u64 | replay_nanos u64 |`
//! [`DELTA_BUCKETS`] `u64` counts by powers of two, see [`ReconstructMetrics`]),
//! `0xFF` Error (`code u8 | UTF-8 text`).

use std::io::{self, Read, Write};

use tarn_wal::decode::{ForkNumber, RelFileNode};
use tarn_wal::{Lsn, TimelineId};

use crate::BLCKSZ;
use crate::reconstruct::{DELTA_BUCKETS, ReconstructMetrics};

/// "TGP2": identifies a tarn GetPage frame (version 2: requests name a timeline).
pub const SERVICE_MAGIC: u32 = 0x3250_4754;
pub const FRAME_HEADER_BYTES: usize = 9;
/// The largest body any frame has (a page); anything larger is refused unread.
pub const MAX_FRAME_BODY_BYTES: usize = 64 * 1024;
const TIMELINE_BYTES: usize = 16;
const REL_REQUEST_BODY_BYTES: usize = TIMELINE_BYTES + 25;
const CREATE_BRANCH_BODY_BYTES: usize = 2 * TIMELINE_BYTES + 8;
const TIMELINE_INFO_BYTES: usize = 2 * TIMELINE_BYTES + 1 + 8;
const STATUS_BODY_BYTES: usize = 16 + 4 + 8 + 8 + 4 + 8 + 8 + 8 + 8 * DELTA_BUCKETS;

const KIND_GET_PAGE: u8 = 1;
const KIND_REL_SIZE: u8 = 2;
const KIND_REL_EXISTS: u8 = 3;
const KIND_STATUS: u8 = 4;
const KIND_CREATE_BRANCH: u8 = 5;
const KIND_LIST_TIMELINES: u8 = 6;
const KIND_BASEBACKUP: u8 = 7;
const KIND_PAGE: u8 = 0x81;
const KIND_SIZE: u8 = 0x82;
const KIND_EXISTS: u8 = 0x83;
const KIND_STATUS_REPLY: u8 = 0x84;
const KIND_BRANCH_CREATED: u8 = 0x85;
const KIND_TIMELINES: u8 = 0x86;
const KIND_BASEBACKUP_CHUNK: u8 = 0x87;
const KIND_BASEBACKUP_DONE: u8 = 0x88;
/// The most tar bytes one BasebackupChunk carries.
pub const BASEBACKUP_CHUNK_BYTES: usize = 64 * 1024 - 64;
const BASEBACKUP_BODY_BYTES: usize = TIMELINE_BYTES + 8;
const KIND_ERROR: u8 = 0xFF;

/// A relation fork at an LSN, and a block of it for GetPage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RelRequest {
    pub timeline: TimelineId,
    pub rel: RelFileNode,
    pub fork: ForkNumber,
    pub blk: u32,
    /// `Lsn::INVALID`: the newest ingested LSN.
    pub lsn: Lsn,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    GetPage(RelRequest),
    RelSize(RelRequest),
    RelExists(RelRequest),
    Status {
        timeline: TimelineId,
    },
    /// A new timeline `branch` from `timeline` at `lsn` (`Lsn::INVALID`: the newest
    /// ingested).
    CreateBranch {
        timeline: TimelineId,
        branch: TimelineId,
        lsn: Lsn,
    },
    ListTimelines,
    /// A tar of a data directory at `lsn` (`Lsn::INVALID`: the newest ingested).
    Basebackup {
        timeline: TimelineId,
        lsn: Lsn,
    },
}

impl Request {
    /// The LSN the request must wait for, if any.
    pub fn lsn(&self) -> Option<Lsn> {
        match self {
            Request::GetPage(r) | Request::RelSize(r) | Request::RelExists(r) => Some(r.lsn),
            Request::CreateBranch { lsn, .. } | Request::Basebackup { lsn, .. } => Some(*lsn),
            Request::Status { .. } | Request::ListTimelines => None,
        }
    }

    /// The timeline the request is about (the parent for CreateBranch).
    pub fn timeline(&self) -> Option<TimelineId> {
        match self {
            Request::GetPage(r) | Request::RelSize(r) | Request::RelExists(r) => Some(r.timeline),
            Request::Status { timeline }
            | Request::CreateBranch { timeline, .. }
            | Request::Basebackup { timeline, .. } => Some(*timeline),
            Request::ListTimelines => None,
        }
    }
}

/// A timeline as ListTimelines reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimelineInfo {
    pub id: TimelineId,
    /// `(parent, branch LSN)` of a branch.
    pub ancestor: Option<(TimelineId, Lsn)>,
}

/// Why a request failed, as carried on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ErrorCode {
    /// The frame or body was malformed.
    BadRequest = 1,
    /// Ingest did not reach the requested LSN in time.
    Timeout = 2,
    RelationNotFound = 3,
    /// GetPage of a block at or beyond the relation's size.
    BeyondEof = 4,
    /// Anything else (a store or redo failure); the text says what.
    Internal = 5,
    /// The server has too much to do; retry later.
    Overloaded = 6,
    /// No such timeline on this pageserver.
    TimelineNotFound = 7,
}

impl Response {
    /// Whether more responses to the same request follow this one.
    pub fn continues(&self) -> bool {
        matches!(self, Response::BasebackupChunk(_))
    }
}

impl ErrorCode {
    fn from_u8(v: u8) -> Option<ErrorCode> {
        Some(match v {
            1 => ErrorCode::BadRequest,
            2 => ErrorCode::Timeout,
            3 => ErrorCode::RelationNotFound,
            4 => ErrorCode::BeyondEof,
            5 => ErrorCode::Internal,
            6 => ErrorCode::Overloaded,
            7 => ErrorCode::TimelineNotFound,
            _ => return None,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    Page(Box<[u8; BLCKSZ]>),
    Size(u32),
    Exists(bool),
    Status {
        last_ingested_lsn: Lsn,
        durable_lsn: Lsn,
        /// Deltas replayed per GetPage since the server started.
        getpage: GetPageStats,
    },
    BranchCreated {
        lsn: Lsn,
    },
    Timelines(Vec<TimelineInfo>),
    /// The next piece of a basebackup's tar.
    BasebackupChunk(bytes::Bytes),
    /// The basebackup is complete; it holds the state at `lsn`.
    BasebackupDone {
        lsn: Lsn,
    },
    Error {
        code: ErrorCode,
        message: String,
    },
}

/// The distribution of deltas replayed per GetPage, as the status reports it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GetPageStats {
    /// The pushdown threshold the server's ingest keeps chains under.
    pub threshold: u32,
    pub metrics: ReconstructMetrics,
}

#[derive(Debug, thiserror::Error)]
pub enum ServiceProtocolError {
    #[error("bad frame magic {found:#010x} (expected {SERVICE_MAGIC:#010x})")]
    BadMagic { found: u32 },
    #[error("frame body of {len} bytes exceeds the limit of {MAX_FRAME_BODY_BYTES}")]
    TooLarge { len: usize },
    #[error("unknown frame kind {kind:#04x}")]
    UnknownKind { kind: u8 },
    #[error("frame kind {kind:#04x} needs a {expected}-byte body, got {len}")]
    BadLength {
        kind: u8,
        expected: usize,
        len: usize,
    },
    #[error("unknown fork number {fork}")]
    BadFork { fork: u8 },
    #[error("timeline list of {count} entries does not fit a {len}-byte body")]
    BadTimelineCount { count: u32, len: usize },
    #[error("unknown error code {code}")]
    BadErrorCode { code: u8 },
    #[error("connection closed by peer")]
    Closed,
    #[error("reading a frame failed: {0}")]
    Io(#[from] io::Error),
}

impl ServiceProtocolError {
    /// After this error the byte stream cannot be trusted to be at a frame boundary.
    pub fn loses_framing(&self) -> bool {
        matches!(
            self,
            ServiceProtocolError::BadMagic { .. }
                | ServiceProtocolError::TooLarge { .. }
                | ServiceProtocolError::Closed
                | ServiceProtocolError::Io(_)
        )
    }
}

fn frame(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(FRAME_HEADER_BYTES + body.len());
    out.extend_from_slice(&SERVICE_MAGIC.to_le_bytes());
    out.push(kind);
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(body);
    out
}

pub fn encode_request(req: &Request) -> Vec<u8> {
    let (kind, r) = match req {
        Request::GetPage(r) => (KIND_GET_PAGE, r),
        Request::RelSize(r) => (KIND_REL_SIZE, r),
        Request::RelExists(r) => (KIND_REL_EXISTS, r),
        Request::Status { timeline } => return frame(KIND_STATUS, &timeline.0.to_le_bytes()),
        Request::CreateBranch {
            timeline,
            branch,
            lsn,
        } => {
            let mut body = Vec::with_capacity(CREATE_BRANCH_BODY_BYTES);
            body.extend_from_slice(&timeline.0.to_le_bytes());
            body.extend_from_slice(&branch.0.to_le_bytes());
            body.extend_from_slice(&lsn.0.to_le_bytes());
            return frame(KIND_CREATE_BRANCH, &body);
        }
        Request::ListTimelines => return frame(KIND_LIST_TIMELINES, &[]),
        Request::Basebackup { timeline, lsn } => {
            let mut body = Vec::with_capacity(BASEBACKUP_BODY_BYTES);
            body.extend_from_slice(&timeline.0.to_le_bytes());
            body.extend_from_slice(&lsn.0.to_le_bytes());
            return frame(KIND_BASEBACKUP, &body);
        }
    };
    let mut body = Vec::with_capacity(REL_REQUEST_BODY_BYTES);
    body.extend_from_slice(&r.timeline.0.to_le_bytes());
    body.extend_from_slice(&r.rel.spc_node.to_le_bytes());
    body.extend_from_slice(&r.rel.db_node.to_le_bytes());
    body.extend_from_slice(&r.rel.rel_node.to_le_bytes());
    body.push(r.fork as u8);
    body.extend_from_slice(&r.blk.to_le_bytes());
    body.extend_from_slice(&r.lsn.0.to_le_bytes());
    frame(kind, &body)
}

pub fn encode_response(resp: &Response) -> Vec<u8> {
    match resp {
        Response::Page(page) => frame(KIND_PAGE, &page[..]),
        Response::Size(n) => frame(KIND_SIZE, &n.to_le_bytes()),
        Response::Exists(b) => frame(KIND_EXISTS, &[u8::from(*b)]),
        Response::Status {
            last_ingested_lsn,
            durable_lsn,
            getpage,
        } => {
            let m = &getpage.metrics;
            let mut body = Vec::with_capacity(STATUS_BODY_BYTES);
            body.extend_from_slice(&last_ingested_lsn.0.to_le_bytes());
            body.extend_from_slice(&durable_lsn.0.to_le_bytes());
            body.extend_from_slice(&getpage.threshold.to_le_bytes());
            body.extend_from_slice(&m.gets.to_le_bytes());
            body.extend_from_slice(&m.deltas_replayed.to_le_bytes());
            body.extend_from_slice(&m.max_deltas.to_le_bytes());
            body.extend_from_slice(&m.over_threshold.to_le_bytes());
            body.extend_from_slice(&m.store_nanos.to_le_bytes());
            body.extend_from_slice(&m.replay_nanos.to_le_bytes());
            for count in &m.histogram {
                body.extend_from_slice(&count.to_le_bytes());
            }
            frame(KIND_STATUS_REPLY, &body)
        }
        Response::BranchCreated { lsn } => frame(KIND_BRANCH_CREATED, &lsn.0.to_le_bytes()),
        Response::BasebackupChunk(bytes) => frame(KIND_BASEBACKUP_CHUNK, bytes),
        Response::BasebackupDone { lsn } => frame(KIND_BASEBACKUP_DONE, &lsn.0.to_le_bytes()),
        Response::Timelines(timelines) => {
            let mut body = Vec::with_capacity(4 + TIMELINE_INFO_BYTES * timelines.len());
            body.extend_from_slice(&(timelines.len() as u32).to_le_bytes());
            for info in timelines {
                let (parent, lsn) = info.ancestor.unwrap_or((TimelineId(0), Lsn(0)));
                body.extend_from_slice(&info.id.0.to_le_bytes());
                body.push(u8::from(info.ancestor.is_some()));
                body.extend_from_slice(&parent.0.to_le_bytes());
                body.extend_from_slice(&lsn.0.to_le_bytes());
            }
            frame(KIND_TIMELINES, &body)
        }
        Response::Error { code, message } => {
            let mut body = vec![*code as u8];
            body.extend_from_slice(message.as_bytes());
            frame(KIND_ERROR, &body)
        }
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

fn u128_at(b: &[u8], at: usize) -> u128 {
    let mut v = [0u8; 16];
    v.copy_from_slice(&b[at..at + 16]);
    u128::from_le_bytes(v)
}

fn expect_len(kind: u8, body: &[u8], expected: usize) -> Result<(), ServiceProtocolError> {
    if body.len() != expected {
        return Err(ServiceProtocolError::BadLength {
            kind,
            expected,
            len: body.len(),
        });
    }
    Ok(())
}

pub fn decode_request(kind: u8, body: &[u8]) -> Result<Request, ServiceProtocolError> {
    match kind {
        KIND_STATUS => {
            expect_len(kind, body, TIMELINE_BYTES)?;
            return Ok(Request::Status {
                timeline: TimelineId(u128_at(body, 0)),
            });
        }
        KIND_CREATE_BRANCH => {
            expect_len(kind, body, CREATE_BRANCH_BODY_BYTES)?;
            return Ok(Request::CreateBranch {
                timeline: TimelineId(u128_at(body, 0)),
                branch: TimelineId(u128_at(body, 16)),
                lsn: Lsn(u64_at(body, 32)),
            });
        }
        KIND_LIST_TIMELINES => {
            expect_len(kind, body, 0)?;
            return Ok(Request::ListTimelines);
        }
        KIND_BASEBACKUP => {
            expect_len(kind, body, BASEBACKUP_BODY_BYTES)?;
            return Ok(Request::Basebackup {
                timeline: TimelineId(u128_at(body, 0)),
                lsn: Lsn(u64_at(body, 16)),
            });
        }
        KIND_GET_PAGE | KIND_REL_SIZE | KIND_REL_EXISTS => {}
        _ => return Err(ServiceProtocolError::UnknownKind { kind }),
    }
    expect_len(kind, body, REL_REQUEST_BODY_BYTES)?;
    let rel = &body[TIMELINE_BYTES..];
    let fork =
        ForkNumber::from_u8(rel[12]).ok_or(ServiceProtocolError::BadFork { fork: rel[12] })?;
    let r = RelRequest {
        timeline: TimelineId(u128_at(body, 0)),
        rel: RelFileNode {
            spc_node: u32_at(rel, 0),
            db_node: u32_at(rel, 4),
            rel_node: u32_at(rel, 8),
        },
        fork,
        blk: u32_at(rel, 13),
        lsn: Lsn(u64_at(rel, 17)),
    };
    Ok(match kind {
        KIND_GET_PAGE => Request::GetPage(r),
        KIND_REL_SIZE => Request::RelSize(r),
        _ => Request::RelExists(r),
    })
}

pub fn decode_response(kind: u8, body: &[u8]) -> Result<Response, ServiceProtocolError> {
    match kind {
        KIND_PAGE => {
            expect_len(kind, body, BLCKSZ)?;
            let mut page = Box::new([0u8; BLCKSZ]);
            page.copy_from_slice(body);
            Ok(Response::Page(page))
        }
        KIND_SIZE => {
            expect_len(kind, body, 4)?;
            Ok(Response::Size(u32_at(body, 0)))
        }
        KIND_EXISTS => {
            expect_len(kind, body, 1)?;
            Ok(Response::Exists(body[0] != 0))
        }
        KIND_STATUS_REPLY => {
            expect_len(kind, body, STATUS_BODY_BYTES)?;
            let mut histogram = [0u64; DELTA_BUCKETS];
            for (bucket, count) in histogram.iter_mut().enumerate() {
                *count = u64_at(body, 64 + 8 * bucket);
            }
            Ok(Response::Status {
                last_ingested_lsn: Lsn(u64_at(body, 0)),
                durable_lsn: Lsn(u64_at(body, 8)),
                getpage: GetPageStats {
                    threshold: u32_at(body, 16),
                    metrics: ReconstructMetrics {
                        gets: u64_at(body, 20),
                        deltas_replayed: u64_at(body, 28),
                        max_deltas: u32_at(body, 36),
                        over_threshold: u64_at(body, 40),
                        store_nanos: u64_at(body, 48),
                        replay_nanos: u64_at(body, 56),
                        histogram,
                    },
                },
            })
        }
        KIND_BASEBACKUP_CHUNK => Ok(Response::BasebackupChunk(bytes::Bytes::copy_from_slice(
            body,
        ))),
        KIND_BASEBACKUP_DONE => {
            expect_len(kind, body, 8)?;
            Ok(Response::BasebackupDone {
                lsn: Lsn(u64_at(body, 0)),
            })
        }
        KIND_BRANCH_CREATED => {
            expect_len(kind, body, 8)?;
            Ok(Response::BranchCreated {
                lsn: Lsn(u64_at(body, 0)),
            })
        }
        KIND_TIMELINES => {
            if body.len() < 4 {
                return Err(ServiceProtocolError::BadLength {
                    kind,
                    expected: 4,
                    len: body.len(),
                });
            }
            let count = u32_at(body, 0);
            if (body.len() - 4) != count as usize * TIMELINE_INFO_BYTES {
                return Err(ServiceProtocolError::BadTimelineCount {
                    count,
                    len: body.len(),
                });
            }
            let timelines = body[4..]
                .chunks_exact(TIMELINE_INFO_BYTES)
                .map(|entry| TimelineInfo {
                    id: TimelineId(u128_at(entry, 0)),
                    ancestor: (entry[16] != 0)
                        .then(|| (TimelineId(u128_at(entry, 17)), Lsn(u64_at(entry, 33)))),
                })
                .collect();
            Ok(Response::Timelines(timelines))
        }
        KIND_ERROR => {
            let (&code, text) = body.split_first().ok_or(ServiceProtocolError::BadLength {
                kind,
                expected: 1,
                len: 0,
            })?;
            let code =
                ErrorCode::from_u8(code).ok_or(ServiceProtocolError::BadErrorCode { code })?;
            Ok(Response::Error {
                code,
                message: String::from_utf8_lossy(text).into_owned(),
            })
        }
        kind => Err(ServiceProtocolError::UnknownKind { kind }),
    }
}

/// Reads one frame's kind and body. [`ServiceProtocolError::Closed`] if the stream
/// ended cleanly before a frame began.
pub fn read_frame(r: &mut impl Read) -> Result<(u8, Vec<u8>), ServiceProtocolError> {
    let mut header = [0u8; FRAME_HEADER_BYTES];
    let mut got = 0;
    while got < header.len() {
        match r.read(&mut header[got..]) {
            Ok(0) if got == 0 => return Err(ServiceProtocolError::Closed),
            Ok(0) => {
                return Err(ServiceProtocolError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed inside a frame header",
                )));
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let magic = u32_at(&header, 0);
    if magic != SERVICE_MAGIC {
        return Err(ServiceProtocolError::BadMagic { found: magic });
    }
    let kind = header[4];
    let len = u32_at(&header, 5) as usize;
    if len > MAX_FRAME_BODY_BYTES {
        return Err(ServiceProtocolError::TooLarge { len });
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    Ok((kind, body))
}

pub fn write_request(w: &mut impl Write, req: &Request) -> io::Result<()> {
    w.write_all(&encode_request(req))
}

pub fn read_response(r: &mut impl Read) -> Result<Response, ServiceProtocolError> {
    let (kind, body) = read_frame(r)?;
    decode_response(kind, &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel_request() -> RelRequest {
        RelRequest {
            timeline: TimelineId(0xABCD_0123_4567_89EF_0011_2233_4455_6677),
            rel: RelFileNode {
                spc_node: 1663,
                db_node: 5,
                rel_node: 16384,
            },
            fork: ForkNumber::VisibilityMap,
            blk: 7,
            lsn: Lsn(0x1234_5678),
        }
    }

    #[test]
    fn requests_round_trip() {
        for req in [
            Request::GetPage(rel_request()),
            Request::RelSize(rel_request()),
            Request::RelExists(rel_request()),
            Request::Status {
                timeline: TimelineId(7),
            },
            Request::CreateBranch {
                timeline: TimelineId(7),
                branch: TimelineId(u128::MAX),
                lsn: Lsn(0x1_0000_0028),
            },
            Request::ListTimelines,
            Request::Basebackup {
                timeline: TimelineId(3),
                lsn: Lsn(0x2_0000_0100),
            },
        ] {
            let bytes = encode_request(&req);
            let (kind, body) = read_frame(&mut &bytes[..]).expect("frame");
            assert_eq!(decode_request(kind, &body).expect("decode"), req);
        }
    }

    #[test]
    fn responses_round_trip() {
        let mut page = Box::new([0u8; BLCKSZ]);
        page[100] = 9;
        for resp in [
            Response::Page(page),
            Response::Size(42),
            Response::Exists(true),
            Response::Status {
                last_ingested_lsn: Lsn(10),
                durable_lsn: Lsn(5),
                getpage: GetPageStats {
                    threshold: 16,
                    metrics: ReconstructMetrics {
                        gets: 7,
                        deltas_replayed: 40,
                        max_deltas: 17,
                        histogram: [1, 1, 0, 0, 3, 2, 0, 0, 0, 0, 0, u64::MAX],
                        over_threshold: 1,
                        store_nanos: 123,
                        replay_nanos: 456,
                    },
                },
            },
            Response::BranchCreated { lsn: Lsn(99) },
            Response::BasebackupChunk(bytes::Bytes::from_static(b"ustar")),
            Response::BasebackupDone { lsn: Lsn(0x40) },
            Response::Timelines(vec![]),
            Response::Timelines(vec![
                TimelineInfo {
                    id: TimelineId(1),
                    ancestor: None,
                },
                TimelineInfo {
                    id: TimelineId(2),
                    ancestor: Some((TimelineId(1), Lsn(0x40))),
                },
            ]),
            Response::Error {
                code: ErrorCode::Timeout,
                message: "late".into(),
            },
            Response::Error {
                code: ErrorCode::TimelineNotFound,
                message: "no".into(),
            },
        ] {
            let bytes = encode_response(&resp);
            assert_eq!(read_response(&mut &bytes[..]).expect("decode"), resp);
        }
    }

    #[test]
    fn malformed_frames_are_errors() {
        let mut bytes = encode_request(&Request::GetPage(rel_request()));
        bytes[0] ^= 1;
        assert!(matches!(
            read_frame(&mut &bytes[..]),
            Err(ServiceProtocolError::BadMagic { .. })
        ));
        let bytes = frame(KIND_GET_PAGE, &[0; 3]);
        let (kind, body) = read_frame(&mut &bytes[..]).expect("frame");
        assert!(matches!(
            decode_request(kind, &body),
            Err(ServiceProtocolError::BadLength { .. })
        ));
        let mut body = vec![0u8; REL_REQUEST_BODY_BYTES];
        body[TIMELINE_BYTES + 12] = 9;
        assert!(matches!(
            decode_request(KIND_GET_PAGE, &body),
            Err(ServiceProtocolError::BadFork { fork: 9 })
        ));
        assert!(matches!(
            decode_request(0x42, &[]),
            Err(ServiceProtocolError::UnknownKind { kind: 0x42 })
        ));
        let mut short = encode_response(&Response::Timelines(vec![TimelineInfo {
            id: TimelineId(1),
            ancestor: None,
        }]));
        short[FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + 4].copy_from_slice(&2u32.to_le_bytes());
        assert!(matches!(
            read_response(&mut &short[..]),
            Err(ServiceProtocolError::BadTimelineCount { count: 2, .. })
        ));
        let mut huge = frame(KIND_STATUS, &[]);
        huge[5..9].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            read_frame(&mut &huge[..]),
            Err(ServiceProtocolError::TooLarge { .. })
        ));
    }
}
