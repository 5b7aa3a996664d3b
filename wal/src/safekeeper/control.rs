//! The safekeeper's per-timeline control file: the acceptor's durable promises (term,
//! term history) and progress hints, written atomically and protected by a checksum.
//!
//! Layout (little-endian): magic u32, format version u32, body length u32, body,
//! CRC-32C of everything before it. Written to a temporary file, fsynced, renamed over
//! the old one, and the directory fsynced, so a crash leaves either the old or the new
//! file, never a mix.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::protocol::{TermHistory, TermSwitch};
use crate::{Lsn, SystemId, Term, TimelineId};

pub const CONTROL_FILE_NAME: &str = "safekeeper.control";
const CONTROL_MAGIC: u32 = 0x544B_4331; // "TKC1"
const CONTROL_FORMAT_VERSION: u32 = 1;
/// A control file is a few hundred bytes plus 16 per term switch; anything bigger than
/// this is not one of ours.
const MAX_CONTROL_FILE_BYTES: usize = 16 << 20;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControlState {
    pub system_id: SystemId,
    pub timeline_id: TimelineId,
    pub pg_version: u32,
    pub segment_size_bytes: u64,
    /// Where the timeline's WAL starts; `Lsn::INVALID` until the first election.
    pub timeline_start_lsn: Lsn,
    /// The highest term this acceptor has promised (voted for or followed).
    pub term: Term,
    pub term_history: TermHistory,
    pub commit_lsn: Lsn,
    /// A record boundary known to be durable when this was written: restart recovery
    /// scans for the end of WAL from here.
    pub flush_lsn_hint: Lsn,
}

#[derive(Debug, thiserror::Error)]
pub enum ControlFileError {
    #[error("cannot {action} control file {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("control file {path} is corrupt: {detail}")]
    Corrupt { path: PathBuf, detail: String },
}

impl ControlState {
    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::with_capacity(96 + 16 * self.term_history.0.len());
        body.extend_from_slice(&self.system_id.0.to_le_bytes());
        body.extend_from_slice(&self.timeline_id.0.to_le_bytes());
        body.extend_from_slice(&self.pg_version.to_le_bytes());
        body.extend_from_slice(&self.segment_size_bytes.to_le_bytes());
        body.extend_from_slice(&self.timeline_start_lsn.0.to_le_bytes());
        body.extend_from_slice(&self.term.0.to_le_bytes());
        body.extend_from_slice(&self.commit_lsn.0.to_le_bytes());
        body.extend_from_slice(&self.flush_lsn_hint.0.to_le_bytes());
        body.extend_from_slice(&(self.term_history.0.len() as u32).to_le_bytes());
        for s in &self.term_history.0 {
            body.extend_from_slice(&s.term.0.to_le_bytes());
            body.extend_from_slice(&s.lsn.0.to_le_bytes());
        }
        let mut out = Vec::with_capacity(16 + body.len());
        out.extend_from_slice(&CONTROL_MAGIC.to_le_bytes());
        out.extend_from_slice(&CONTROL_FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(&body);
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    pub fn decode(bytes: &[u8], path: &Path) -> Result<ControlState, ControlFileError> {
        let corrupt = |detail: String| ControlFileError::Corrupt {
            path: path.to_path_buf(),
            detail,
        };
        if bytes.len() < 16 {
            return Err(corrupt(format!(
                "{} bytes is shorter than any control file",
                bytes.len()
            )));
        }
        let (content, crc_bytes) = bytes.split_at(bytes.len() - 4);
        let stored = u32::from_le_bytes([crc_bytes[0], crc_bytes[1], crc_bytes[2], crc_bytes[3]]);
        let computed = crc32c::crc32c(content);
        if stored != computed {
            return Err(corrupt(format!(
                "checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"
            )));
        }
        let mut r = FieldReader {
            bytes: content,
            pos: 0,
        };
        let magic = r.u32().ok_or_else(|| corrupt("truncated header".into()))?;
        if magic != CONTROL_MAGIC {
            return Err(corrupt(format!("wrong magic {magic:#010x}")));
        }
        let version = r.u32().ok_or_else(|| corrupt("truncated header".into()))?;
        if version != CONTROL_FORMAT_VERSION {
            return Err(corrupt(format!(
                "format version {version} is not supported"
            )));
        }
        let body_len = r.u32().ok_or_else(|| corrupt("truncated header".into()))? as usize;
        if body_len != content.len() - 12 {
            return Err(corrupt(format!(
                "body length {body_len} does not match the file"
            )));
        }
        let truncated = || corrupt("truncated body".into());
        let system_id = SystemId(r.u64().ok_or_else(truncated)?);
        let timeline_id = TimelineId(r.u128().ok_or_else(truncated)?);
        let pg_version = r.u32().ok_or_else(truncated)?;
        let segment_size_bytes = r.u64().ok_or_else(truncated)?;
        let timeline_start_lsn = Lsn(r.u64().ok_or_else(truncated)?);
        let term = Term(r.u64().ok_or_else(truncated)?);
        let commit_lsn = Lsn(r.u64().ok_or_else(truncated)?);
        let flush_lsn_hint = Lsn(r.u64().ok_or_else(truncated)?);
        let n = r.u32().ok_or_else(truncated)? as usize;
        if n.saturating_mul(16) != content.len() - r.pos {
            return Err(corrupt(format!(
                "term history of {n} entries does not fit the file"
            )));
        }
        let mut history = Vec::with_capacity(n);
        for _ in 0..n {
            history.push(TermSwitch {
                term: Term(r.u64().ok_or_else(truncated)?),
                lsn: Lsn(r.u64().ok_or_else(truncated)?),
            });
        }
        let term_history = TermHistory(history);
        term_history.validate().map_err(corrupt)?;
        Ok(ControlState {
            system_id,
            timeline_id,
            pg_version,
            segment_size_bytes,
            timeline_start_lsn,
            term,
            term_history,
            commit_lsn,
            flush_lsn_hint,
        })
    }

    /// Reads `dir/safekeeper.control`; `Ok(None)` if there is none.
    pub fn load(dir: &Path) -> Result<Option<ControlState>, ControlFileError> {
        let path = dir.join(CONTROL_FILE_NAME);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(ControlFileError::Io {
                    action: "read",
                    path,
                    source,
                });
            }
        };
        if bytes.len() > MAX_CONTROL_FILE_BYTES {
            return Err(ControlFileError::Corrupt {
                path,
                detail: format!("{} bytes is too large", bytes.len()),
            });
        }
        ControlState::decode(&bytes, &path).map(Some)
    }

    /// Atomically replaces `dir/safekeeper.control` (write temp, fsync, rename, fsync dir).
    pub fn persist(&self, dir: &Path) -> Result<(), ControlFileError> {
        let path = dir.join(CONTROL_FILE_NAME);
        let tmp = dir.join(format!("{CONTROL_FILE_NAME}.tmp"));
        let io = |action: &'static str, p: &Path| {
            let p = p.to_path_buf();
            move |source| ControlFileError::Io {
                action,
                path: p,
                source,
            }
        };
        let mut f = fs::File::create(&tmp).map_err(io("create", &tmp))?;
        f.write_all(&self.encode()).map_err(io("write", &tmp))?;
        f.sync_all().map_err(io("fsync", &tmp))?;
        drop(f);
        fs::rename(&tmp, &path).map_err(io("rename", &path))?;
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io("fsync the directory of", &path))?;
        Ok(())
    }
}

struct FieldReader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl FieldReader<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let s = self.bytes.get(self.pos..self.pos + N)?;
        self.pos += N;
        s.try_into().ok()
    }
    fn u32(&mut self) -> Option<u32> {
        self.take().map(u32::from_le_bytes)
    }
    fn u64(&mut self) -> Option<u64> {
        self.take().map(u64::from_le_bytes)
    }
    fn u128(&mut self) -> Option<u128> {
        self.take().map(u128::from_le_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> ControlState {
        ControlState {
            system_id: SystemId(7),
            timeline_id: TimelineId(0xfeed),
            pg_version: 150018,
            segment_size_bytes: 16 << 20,
            timeline_start_lsn: Lsn(0x100_0000),
            term: Term(4),
            term_history: TermHistory(vec![
                TermSwitch {
                    term: Term(1),
                    lsn: Lsn(0x100_0000),
                },
                TermSwitch {
                    term: Term(4),
                    lsn: Lsn(0x180_0000),
                },
            ]),
            commit_lsn: Lsn(0x170_0000),
            flush_lsn_hint: Lsn(0x160_0000),
        }
    }

    #[test]
    fn persists_and_loads_back() {
        let dir = std::env::temp_dir().join(format!("tarn-control-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("tempdir");
        assert!(ControlState::load(&dir).expect("load").is_none());
        state().persist(&dir).expect("persist");
        assert_eq!(ControlState::load(&dir).expect("load"), Some(state()));
        fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn every_single_byte_corruption_is_detected() {
        let bytes = state().encode();
        let path = Path::new("x");
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x40;
            let err = ControlState::decode(&b, path).expect_err("corruption must be detected");
            assert!(err.to_string().contains("is corrupt"));
        }
        assert!(ControlState::decode(&bytes[..bytes.len() - 3], path).is_err());
    }
}
