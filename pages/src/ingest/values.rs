//! The small values ingest keeps next to pages, and their encodings: relation and SLRU
//! segment sizes ([`SizeValue`]), the directories of databases, relations, SLRU
//! segments and prepared transactions ([`DbDir`], [`RelDir`], [`SlruDir`],
//! [`TwoPhaseDir`]), and the checkpoint state ([`CheckpointState`]).
//!
//! All are stored whole as [`Value::Image`](crate::store::Value::Image)s: each change
//! writes the new value. Every encoding starts with a format byte, and decoding checks
//! the length exactly, so a value of the wrong kind is an error, never a misread.

use std::collections::BTreeSet;

use tarn_wal::Lsn;
use tarn_wal::decode::ForkNumber;

/// Why a stored value does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("corrupt {what} value ({len} bytes): {detail}")]
pub struct ValueError {
    pub what: &'static str,
    pub len: usize,
    pub detail: String,
}

fn corrupt(what: &'static str, bytes: &[u8], detail: impl Into<String>) -> ValueError {
    ValueError {
        what,
        len: bytes.len(),
        detail: detail.into(),
    }
}

const SIZE_EXISTS: u8 = 0x01;
const SIZE_DROPPED: u8 = 0x00;

/// The size of a relation fork or SLRU segment, in blocks, or the fact that it was
/// dropped. The store has no tombstones, so a drop is this value: reads of a dropped
/// relation find `Dropped` at their LSN and answer "relation does not exist".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SizeValue {
    Exists(u32),
    Dropped,
}

impl SizeValue {
    pub fn encode(self) -> Vec<u8> {
        match self {
            SizeValue::Exists(nblocks) => {
                let mut out = vec![SIZE_EXISTS];
                out.extend_from_slice(&nblocks.to_le_bytes());
                out
            }
            SizeValue::Dropped => vec![SIZE_DROPPED],
        }
    }

    pub fn decode(bytes: &[u8]) -> Result<SizeValue, ValueError> {
        match bytes {
            [SIZE_DROPPED] => Ok(SizeValue::Dropped),
            [SIZE_EXISTS, a, b, c, d] => {
                Ok(SizeValue::Exists(u32::from_le_bytes([*a, *b, *c, *d])))
            }
            _ => Err(corrupt(
                "size",
                bytes,
                "expected 1 or 5 bytes with a known tag",
            )),
        }
    }

    /// The size if the relation (segment) exists.
    pub fn nblocks(self) -> Option<u32> {
        match self {
            SizeValue::Exists(nblocks) => Some(nblocks),
            SizeValue::Dropped => None,
        }
    }
}

const DIR_FORMAT: u8 = 0x01;

/// Encodes a set of fixed-size entries: format byte, u32 count, entries.
fn encode_set<T, const N: usize>(set: &BTreeSet<T>, entry: impl Fn(&T) -> [u8; N]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + set.len() * N);
    out.push(DIR_FORMAT);
    out.extend_from_slice(&(set.len() as u32).to_le_bytes());
    for item in set {
        out.extend_from_slice(&entry(item));
    }
    out
}

fn decode_set<T: Ord, const N: usize>(
    what: &'static str,
    bytes: &[u8],
    entry: impl Fn(&[u8; N]) -> Option<T>,
) -> Result<BTreeSet<T>, ValueError> {
    let (Some(&DIR_FORMAT), Some(count)) = (
        bytes.first(),
        bytes
            .get(1..5)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])),
    ) else {
        return Err(corrupt(what, bytes, "missing format byte or count"));
    };
    let body = &bytes[5..];
    if body.len() != count as usize * N {
        return Err(corrupt(
            what,
            bytes,
            format!(
                "{count} entries need {} bytes, found {}",
                count as usize * N,
                body.len()
            ),
        ));
    }
    let mut set = BTreeSet::new();
    for chunk in body.chunks_exact(N) {
        let chunk: &[u8; N] = chunk.try_into().expect("chunks_exact yields N bytes");
        let item = entry(chunk).ok_or_else(|| corrupt(what, bytes, "invalid entry"))?;
        if !set.insert(item) {
            return Err(corrupt(what, bytes, "duplicate entry"));
        }
    }
    Ok(set)
}

fn le32(bytes: &[u8]) -> u32 {
    u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}

/// The databases of the cluster: `(tablespace, database)` pairs, including
/// `(GLOBALTABLESPACE_OID, 0)` for the shared catalogs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DbDir(pub BTreeSet<(u32, u32)>);

impl DbDir {
    pub fn encode(&self) -> Vec<u8> {
        encode_set(&self.0, |(spc, db)| {
            let mut entry = [0u8; 8];
            entry[..4].copy_from_slice(&spc.to_le_bytes());
            entry[4..].copy_from_slice(&db.to_le_bytes());
            entry
        })
    }

    pub fn decode(bytes: &[u8]) -> Result<DbDir, ValueError> {
        decode_set("database directory", bytes, |entry: &[u8; 8]| {
            Some((le32(&entry[..4]), le32(&entry[4..])))
        })
        .map(DbDir)
    }
}

/// The relation forks of one database (or of the shared catalogs): `(relfilenode,
/// fork)` pairs. The free space map is never listed: tarn does not keep it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RelDir(pub BTreeSet<(u32, ForkNumber)>);

impl RelDir {
    pub fn encode(&self) -> Vec<u8> {
        encode_set(&self.0, |(rel, fork)| {
            let mut entry = [0u8; 5];
            entry[..4].copy_from_slice(&rel.to_le_bytes());
            entry[4] = *fork as u8;
            entry
        })
    }

    pub fn decode(bytes: &[u8]) -> Result<RelDir, ValueError> {
        decode_set("relation directory", bytes, |entry: &[u8; 5]| {
            Some((le32(&entry[..4]), ForkNumber::from_u8(entry[4])?))
        })
        .map(RelDir)
    }
}

/// The segments of one SLRU, by segment number.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SlruDir(pub BTreeSet<u32>);

impl SlruDir {
    pub fn encode(&self) -> Vec<u8> {
        encode_set(&self.0, |segno| segno.to_le_bytes())
    }

    pub fn decode(bytes: &[u8]) -> Result<SlruDir, ValueError> {
        decode_set("SLRU directory", bytes, |entry: &[u8; 4]| Some(le32(entry))).map(SlruDir)
    }
}

/// The prepared transactions (whose state files are at
/// [`Key::twophase_file`](crate::store::Key::twophase_file)).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TwoPhaseDir(pub BTreeSet<u32>);

impl TwoPhaseDir {
    pub fn encode(&self) -> Vec<u8> {
        encode_set(&self.0, |xid| xid.to_le_bytes())
    }

    pub fn decode(bytes: &[u8]) -> Result<TwoPhaseDir, ValueError> {
        decode_set("two-phase directory", bytes, |entry: &[u8; 4]| {
            Some(le32(entry))
        })
        .map(TwoPhaseDir)
    }
}

/// sizeof(CheckPoint) in PG15 on 64-bit platforms.
pub const SIZE_OF_CHECKPOINT: usize = 88;

/// The checkpoint state: a PG15 `CheckPoint` struct, byte for byte as Postgres lays it
/// out (pg_control.h, 64-bit), with the counters redo maintains (nextXid, nextOid,
/// nextMulti, nextMultiOffset, oldestXid, oldestMulti) as they stand after replaying
/// WAL up to the value's LSN. A basebackup copies it into `pg_control`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct CheckpointState {
    bytes: [u8; SIZE_OF_CHECKPOINT],
}

/// Field offsets in CheckPoint (with the padding the C compiler inserts).
pub(crate) mod checkpoint_offsets {
    pub const REDO: usize = 0;
    pub const THIS_TIMELINE: usize = 8;
    pub const PREV_TIMELINE: usize = 12;
    pub const FULL_PAGE_WRITES: usize = 16;
    pub const NEXT_XID: usize = 24;
    pub const NEXT_OID: usize = 32;
    pub const NEXT_MULTI: usize = 36;
    pub const NEXT_MULTI_OFFSET: usize = 40;
    pub const OLDEST_XID: usize = 44;
    pub const OLDEST_XID_DB: usize = 48;
    pub const OLDEST_MULTI: usize = 52;
    pub const OLDEST_MULTI_DB: usize = 56;
    pub const TIME: usize = 64;
    pub const OLDEST_COMMIT_TS_XID: usize = 72;
    pub const NEWEST_COMMIT_TS_XID: usize = 76;
    pub const OLDEST_ACTIVE_XID: usize = 80;
}

impl std::fmt::Debug for CheckpointState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointState")
            .field("redo", &self.redo())
            .field("timeline", &self.this_timeline())
            .field("next_xid", &self.next_full_xid())
            .field("next_oid", &self.next_oid())
            .field("next_multi", &self.next_multi())
            .field("next_multi_offset", &self.next_multi_offset())
            .field("oldest_xid", &self.oldest_xid())
            .field("oldest_xid_db", &self.oldest_xid_db())
            .field("oldest_multi", &self.oldest_multi())
            .field("oldest_multi_db", &self.oldest_multi_db())
            .field("oldest_active_xid", &self.oldest_active_xid())
            .finish()
    }
}

macro_rules! u32_field {
    ($get:ident, $set:ident, $at:ident) => {
        pub fn $get(&self) -> u32 {
            self.u32_at(checkpoint_offsets::$at)
        }
        pub fn $set(&mut self, value: u32) {
            self.set_u32_at(checkpoint_offsets::$at, value)
        }
    };
}

impl CheckpointState {
    /// From the bytes of a CheckPoint (a checkpoint record's main data, or
    /// `checkPointCopy` of `pg_control`).
    pub fn from_bytes(bytes: &[u8]) -> Result<CheckpointState, ValueError> {
        let bytes: [u8; SIZE_OF_CHECKPOINT] = bytes.try_into().map_err(|_| {
            corrupt(
                "checkpoint",
                bytes,
                format!("expected {SIZE_OF_CHECKPOINT} bytes"),
            )
        })?;
        Ok(CheckpointState { bytes })
    }

    pub fn as_bytes(&self) -> &[u8; SIZE_OF_CHECKPOINT] {
        &self.bytes
    }

    fn u32_at(&self, at: usize) -> u32 {
        le32(&self.bytes[at..at + 4])
    }

    fn set_u32_at(&mut self, at: usize, value: u32) {
        self.bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
    }

    fn u64_at(&self, at: usize) -> u64 {
        let mut word = [0u8; 8];
        word.copy_from_slice(&self.bytes[at..at + 8]);
        u64::from_le_bytes(word)
    }

    pub fn redo(&self) -> Lsn {
        Lsn(self.u64_at(checkpoint_offsets::REDO))
    }

    pub fn this_timeline(&self) -> u32 {
        self.u32_at(checkpoint_offsets::THIS_TIMELINE)
    }

    pub fn prev_timeline(&self) -> u32 {
        self.u32_at(checkpoint_offsets::PREV_TIMELINE)
    }

    pub fn full_page_writes(&self) -> bool {
        self.bytes[checkpoint_offsets::FULL_PAGE_WRITES] != 0
    }

    /// nextXid as a FullTransactionId (epoch in the high 32 bits).
    pub fn next_full_xid(&self) -> u64 {
        self.u64_at(checkpoint_offsets::NEXT_XID)
    }

    pub fn set_next_full_xid(&mut self, value: u64) {
        self.bytes[checkpoint_offsets::NEXT_XID..checkpoint_offsets::NEXT_XID + 8]
            .copy_from_slice(&value.to_le_bytes());
    }

    pub fn time(&self) -> i64 {
        self.u64_at(checkpoint_offsets::TIME) as i64
    }

    u32_field!(next_oid, set_next_oid, NEXT_OID);
    u32_field!(next_multi, set_next_multi, NEXT_MULTI);
    u32_field!(next_multi_offset, set_next_multi_offset, NEXT_MULTI_OFFSET);
    u32_field!(oldest_xid, set_oldest_xid, OLDEST_XID);
    u32_field!(oldest_xid_db, set_oldest_xid_db, OLDEST_XID_DB);
    u32_field!(oldest_multi, set_oldest_multi, OLDEST_MULTI);
    u32_field!(oldest_multi_db, set_oldest_multi_db, OLDEST_MULTI_DB);
    u32_field!(
        oldest_commit_ts_xid,
        set_oldest_commit_ts_xid,
        OLDEST_COMMIT_TS_XID
    );
    u32_field!(
        newest_commit_ts_xid,
        set_newest_commit_ts_xid,
        NEWEST_COMMIT_TS_XID
    );
    u32_field!(oldest_active_xid, set_oldest_active_xid, OLDEST_ACTIVE_XID);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_and_reject_garbage() {
        for size in [
            SizeValue::Exists(0),
            SizeValue::Exists(u32::MAX),
            SizeValue::Dropped,
        ] {
            assert_eq!(SizeValue::decode(&size.encode()), Ok(size));
        }
        assert!(SizeValue::decode(&[2]).is_err());
        assert!(SizeValue::decode(&[1, 0, 0]).is_err());

        let dbs = DbDir([(1663, 1), (1663, 5), (1664, 0)].into_iter().collect());
        assert_eq!(DbDir::decode(&dbs.encode()), Ok(dbs.clone()));
        let rels = RelDir(
            [
                (16384, ForkNumber::Main),
                (16384, ForkNumber::VisibilityMap),
            ]
            .into_iter()
            .collect(),
        );
        assert_eq!(RelDir::decode(&rels.encode()), Ok(rels.clone()));
        let mut bad = rels.encode();
        bad.pop();
        assert!(RelDir::decode(&bad).is_err());
        let mut bad_fork = rels.encode();
        bad_fork[9] = 9;
        assert!(RelDir::decode(&bad_fork).is_err());
        // A relation directory is not a database directory.
        assert!(DbDir::decode(&rels.encode()).is_err());
        let segs = SlruDir([0, 1, 7].into_iter().collect());
        assert_eq!(SlruDir::decode(&segs.encode()), Ok(segs));
        assert_eq!(
            RelDir::decode(&RelDir::default().encode()),
            Ok(RelDir::default())
        );
    }

    #[test]
    fn checkpoint_fields_sit_where_postgres_puts_them() {
        let mut bytes = [0u8; SIZE_OF_CHECKPOINT];
        bytes[0..8].copy_from_slice(&0x0150_0708u64.to_le_bytes());
        bytes[24..32].copy_from_slice(&724u64.to_le_bytes());
        bytes[32..36].copy_from_slice(&13572u32.to_le_bytes());
        bytes[36..40].copy_from_slice(&1u32.to_le_bytes());
        let mut state = CheckpointState::from_bytes(&bytes).expect("88 bytes");
        assert_eq!(state.redo(), Lsn(0x0150_0708));
        assert_eq!(state.next_full_xid(), 724);
        assert_eq!(state.next_oid(), 13572);
        assert_eq!(state.next_multi(), 1);
        state.set_next_oid(20000);
        assert_eq!(&state.as_bytes()[32..36], &20000u32.to_le_bytes());
        assert!(CheckpointState::from_bytes(&bytes[..80]).is_err());
    }
}
