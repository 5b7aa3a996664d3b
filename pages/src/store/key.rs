//! The keyspace: every versioned thing of a PostgreSQL cluster is an 18-byte [`Key`]
//! `(space u8, field2 u32, field3 u32, field4 u32, fork u8, blk u32)`, ordered bytewise
//! (big-endian fields, so the derived tuple order *is* the byte order). The layout
//! follows Neon's (pageserver_api/src/key.rs), which keeps each relation's blocks
//! contiguous, places its size key right after them, and groups a database's keys:
//!
//! | what | space | f2 | f3 | f4 | fork | blk |
//! | --- | --- | --- | --- | --- | --- | --- |
//! | database directory | 0 | 0 | 0 | 0 | 0 | 0 |
//! | relation directory of (spc, db) | 0 | spc | db | 0 | 0 | 0 |
//! | relmap file of (spc, db) | 0 | spc | db | 0 | 0 | 1 |
//! | relation block | 0 | spc | db | relfilenode | fork | blkno |
//! | relation size | 0 | spc | db | relfilenode | fork | 0xFFFFFFFF |
//! | SLRU directory | 1 | slru | 0 | 0 | 0 | 0 |
//! | SLRU page | 1 | slru | 1 | segno | 0 | blkno |
//! | SLRU segment size | 1 | slru | 1 | segno | 0 | 0xFFFFFFFF |
//! | two-phase directory | 2 | 0 | 0 | 0 | 0 | 0 |
//! | two-phase state file | 2 | 0 | 0 | 0 | 0 | xid |
//! | control file (`pg_control`) | 3 | 0 | 0 | 0 | 0 | 0 |
//! | checkpoint | 3 | 0 | 0 | 0 | 0 | 1 |
//!
//! Invalid OIDs (0) and InvalidBlockNumber are what keep these apart, so the
//! constructors assert them: a colliding key would be a silently wrong page.

use std::fmt;
use std::ops::Range;
use std::str::FromStr;

use tarn_wal::decode::{ForkNumber, RelFileNode};

/// Bytes in an encoded key.
pub const KEY_BYTES: usize = 18;

/// The top-level spaces of the keyspace (the first byte).
const SPACE_REL: u8 = 0x00;
const SPACE_SLRU: u8 = 0x01;
const SPACE_TWOPHASE: u8 = 0x02;
const SPACE_CONTROL: u8 = 0x03;

/// InvalidBlockNumber: never a block, so it marks size keys.
const SIZE_BLK: u32 = u32::MAX;
const RELMAP_BLK: u32 = 1;
const SLRU_PAGES_F3: u32 = 1;
const CHECKPOINT_BLK: u32 = 1;

/// A key of the page store. See the module docs for the layout.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    space: u8,
    field2: u32,
    field3: u32,
    field4: u32,
    fork: u8,
    blk: u32,
}

/// An SLRU (simple LRU) area whose pages the store keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum SlruKind {
    /// `pg_xact` (CLOG).
    Clog = 0,
    /// `pg_multixact/offsets`.
    MultiXactOffsets = 1,
    /// `pg_multixact/members`.
    MultiXactMembers = 2,
}

/// What a key names, decoded; for debugging output and for callers that dispatch on
/// key type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyClass {
    DbDir,
    RelDir {
        spc: u32,
        db: u32,
    },
    RelMap {
        spc: u32,
        db: u32,
    },
    RelBlock {
        rel: RelFileNode,
        fork: ForkNumber,
        blk: u32,
    },
    RelSize {
        rel: RelFileNode,
        fork: ForkNumber,
    },
    SlruDir(SlruKind),
    SlruPage {
        slru: SlruKind,
        segno: u32,
        blk: u32,
    },
    SlruSegmentSize {
        slru: SlruKind,
        segno: u32,
    },
    TwoPhaseDir,
    TwoPhaseFile {
        xid: u32,
    },
    ControlFile,
    Checkpoint,
    /// A key outside the layout (e.g. [`Key::MIN`], [`Key::MAX`], or a corrupt one).
    Other,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid key {0:?}: expected {len} hexadecimal digits", len = KEY_BYTES * 2)]
pub struct ParseKeyError(pub String);

impl SlruKind {
    pub const fn from_u8(value: u8) -> Option<SlruKind> {
        match value {
            0 => Some(SlruKind::Clog),
            1 => Some(SlruKind::MultiXactOffsets),
            2 => Some(SlruKind::MultiXactMembers),
            _ => None,
        }
    }

    /// The directory of the SLRU under PGDATA.
    pub const fn dir_name(self) -> &'static str {
        match self {
            SlruKind::Clog => "pg_xact",
            SlruKind::MultiXactOffsets => "pg_multixact/offsets",
            SlruKind::MultiXactMembers => "pg_multixact/members",
        }
    }
}

/// forkNames[] (relpath.c).
fn fork_name(fork: ForkNumber) -> &'static str {
    match fork {
        ForkNumber::Main => "main",
        ForkNumber::Fsm => "fsm",
        ForkNumber::VisibilityMap => "vm",
        ForkNumber::Init => "init",
    }
}

impl Key {
    /// The smallest key: the start of the whole keyspace.
    pub const MIN: Key = Key::from_fields(0, 0, 0, 0, 0, 0);
    /// The largest encodable key, used only as the exclusive end of the keyspace.
    pub const MAX: Key = Key::from_fields(u8::MAX, u32::MAX, u32::MAX, u32::MAX, u8::MAX, u32::MAX);

    /// A key from its raw fields; prefer the named constructors.
    pub const fn from_fields(
        space: u8,
        field2: u32,
        field3: u32,
        field4: u32,
        fork: u8,
        blk: u32,
    ) -> Key {
        Key {
            space,
            field2,
            field3,
            field4,
            fork,
            blk,
        }
    }

    /// The whole keyspace `[MIN, MAX)`.
    pub const fn all() -> Range<Key> {
        Key::MIN..Key::MAX
    }

    /// Block `blk` of a relation fork. Panics on InvalidBlockNumber or an invalid
    /// relfilenode / tablespace: those keys would collide with size and directory keys.
    pub fn rel_block(rel: RelFileNode, fork: ForkNumber, blk: u32) -> Key {
        assert_ne!(
            blk, SIZE_BLK,
            "InvalidBlockNumber is not a block of {rel:?}"
        );
        Key::rel_key(rel, fork, blk)
    }

    /// The size (in blocks) of a relation fork: sorts right after its last block.
    pub fn rel_size(rel: RelFileNode, fork: ForkNumber) -> Key {
        Key::rel_key(rel, fork, SIZE_BLK)
    }

    fn rel_key(rel: RelFileNode, fork: ForkNumber, blk: u32) -> Key {
        assert!(
            rel.rel_node != 0 && rel.spc_node != 0,
            "invalid relation {rel:?}"
        );
        Key::from_fields(
            SPACE_REL,
            rel.spc_node,
            rel.db_node,
            rel.rel_node,
            fork as u8,
            blk,
        )
    }

    /// All blocks of a relation fork, without its size key.
    pub fn rel_block_range(rel: RelFileNode, fork: ForkNumber) -> Range<Key> {
        Key::rel_key(rel, fork, 0)..Key::rel_size(rel, fork)
    }

    /// All keys of a relation fork: its blocks and its size key.
    pub fn rel_range(rel: RelFileNode, fork: ForkNumber) -> Range<Key> {
        Key::rel_key(rel, fork, 0)..Key::rel_size(rel, fork).next()
    }

    /// The list of databases.
    pub const fn db_dir() -> Key {
        Key::from_fields(SPACE_REL, 0, 0, 0, 0, 0)
    }

    /// The list of relations of database `db` in tablespace `spc` (`db` is 0 for the
    /// shared catalogs in `pg_global`).
    pub fn rel_dir(spc: u32, db: u32) -> Key {
        assert_ne!(spc, 0, "invalid tablespace 0");
        Key::from_fields(SPACE_REL, spc, db, 0, 0, 0)
    }

    /// The `pg_filenode.map` of database `db` in tablespace `spc`.
    pub fn relmap_file(spc: u32, db: u32) -> Key {
        assert_ne!(spc, 0, "invalid tablespace 0");
        Key::from_fields(SPACE_REL, spc, db, 0, 0, RELMAP_BLK)
    }

    /// Every key of database `db` in tablespace `spc`: its directory, relmap and
    /// relations.
    pub fn db_range(spc: u32, db: u32) -> Range<Key> {
        let start = Key::rel_dir(spc, db);
        let end = match db.checked_add(1) {
            Some(next_db) => Key::from_fields(SPACE_REL, spc, next_db, 0, 0, 0),
            None => Key::from_fields(SPACE_REL, spc, u32::MAX, u32::MAX, u8::MAX, u32::MAX).next(),
        };
        start..end
    }

    /// Every key of the relation space (directories, relmaps, relations).
    pub const fn rel_space_range() -> Range<Key> {
        Key::from_fields(SPACE_REL, 0, 0, 0, 0, 0)..Key::from_fields(SPACE_SLRU, 0, 0, 0, 0, 0)
    }

    /// The list of segments of an SLRU.
    pub const fn slru_dir(slru: SlruKind) -> Key {
        Key::from_fields(SPACE_SLRU, slru as u32, 0, 0, 0, 0)
    }

    /// Page `blk` of segment `segno` of an SLRU.
    pub fn slru_page(slru: SlruKind, segno: u32, blk: u32) -> Key {
        assert_ne!(blk, SIZE_BLK, "InvalidBlockNumber is not an SLRU page");
        Key::from_fields(SPACE_SLRU, slru as u32, SLRU_PAGES_F3, segno, 0, blk)
    }

    /// The size (in pages) of segment `segno` of an SLRU.
    pub const fn slru_segment_size(slru: SlruKind, segno: u32) -> Key {
        Key::from_fields(SPACE_SLRU, slru as u32, SLRU_PAGES_F3, segno, 0, SIZE_BLK)
    }

    /// Every page of one SLRU segment, and its size key.
    pub fn slru_segment_range(slru: SlruKind, segno: u32) -> Range<Key> {
        Key::from_fields(SPACE_SLRU, slru as u32, SLRU_PAGES_F3, segno, 0, 0)
            ..Key::slru_segment_size(slru, segno).next()
    }

    /// Every key of one SLRU: directory, pages, segment sizes.
    pub const fn slru_range(slru: SlruKind) -> Range<Key> {
        Key::from_fields(SPACE_SLRU, slru as u32, 0, 0, 0, 0)
            ..Key::from_fields(SPACE_SLRU, slru as u32 + 1, 0, 0, 0, 0)
    }

    /// The list of prepared transactions.
    pub const fn twophase_dir() -> Key {
        Key::from_fields(SPACE_TWOPHASE, 0, 0, 0, 0, 0)
    }

    /// The state file of prepared transaction `xid`.
    pub fn twophase_file(xid: u32) -> Key {
        assert_ne!(xid, 0, "InvalidTransactionId has no two-phase file");
        Key::from_fields(SPACE_TWOPHASE, 0, 0, 0, 0, xid)
    }

    /// The `pg_control` contents.
    pub const fn control_file() -> Key {
        Key::from_fields(SPACE_CONTROL, 0, 0, 0, 0, 0)
    }

    /// The last checkpoint record's contents (CheckPoint), tracked from WAL.
    pub const fn checkpoint() -> Key {
        Key::from_fields(SPACE_CONTROL, 0, 0, 0, 0, CHECKPOINT_BLK)
    }

    /// The smallest key greater than this one (bytewise successor); [`Key::MAX`] stays.
    pub fn next(self) -> Key {
        let mut bytes = self.to_bytes();
        for byte in bytes.iter_mut().rev() {
            if *byte == u8::MAX {
                *byte = 0;
            } else {
                *byte += 1;
                return Key::from_bytes(bytes);
            }
        }
        Key::MAX
    }

    /// The range holding exactly this key.
    pub fn singleton(self) -> Range<Key> {
        self..self.next()
    }

    pub fn to_bytes(self) -> [u8; KEY_BYTES] {
        let mut out = [0u8; KEY_BYTES];
        out[0] = self.space;
        out[1..5].copy_from_slice(&self.field2.to_be_bytes());
        out[5..9].copy_from_slice(&self.field3.to_be_bytes());
        out[9..13].copy_from_slice(&self.field4.to_be_bytes());
        out[13] = self.fork;
        out[14..18].copy_from_slice(&self.blk.to_be_bytes());
        out
    }

    pub fn from_bytes(bytes: [u8; KEY_BYTES]) -> Key {
        let be32 = |at: usize| {
            u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
        };
        Key::from_fields(bytes[0], be32(1), be32(5), be32(9), bytes[13], be32(14))
    }

    /// What this key names.
    pub fn classify(self) -> KeyClass {
        let Key {
            space,
            field2,
            field3,
            field4,
            fork,
            blk,
        } = self;
        match space {
            SPACE_REL => {
                if (field2, field3, field4, fork, blk) == (0, 0, 0, 0, 0) {
                    return KeyClass::DbDir;
                }
                if field2 == 0 {
                    return KeyClass::Other;
                }
                if field4 == 0 {
                    return match (fork, blk) {
                        (0, 0) => KeyClass::RelDir {
                            spc: field2,
                            db: field3,
                        },
                        (0, RELMAP_BLK) => KeyClass::RelMap {
                            spc: field2,
                            db: field3,
                        },
                        _ => KeyClass::Other,
                    };
                }
                let Some(fork) = ForkNumber::from_u8(fork) else {
                    return KeyClass::Other;
                };
                let rel = RelFileNode {
                    spc_node: field2,
                    db_node: field3,
                    rel_node: field4,
                };
                if blk == SIZE_BLK {
                    KeyClass::RelSize { rel, fork }
                } else {
                    KeyClass::RelBlock { rel, fork, blk }
                }
            }
            SPACE_SLRU => {
                let Some(slru) = u8::try_from(field2).ok().and_then(SlruKind::from_u8) else {
                    return KeyClass::Other;
                };
                match (field3, field4, fork, blk) {
                    (0, 0, 0, 0) => KeyClass::SlruDir(slru),
                    (SLRU_PAGES_F3, segno, 0, SIZE_BLK) => {
                        KeyClass::SlruSegmentSize { slru, segno }
                    }
                    (SLRU_PAGES_F3, segno, 0, blk) => KeyClass::SlruPage { slru, segno, blk },
                    _ => KeyClass::Other,
                }
            }
            SPACE_TWOPHASE if (field2, field3, field4, fork) == (0, 0, 0, 0) => match blk {
                0 => KeyClass::TwoPhaseDir,
                xid => KeyClass::TwoPhaseFile { xid },
            },
            SPACE_CONTROL if (field2, field3, field4, fork) == (0, 0, 0, 0) => match blk {
                0 => KeyClass::ControlFile,
                CHECKPOINT_BLK => KeyClass::Checkpoint,
                _ => KeyClass::Other,
            },
            _ => KeyClass::Other,
        }
    }

    /// The relation and fork of a relation block or size key.
    pub fn rel(self) -> Option<(RelFileNode, ForkNumber)> {
        match self.classify() {
            KeyClass::RelBlock { rel, fork, .. } | KeyClass::RelSize { rel, fork } => {
                Some((rel, fork))
            }
            _ => None,
        }
    }

    /// The block number of a relation block or SLRU page key.
    pub fn block(self) -> Option<u32> {
        match self.classify() {
            KeyClass::RelBlock { blk, .. } | KeyClass::SlruPage { blk, .. } => Some(blk),
            _ => None,
        }
    }

    /// Whether the key holds an 8 KiB page (relation block or SLRU page) rather than a
    /// small blob.
    pub fn is_page(self) -> bool {
        matches!(
            self.classify(),
            KeyClass::RelBlock { .. } | KeyClass::SlruPage { .. }
        )
    }
}

impl fmt::Display for KeyClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rel = |f: &mut fmt::Formatter<'_>, rel: &RelFileNode, fork: &ForkNumber| {
            write!(
                f,
                "rel {}/{}/{}.{}",
                rel.spc_node,
                rel.db_node,
                rel.rel_node,
                fork_name(*fork)
            )
        };
        match self {
            KeyClass::DbDir => write!(f, "dbdir"),
            KeyClass::RelDir { spc, db } => write!(f, "reldir {spc}/{db}"),
            KeyClass::RelMap { spc, db } => write!(f, "relmap {spc}/{db}"),
            KeyClass::RelBlock { rel: r, fork, blk } => {
                rel(f, r, fork)?;
                write!(f, " blk {blk}")
            }
            KeyClass::RelSize { rel: r, fork } => {
                rel(f, r, fork)?;
                write!(f, " size")
            }
            KeyClass::SlruDir(slru) => write!(f, "slrudir {}", slru.dir_name()),
            KeyClass::SlruPage { slru, segno, blk } => {
                write!(f, "slru {} seg {segno:04X} blk {blk}", slru.dir_name())
            }
            KeyClass::SlruSegmentSize { slru, segno } => {
                write!(f, "slru {} seg {segno:04X} size", slru.dir_name())
            }
            KeyClass::TwoPhaseDir => write!(f, "twophasedir"),
            KeyClass::TwoPhaseFile { xid } => write!(f, "twophase {xid}"),
            KeyClass::ControlFile => write!(f, "controlfile"),
            KeyClass::Checkpoint => write!(f, "checkpoint"),
            KeyClass::Other => write!(f, "other"),
        }
    }
}

/// 36 hexadecimal digits, the bytes in order (what file names use; [`FromStr`] parses
/// it back).
impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.to_bytes() {
            write!(f, "{byte:02X}")?;
        }
        Ok(())
    }
}

/// The decoded form, then the hex: `rel 1663/5/16384.main blk 7 (00…)`.
impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({self})", self.classify())
    }
}

impl FromStr for Key {
    type Err = ParseKeyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseKeyError(s.to_string());
        if s.len() != KEY_BYTES * 2 || !s.is_ascii() {
            return Err(err());
        }
        let mut bytes = [0u8; KEY_BYTES];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| err())?;
        }
        Ok(Key::from_bytes(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REL: RelFileNode = RelFileNode {
        spc_node: 1663,
        db_node: 5,
        rel_node: 16384,
    };

    #[test]
    fn byte_order_is_field_order() {
        let keys = [
            Key::db_dir(),
            Key::rel_dir(1663, 5),
            Key::relmap_file(1663, 5),
            Key::rel_block(REL, ForkNumber::Main, 0),
            Key::rel_block(REL, ForkNumber::Main, 7),
            Key::rel_block(REL, ForkNumber::Main, u32::MAX - 1),
            Key::rel_size(REL, ForkNumber::Main),
            Key::rel_block(REL, ForkNumber::Fsm, 0),
            Key::slru_dir(SlruKind::Clog),
            Key::slru_page(SlruKind::Clog, 0, 3),
            Key::slru_segment_size(SlruKind::Clog, 0),
            Key::slru_page(SlruKind::MultiXactMembers, 1, 0),
            Key::twophase_dir(),
            Key::twophase_file(700),
            Key::control_file(),
            Key::checkpoint(),
        ];
        for pair in keys.windows(2) {
            assert!(pair[0] < pair[1], "{:?} < {:?}", pair[0], pair[1]);
            assert!(pair[0].to_bytes() < pair[1].to_bytes());
        }
        for key in keys {
            assert_eq!(Key::from_bytes(key.to_bytes()), key);
            assert_eq!(key.to_string().parse::<Key>(), Ok(key));
            assert_ne!(key.classify(), KeyClass::Other, "{key:?}");
            assert!(Key::MIN <= key && key < Key::MAX);
        }
    }

    #[test]
    fn ranges_hold_what_they_name() {
        let blocks = Key::rel_block_range(REL, ForkNumber::Main);
        assert!(blocks.contains(&Key::rel_block(REL, ForkNumber::Main, 0)));
        assert!(blocks.contains(&Key::rel_block(REL, ForkNumber::Main, u32::MAX - 1)));
        assert!(!blocks.contains(&Key::rel_size(REL, ForkNumber::Main)));
        let all = Key::rel_range(REL, ForkNumber::Main);
        assert!(all.contains(&Key::rel_size(REL, ForkNumber::Main)));
        assert!(!all.contains(&Key::rel_block(REL, ForkNumber::Fsm, 0)));
        let db = Key::db_range(1663, 5);
        assert!(db.contains(&Key::rel_dir(1663, 5)) && db.contains(&Key::relmap_file(1663, 5)));
        assert!(db.contains(&Key::rel_size(REL, ForkNumber::Init)));
        assert!(!db.contains(&Key::rel_dir(1663, 6)));
        let seg = Key::slru_segment_range(SlruKind::Clog, 2);
        assert!(seg.contains(&Key::slru_page(SlruKind::Clog, 2, 31)));
        assert!(seg.contains(&Key::slru_segment_size(SlruKind::Clog, 2)));
        assert!(!seg.contains(&Key::slru_page(SlruKind::Clog, 3, 0)));
        assert!(Key::slru_range(SlruKind::Clog).contains(&Key::slru_dir(SlruKind::Clog)));
        assert_eq!(Key::MAX.next(), Key::MAX);
        assert_eq!(
            Key::from_fields(0, 0, 0, 0, 0, u32::MAX).next(),
            Key::from_fields(0, 0, 0, 0, 1, 0)
        );
    }

    #[test]
    fn formats_for_debugging() {
        let key = Key::rel_block(REL, ForkNumber::VisibilityMap, 7);
        assert_eq!(format!("{}", key.classify()), "rel 1663/5/16384.vm blk 7");
        assert_eq!(key.to_string(), "000000067F00000005000040000200000007");
        assert_eq!(key.rel(), Some((REL, ForkNumber::VisibilityMap)));
        assert_eq!(key.block(), Some(7));
        assert!("00".parse::<Key>().is_err());
        assert!(
            "ZZ0000067F00000005000040000200000007"
                .parse::<Key>()
                .is_err()
        );
    }
}
