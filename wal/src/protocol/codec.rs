//! Binary encoding of protocol messages. Little-endian; strings and byte strings carry
//! a u32 length; decoding checks every length against what remains and against limits.

use bytes::{BufMut, Bytes, BytesMut};

use super::*;

/// "TARN" in ASCII: the first four bytes of every frame.
pub const PROTOCOL_MAGIC: u32 = 0x5441_524E;
pub const FRAME_HEADER_BYTES: usize = 9;
/// An append's WAL plus its fixed fields, with room to spare; anything larger is hostile.
pub const MAX_FRAME_BODY_BYTES: usize = MAX_APPEND_WAL_BYTES + 4096;
/// Refusal reasons and other text fields are short; bound them so a frame can't claim
/// a huge string.
const MAX_TEXT_BYTES: usize = 64 * 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtocolError {
    #[error(
        "wrong magic {found:#010x} in frame header (expected {PROTOCOL_MAGIC:#010x}): not a tarn peer"
    )]
    WrongMagic { found: u32 },
    #[error("frame body of {len} bytes exceeds the limit of {MAX_FRAME_BODY_BYTES} bytes")]
    FrameTooLarge { len: usize },
    #[error("unknown message kind {kind} for {direction}")]
    UnknownKind { kind: u8, direction: &'static str },
    #[error("truncated {message} frame: field {field} needs {needed} bytes, {remaining} remain")]
    Truncated {
        message: &'static str,
        field: &'static str,
        needed: usize,
        remaining: usize,
    },
    #[error("{message} frame has {extra} unexpected trailing bytes")]
    TrailingBytes { message: &'static str, extra: usize },
    #[error("{message} frame field {field} is invalid: {detail}")]
    InvalidField {
        message: &'static str,
        field: &'static str,
        detail: String,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    pub kind: u8,
    pub body_len: usize,
}

pub fn decode_frame_header(bytes: &[u8; FRAME_HEADER_BYTES]) -> Result<FrameHeader, ProtocolError> {
    let magic = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    if magic != PROTOCOL_MAGIC {
        return Err(ProtocolError::WrongMagic { found: magic });
    }
    let body_len = u32::from_le_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]) as usize;
    if body_len > MAX_FRAME_BODY_BYTES {
        return Err(ProtocolError::FrameTooLarge { len: body_len });
    }
    Ok(FrameHeader {
        kind: bytes[4],
        body_len,
    })
}

mod kind {
    pub const HELLO: u8 = 1;
    pub const VOTE_REQUEST: u8 = 2;
    pub const ELECTED: u8 = 3;
    pub const APPEND: u8 = 4;
    pub const READ_WAL: u8 = 5;
    pub const STATUS: u8 = 6;

    pub const HELLO_REPLY: u8 = 101;
    pub const VOTE: u8 = 102;
    pub const ELECTED_ACK: u8 = 103;
    pub const APPEND_RESPONSE: u8 = 104;
    pub const WAL_CHUNK: u8 = 105;
    pub const STATUS_REPLY: u8 = 106;
    pub const REFUSED: u8 = 107;
}

struct Writer {
    buf: BytesMut,
}

impl Writer {
    fn new(kind: u8, capacity: usize) -> Writer {
        let mut buf = BytesMut::with_capacity(FRAME_HEADER_BYTES + capacity);
        buf.put_u32_le(PROTOCOL_MAGIC);
        buf.put_u8(kind);
        buf.put_u32_le(0); // patched in finish()
        Writer { buf }
    }
    fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.put_u8(v);
        self
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.put_u32_le(v);
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.put_u64_le(v);
        self
    }
    fn u128(&mut self, v: u128) -> &mut Self {
        self.buf.put_u128_le(v);
        self
    }
    fn lsn(&mut self, v: Lsn) -> &mut Self {
        self.u64(v.0)
    }
    fn term(&mut self, v: Term) -> &mut Self {
        self.u64(v.0)
    }
    fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.buf.put_u32_le(v.len() as u32);
        self.buf.put_slice(v);
        self
    }
    fn history(&mut self, h: &TermHistory) -> &mut Self {
        self.u32(h.0.len() as u32);
        for s in &h.0 {
            self.term(s.term).lsn(s.lsn);
        }
        self
    }
    fn finish(mut self) -> Bytes {
        let body_len = (self.buf.len() - FRAME_HEADER_BYTES) as u32;
        self.buf[5..9].copy_from_slice(&body_len.to_le_bytes());
        self.buf.freeze()
    }
}

struct Reader {
    body: Bytes,
    pos: usize,
    message: &'static str,
}

impl Reader {
    fn take(&mut self, field: &'static str, n: usize) -> Result<&[u8], ProtocolError> {
        let remaining = self.body.len() - self.pos;
        if n > remaining {
            return Err(ProtocolError::Truncated {
                message: self.message,
                field,
                needed: n,
                remaining,
            });
        }
        let s = &self.body[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], ProtocolError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(field, N)?);
        Ok(a)
    }
    fn u8(&mut self, field: &'static str) -> Result<u8, ProtocolError> {
        Ok(self.array::<1>(field)?[0])
    }
    fn u32(&mut self, field: &'static str) -> Result<u32, ProtocolError> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }
    fn u64(&mut self, field: &'static str) -> Result<u64, ProtocolError> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }
    fn u128(&mut self, field: &'static str) -> Result<u128, ProtocolError> {
        Ok(u128::from_le_bytes(self.array(field)?))
    }
    fn lsn(&mut self, field: &'static str) -> Result<Lsn, ProtocolError> {
        Ok(Lsn(self.u64(field)?))
    }
    fn term(&mut self, field: &'static str) -> Result<Term, ProtocolError> {
        Ok(Term(self.u64(field)?))
    }
    fn bool(&mut self, field: &'static str) -> Result<bool, ProtocolError> {
        match self.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(self.invalid(field, format!("boolean byte {other}"))),
        }
    }
    fn bytes(&mut self, field: &'static str, limit: usize) -> Result<Bytes, ProtocolError> {
        let len = self.u32(field)? as usize;
        if len > limit {
            return Err(self.invalid(field, format!("length {len} exceeds the limit of {limit}")));
        }
        let remaining = self.body.len() - self.pos;
        if len > remaining {
            return Err(ProtocolError::Truncated {
                message: self.message,
                field,
                needed: len,
                remaining,
            });
        }
        let b = self.body.slice(self.pos..self.pos + len);
        self.pos += len;
        Ok(b)
    }
    fn text(&mut self, field: &'static str) -> Result<String, ProtocolError> {
        let b = self.bytes(field, MAX_TEXT_BYTES)?;
        String::from_utf8(b.to_vec()).map_err(|_| self.invalid(field, "not UTF-8".into()))
    }
    fn history(&mut self, field: &'static str) -> Result<TermHistory, ProtocolError> {
        let n = self.u32(field)? as usize;
        if n > MAX_TERM_HISTORY_ENTRIES {
            return Err(self.invalid(field, format!("{n} entries exceed the limit")));
        }
        // Each entry is 16 bytes: check before allocating so a lying count can't.
        let remaining = self.body.len() - self.pos;
        if n * 16 > remaining {
            return Err(ProtocolError::Truncated {
                message: self.message,
                field,
                needed: n * 16,
                remaining,
            });
        }
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            v.push(TermSwitch {
                term: self.term(field)?,
                lsn: self.lsn(field)?,
            });
        }
        let h = TermHistory(v);
        h.validate().map_err(|e| self.invalid(field, e))?;
        Ok(h)
    }
    fn invalid(&self, field: &'static str, detail: String) -> ProtocolError {
        ProtocolError::InvalidField {
            message: self.message,
            field,
            detail,
        }
    }
    fn finish(self) -> Result<(), ProtocolError> {
        let extra = self.body.len() - self.pos;
        if extra != 0 {
            return Err(ProtocolError::TrailingBytes {
                message: self.message,
                extra,
            });
        }
        Ok(())
    }
}

pub fn encode_proposer_message(msg: &ProposerMessage) -> Bytes {
    match msg {
        ProposerMessage::Hello(m) => {
            let mut w = Writer::new(kind::HELLO, 48);
            w.u32(m.protocol_version)
                .u64(m.system_id.0)
                .u128(m.timeline_id.0)
                .u32(m.pg_version)
                .u64(m.segment_size_bytes);
            w.finish()
        }
        ProposerMessage::VoteRequest(m) => {
            let mut w = Writer::new(kind::VOTE_REQUEST, 8);
            w.term(m.term);
            w.finish()
        }
        ProposerMessage::Elected(m) => {
            let mut w = Writer::new(kind::ELECTED, 12 + 16 * m.term_history.0.len());
            w.term(m.term).history(&m.term_history);
            w.finish()
        }
        ProposerMessage::Append(m) => {
            let mut w = Writer::new(kind::APPEND, 28 + m.wal.len());
            w.term(m.term)
                .lsn(m.begin_lsn)
                .lsn(m.commit_lsn)
                .bytes(&m.wal);
            w.finish()
        }
        ProposerMessage::ReadWal(m) => {
            let mut w = Writer::new(kind::READ_WAL, 16);
            w.lsn(m.start_lsn).lsn(m.end_lsn);
            w.finish()
        }
        ProposerMessage::Status => Writer::new(kind::STATUS, 0).finish(),
    }
}

pub fn encode_safekeeper_message(msg: &SafekeeperMessage) -> Bytes {
    match msg {
        SafekeeperMessage::HelloReply(m) => {
            let mut w = Writer::new(kind::HELLO_REPLY, 40);
            w.u64(m.node_id.0)
                .term(m.term)
                .lsn(m.timeline_start_lsn)
                .lsn(m.flush_lsn)
                .lsn(m.commit_lsn);
            w.finish()
        }
        SafekeeperMessage::Vote(m) => {
            let mut w = Writer::new(kind::VOTE, 40 + 16 * m.term_history.0.len());
            w.term(m.term)
                .u8(u8::from(m.vote_given))
                .lsn(m.flush_lsn)
                .lsn(m.commit_lsn)
                .lsn(m.timeline_start_lsn)
                .history(&m.term_history);
            w.finish()
        }
        SafekeeperMessage::ElectedAck(m) => {
            let mut w = Writer::new(kind::ELECTED_ACK, 24);
            w.term(m.term).lsn(m.flush_lsn).lsn(m.commit_lsn);
            w.finish()
        }
        SafekeeperMessage::AppendResponse(m) => {
            let mut w = Writer::new(kind::APPEND_RESPONSE, 24);
            w.term(m.term).lsn(m.flush_lsn).lsn(m.commit_lsn);
            w.finish()
        }
        SafekeeperMessage::WalChunk(m) => {
            let mut w = Writer::new(kind::WAL_CHUNK, 12 + m.wal.len());
            w.lsn(m.start_lsn).bytes(&m.wal);
            w.finish()
        }
        SafekeeperMessage::Status(m) => {
            let mut w = Writer::new(kind::STATUS_REPLY, 64);
            w.u64(m.node_id.0).u32(m.timelines.len() as u32);
            for t in &m.timelines {
                w.u128(t.timeline_id.0)
                    .u64(t.system_id.0)
                    .term(t.term)
                    .lsn(t.timeline_start_lsn)
                    .lsn(t.flush_lsn)
                    .lsn(t.commit_lsn)
                    .history(&t.term_history);
            }
            w.finish()
        }
        SafekeeperMessage::Refused(m) => {
            let mut w = Writer::new(kind::REFUSED, 12 + m.reason.len());
            w.term(m.term).bytes(m.reason.as_bytes());
            w.finish()
        }
    }
}

/// Upper bound on timelines in one status reply (bounds a hostile frame's allocation).
const MAX_STATUS_TIMELINES: usize = 100_000;

pub fn decode_proposer_message(
    kind_byte: u8,
    body: Bytes,
) -> Result<ProposerMessage, ProtocolError> {
    let message = match kind_byte {
        kind::HELLO => "Hello",
        kind::VOTE_REQUEST => "VoteRequest",
        kind::ELECTED => "Elected",
        kind::APPEND => "Append",
        kind::READ_WAL => "ReadWal",
        kind::STATUS => "Status",
        _ => {
            return Err(ProtocolError::UnknownKind {
                kind: kind_byte,
                direction: "proposer to safekeeper",
            });
        }
    };
    let mut r = Reader {
        body,
        pos: 0,
        message,
    };
    let msg = match kind_byte {
        kind::HELLO => ProposerMessage::Hello(Hello {
            protocol_version: r.u32("protocol_version")?,
            system_id: SystemId(r.u64("system_id")?),
            timeline_id: TimelineId(r.u128("timeline_id")?),
            pg_version: r.u32("pg_version")?,
            segment_size_bytes: r.u64("segment_size_bytes")?,
        }),
        kind::VOTE_REQUEST => ProposerMessage::VoteRequest(VoteRequest {
            term: r.term("term")?,
        }),
        kind::ELECTED => ProposerMessage::Elected(Elected {
            term: r.term("term")?,
            term_history: r.history("term_history")?,
        }),
        kind::APPEND => {
            let term = r.term("term")?;
            let begin_lsn = r.lsn("begin_lsn")?;
            let commit_lsn = r.lsn("commit_lsn")?;
            let wal = r.bytes("wal", MAX_APPEND_WAL_BYTES)?;
            if begin_lsn.0.checked_add(wal.len() as u64).is_none() {
                return Err(r.invalid(
                    "begin_lsn",
                    format!("{begin_lsn} plus {} bytes overflows", wal.len()),
                ));
            }
            ProposerMessage::Append(AppendRequest {
                term,
                begin_lsn,
                commit_lsn,
                wal,
            })
        }
        kind::READ_WAL => ProposerMessage::ReadWal(ReadWalRequest {
            start_lsn: r.lsn("start_lsn")?,
            end_lsn: r.lsn("end_lsn")?,
        }),
        _ => ProposerMessage::Status,
    };
    r.finish()?;
    Ok(msg)
}

pub fn decode_safekeeper_message(
    kind_byte: u8,
    body: Bytes,
) -> Result<SafekeeperMessage, ProtocolError> {
    let message = match kind_byte {
        kind::HELLO_REPLY => "HelloReply",
        kind::VOTE => "Vote",
        kind::ELECTED_ACK => "ElectedAck",
        kind::APPEND_RESPONSE => "AppendResponse",
        kind::WAL_CHUNK => "WalChunk",
        kind::STATUS_REPLY => "StatusReply",
        kind::REFUSED => "Refused",
        _ => {
            return Err(ProtocolError::UnknownKind {
                kind: kind_byte,
                direction: "safekeeper to proposer",
            });
        }
    };
    let mut r = Reader {
        body,
        pos: 0,
        message,
    };
    let msg = match kind_byte {
        kind::HELLO_REPLY => SafekeeperMessage::HelloReply(HelloReply {
            node_id: NodeId(r.u64("node_id")?),
            term: r.term("term")?,
            timeline_start_lsn: r.lsn("timeline_start_lsn")?,
            flush_lsn: r.lsn("flush_lsn")?,
            commit_lsn: r.lsn("commit_lsn")?,
        }),
        kind::VOTE => SafekeeperMessage::Vote(VoteResponse {
            term: r.term("term")?,
            vote_given: r.bool("vote_given")?,
            flush_lsn: r.lsn("flush_lsn")?,
            commit_lsn: r.lsn("commit_lsn")?,
            timeline_start_lsn: r.lsn("timeline_start_lsn")?,
            term_history: r.history("term_history")?,
        }),
        kind::ELECTED_ACK => SafekeeperMessage::ElectedAck(ElectedAck {
            term: r.term("term")?,
            flush_lsn: r.lsn("flush_lsn")?,
            commit_lsn: r.lsn("commit_lsn")?,
        }),
        kind::APPEND_RESPONSE => SafekeeperMessage::AppendResponse(AppendResponse {
            term: r.term("term")?,
            flush_lsn: r.lsn("flush_lsn")?,
            commit_lsn: r.lsn("commit_lsn")?,
        }),
        kind::WAL_CHUNK => SafekeeperMessage::WalChunk(WalChunk {
            start_lsn: r.lsn("start_lsn")?,
            wal: r.bytes("wal", MAX_APPEND_WAL_BYTES)?,
        }),
        kind::STATUS_REPLY => {
            let node_id = NodeId(r.u64("node_id")?);
            let n = r.u32("timelines")? as usize;
            if n > MAX_STATUS_TIMELINES {
                return Err(r.invalid("timelines", format!("{n} timelines exceed the limit")));
            }
            let mut timelines = Vec::new();
            for _ in 0..n {
                timelines.push(TimelineStatus {
                    timeline_id: TimelineId(r.u128("timeline_id")?),
                    system_id: SystemId(r.u64("system_id")?),
                    term: r.term("term")?,
                    timeline_start_lsn: r.lsn("timeline_start_lsn")?,
                    flush_lsn: r.lsn("flush_lsn")?,
                    commit_lsn: r.lsn("commit_lsn")?,
                    term_history: r.history("term_history")?,
                });
            }
            SafekeeperMessage::Status(StatusReply { node_id, timelines })
        }
        _ => SafekeeperMessage::Refused(Refusal {
            term: r.term("term")?,
            reason: r.text("reason")?,
        }),
    };
    r.finish()?;
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(frame: &Bytes) -> (FrameHeader, Bytes) {
        let header: [u8; FRAME_HEADER_BYTES] =
            frame[..FRAME_HEADER_BYTES].try_into().expect("header");
        let h = decode_frame_header(&header).expect("valid header");
        assert_eq!(h.body_len, frame.len() - FRAME_HEADER_BYTES);
        (h, frame.slice(FRAME_HEADER_BYTES..))
    }

    fn history() -> TermHistory {
        TermHistory(vec![
            TermSwitch {
                term: Term(1),
                lsn: Lsn(0x100_0000),
            },
            TermSwitch {
                term: Term(4),
                lsn: Lsn(0x100_8000),
            },
        ])
    }

    #[test]
    fn every_message_round_trips() {
        let proposer = vec![
            ProposerMessage::Hello(Hello {
                protocol_version: PROTOCOL_VERSION,
                system_id: SystemId(7),
                timeline_id: TimelineId(0xabc),
                pg_version: 150018,
                segment_size_bytes: 16 << 20,
            }),
            ProposerMessage::VoteRequest(VoteRequest { term: Term(9) }),
            ProposerMessage::Elected(Elected {
                term: Term(4),
                term_history: history(),
            }),
            ProposerMessage::Append(AppendRequest {
                term: Term(4),
                begin_lsn: Lsn(0x100_8000),
                commit_lsn: Lsn(0x100_7000),
                wal: Bytes::from_static(b"walbytes"),
            }),
            ProposerMessage::ReadWal(ReadWalRequest {
                start_lsn: Lsn(1),
                end_lsn: Lsn(2),
            }),
            ProposerMessage::Status,
        ];
        for m in proposer {
            let frame = encode_proposer_message(&m);
            let (h, body) = split(&frame);
            assert_eq!(decode_proposer_message(h.kind, body), Ok(m));
        }
        let safekeeper = vec![
            SafekeeperMessage::HelloReply(HelloReply {
                node_id: NodeId(2),
                term: Term(3),
                timeline_start_lsn: Lsn(5),
                flush_lsn: Lsn(6),
                commit_lsn: Lsn(7),
            }),
            SafekeeperMessage::Vote(VoteResponse {
                term: Term(4),
                vote_given: true,
                flush_lsn: Lsn(8),
                commit_lsn: Lsn(7),
                timeline_start_lsn: Lsn(5),
                term_history: history(),
            }),
            SafekeeperMessage::ElectedAck(ElectedAck {
                term: Term(4),
                flush_lsn: Lsn(8),
                commit_lsn: Lsn(7),
            }),
            SafekeeperMessage::AppendResponse(AppendResponse {
                term: Term(4),
                flush_lsn: Lsn(9),
                commit_lsn: Lsn(8),
            }),
            SafekeeperMessage::WalChunk(WalChunk {
                start_lsn: Lsn(3),
                wal: Bytes::from_static(b"x"),
            }),
            SafekeeperMessage::Status(StatusReply {
                node_id: NodeId(1),
                timelines: vec![TimelineStatus {
                    timeline_id: TimelineId(1),
                    system_id: SystemId(2),
                    term: Term(3),
                    timeline_start_lsn: Lsn(4),
                    flush_lsn: Lsn(5),
                    commit_lsn: Lsn(6),
                    term_history: history(),
                }],
            }),
            SafekeeperMessage::Refused(Refusal {
                term: Term(4),
                reason: "no".into(),
            }),
        ];
        for m in safekeeper {
            let frame = encode_safekeeper_message(&m);
            let (h, body) = split(&frame);
            assert_eq!(decode_safekeeper_message(h.kind, body), Ok(m));
        }
    }

    #[test]
    fn hostile_frames_are_refused_with_a_reason() {
        let mut header = [0u8; FRAME_HEADER_BYTES];
        header[..4].copy_from_slice(b"GET ");
        assert!(matches!(
            decode_frame_header(&header),
            Err(ProtocolError::WrongMagic { .. })
        ));

        header[..4].copy_from_slice(&PROTOCOL_MAGIC.to_le_bytes());
        header[5..9].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            decode_frame_header(&header),
            Err(ProtocolError::FrameTooLarge { .. })
        ));

        let frame = encode_proposer_message(&ProposerMessage::Append(AppendRequest {
            term: Term(1),
            begin_lsn: Lsn(0),
            commit_lsn: Lsn(0),
            wal: Bytes::from_static(b"abcdef"),
        }));
        let (h, body) = split(&frame);
        let err =
            decode_proposer_message(h.kind, body.slice(..body.len() - 2)).expect_err("truncated");
        assert!(err.to_string().contains("truncated Append frame"), "{err}");

        let mut long = body.to_vec();
        long.push(0);
        let err = decode_proposer_message(h.kind, Bytes::from(long)).expect_err("trailing");
        assert!(matches!(err, ProtocolError::TrailingBytes { extra: 1, .. }));

        assert!(matches!(
            decode_proposer_message(99, Bytes::new()),
            Err(ProtocolError::UnknownKind { .. })
        ));

        // A history that claims more entries than the frame holds must not allocate them.
        let mut w = Writer::new(kind::ELECTED, 16);
        w.term(Term(1)).u32(u32::MAX);
        let frame = w.finish();
        let (h, body) = split(&frame);
        assert!(decode_proposer_message(h.kind, body).is_err());

        // Overflowing LSN arithmetic is caught at decode.
        let frame = encode_proposer_message(&ProposerMessage::Append(AppendRequest {
            term: Term(1),
            begin_lsn: Lsn(u64::MAX - 1),
            commit_lsn: Lsn(0),
            wal: Bytes::from_static(b"abc"),
        }));
        let (h, body) = split(&frame);
        assert!(matches!(
            decode_proposer_message(h.kind, body),
            Err(ProtocolError::InvalidField { .. })
        ));
    }
}
