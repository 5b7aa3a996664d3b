//! Parsers for the main data of the records whose effects ingest synthesises: xact
//! commit/abort/prepare (xactdesc.c ParseCommitRecord / ParseAbortRecord), smgr
//! create/truncate (storage_xlog.h), dbase (dbcommands_xlog.h), relmap
//! (relmapper.h), CLOG (clog.h), multixact (multixact.h) and the XLOG records that
//! carry counters (pg_control.h, xlog_internal.h). All little-endian and checked for
//! length; a short record is a [`ParseError`], never a read out of bounds.

use tarn_wal::decode::{DecodedRecord, RelFileNode};

// Resource manager ids (rmgrlist.h) ingest dispatches on, besides those of crate::redo.
pub const RM_XACT_ID: u8 = 1;
pub const RM_CLOG_ID: u8 = 3;
pub const RM_DBASE_ID: u8 = 4;
pub const RM_TBLSPC_ID: u8 = 5;
pub const RM_MULTIXACT_ID: u8 = 6;
pub const RM_RELMAP_ID: u8 = 7;
pub const RM_HASH_ID: u8 = 12;
pub const RM_GIN_ID: u8 = 13;
pub const RM_GIST_ID: u8 = 14;
pub const RM_SPGIST_ID: u8 = 16;
pub const RM_BRIN_ID: u8 = 17;
pub const RM_COMMIT_TS_ID: u8 = 18;
pub const RM_REPLORIGIN_ID: u8 = 19;
pub const RM_GENERIC_ID: u8 = 20;
pub const RM_LOGICALMSG_ID: u8 = 21;

// XLOG rmgr (pg_control.h).
pub const XLOG_CHECKPOINT_SHUTDOWN: u8 = 0x00;
pub const XLOG_CHECKPOINT_ONLINE: u8 = 0x10;
pub const XLOG_NOOP: u8 = 0x20;
pub const XLOG_NEXTOID: u8 = 0x30;
pub const XLOG_SWITCH: u8 = 0x40;
pub const XLOG_BACKUP_END: u8 = 0x50;
pub const XLOG_PARAMETER_CHANGE: u8 = 0x60;
pub const XLOG_RESTORE_POINT: u8 = 0x70;
pub const XLOG_FPW_CHANGE: u8 = 0x80;
pub const XLOG_END_OF_RECOVERY: u8 = 0x90;
pub const XLOG_FPI_FOR_HINT: u8 = 0xA0;
pub const XLOG_FPI: u8 = 0xB0;
pub const XLOG_OVERWRITE_CONTRECORD: u8 = 0xD0;

// Transaction rmgr (xact.h): these use XLOG_XACT_OPMASK.
pub const XLOG_XACT_OPMASK: u8 = 0x70;
pub const XLOG_XACT_COMMIT: u8 = 0x00;
pub const XLOG_XACT_PREPARE: u8 = 0x10;
pub const XLOG_XACT_ABORT: u8 = 0x20;
pub const XLOG_XACT_COMMIT_PREPARED: u8 = 0x30;
pub const XLOG_XACT_ABORT_PREPARED: u8 = 0x40;
pub const XLOG_XACT_ASSIGNMENT: u8 = 0x50;
pub const XLOG_XACT_INVALIDATIONS: u8 = 0x60;
const XLOG_XACT_HAS_INFO: u8 = 0x80;
const XACT_XINFO_HAS_DBINFO: u32 = 1 << 0;
const XACT_XINFO_HAS_SUBXACTS: u32 = 1 << 1;
const XACT_XINFO_HAS_RELFILENODES: u32 = 1 << 2;
const XACT_XINFO_HAS_INVALS: u32 = 1 << 3;
const XACT_XINFO_HAS_TWOPHASE: u32 = 1 << 4;
const XACT_XINFO_HAS_DROPPED_STATS: u32 = 1 << 8;
/// sizeof(SharedInvalidationMessage).
const SIZE_OF_INVAL_MESSAGE: usize = 16;
/// sizeof(xl_xact_stats_item).
const SIZE_OF_STATS_ITEM: usize = 12;
/// sizeof(RelFileNode).
const SIZE_OF_REL_FILE_NODE: usize = 12;

// Storage rmgr (storage_xlog.h).
pub const XLOG_SMGR_CREATE: u8 = 0x10;
pub const XLOG_SMGR_TRUNCATE: u8 = 0x20;
pub const SMGR_TRUNCATE_HEAP: u32 = 0x0001;
pub const SMGR_TRUNCATE_VM: u32 = 0x0002;

// CLOG rmgr (clog.h).
pub const CLOG_ZEROPAGE: u8 = 0x00;
pub const CLOG_TRUNCATE: u8 = 0x10;

// Database rmgr (dbcommands_xlog.h).
pub const XLOG_DBASE_CREATE_FILE_COPY: u8 = 0x00;
pub const XLOG_DBASE_CREATE_WAL_LOG: u8 = 0x10;
pub const XLOG_DBASE_DROP: u8 = 0x20;

// MultiXact rmgr (multixact.h).
pub const XLOG_MULTIXACT_ZERO_OFF_PAGE: u8 = 0x00;
pub const XLOG_MULTIXACT_ZERO_MEM_PAGE: u8 = 0x10;
pub const XLOG_MULTIXACT_CREATE_ID: u8 = 0x20;
pub const XLOG_MULTIXACT_TRUNCATE_ID: u8 = 0x30;

// RelMap rmgr (relmapper.h).
pub const XLOG_RELMAP_UPDATE: u8 = 0x00;
/// sizeof(RelMapFile): the whole `pg_filenode.map`.
pub const RELMAP_FILE_BYTES: usize = 512;

/// A record's main data does not have the layout its type promises.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{record} record's main data ({len} bytes): {detail}")]
pub struct ParseError {
    pub record: String,
    pub len: usize,
    pub detail: String,
}

/// Little-endian reads from a record's main data.
struct Fields<'a> {
    record: &'a DecodedRecord,
    pos: usize,
}

impl<'a> Fields<'a> {
    fn new(record: &'a DecodedRecord) -> Fields<'a> {
        Fields { record, pos: 0 }
    }

    fn fail(&self, detail: impl Into<String>) -> ParseError {
        ParseError {
            record: self.record.type_name(),
            len: self.record.main_data.len(),
            detail: detail.into(),
        }
    }

    fn bytes(&mut self, len: usize, what: &str) -> Result<&'a [u8], ParseError> {
        let data = &self.record.main_data[..];
        let end = self
            .pos
            .checked_add(len)
            .filter(|end| *end <= data.len())
            .ok_or_else(|| self.fail(format!("too short for {what} at byte {}", self.pos)))?;
        let slice = &data[self.pos..end];
        self.pos = end;
        Ok(slice)
    }

    fn u32(&mut self, what: &str) -> Result<u32, ParseError> {
        let b = self.bytes(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn count(&mut self, what: &str) -> Result<usize, ParseError> {
        let count = self.u32(what)? as i32;
        usize::try_from(count).map_err(|_| self.fail(format!("negative {what} {count}")))
    }

    fn u32_array(&mut self, count: usize, what: &str) -> Result<Vec<u32>, ParseError> {
        let bytes = self.bytes(count.saturating_mul(4), what)?;
        Ok(bytes
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    }

    fn rel_file_node(&mut self) -> Result<RelFileNode, ParseError> {
        Ok(RelFileNode {
            spc_node: self.u32("spcNode")?,
            db_node: self.u32("dbNode")?,
            rel_node: self.u32("relNode")?,
        })
    }

    fn skip(&mut self, len: usize, what: &str) -> Result<(), ParseError> {
        self.bytes(len, what).map(|_| ())
    }
}

/// The parts of a commit or abort record ingest needs (xl_xact_parsed_commit /
/// xl_xact_parsed_abort).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct XactCompletion {
    pub subxacts: Vec<u32>,
    /// Relations whose files the commit (abort) drops.
    pub dropped_rels: Vec<RelFileNode>,
    /// The prepared transaction this record finishes (COMMIT/ABORT_PREPARED).
    pub twophase_xid: Option<u32>,
}

/// Mirrors ParseCommitRecord / ParseAbortRecord (xactdesc.c) up to the two-phase
/// part (what follows — gid, origin — changes no page). Abort records have no
/// invalidation messages.
pub fn parse_xact_completion(
    record: &DecodedRecord,
    is_commit: bool,
) -> Result<XactCompletion, ParseError> {
    let mut fields = Fields::new(record);
    fields.skip(8, "xact_time")?;
    let xinfo = if record.info & XLOG_XACT_HAS_INFO != 0 {
        fields.u32("xinfo")?
    } else {
        0
    };
    let mut parsed = XactCompletion::default();
    if xinfo & XACT_XINFO_HAS_DBINFO != 0 {
        fields.skip(8, "xl_xact_dbinfo")?;
    }
    if xinfo & XACT_XINFO_HAS_SUBXACTS != 0 {
        let n = fields.count("nsubxacts")?;
        parsed.subxacts = fields.u32_array(n, "subxacts")?;
    }
    if xinfo & XACT_XINFO_HAS_RELFILENODES != 0 {
        let n = fields.count("nrels")?;
        if n.saturating_mul(SIZE_OF_REL_FILE_NODE) > record.main_data.len() {
            return Err(fields.fail(format!("{n} relations do not fit")));
        }
        for _ in 0..n {
            parsed.dropped_rels.push(fields.rel_file_node()?);
        }
    }
    if xinfo & XACT_XINFO_HAS_DROPPED_STATS != 0 {
        let n = fields.count("nstats")?;
        fields.skip(n.saturating_mul(SIZE_OF_STATS_ITEM), "stats items")?;
    }
    if is_commit && xinfo & XACT_XINFO_HAS_INVALS != 0 {
        let n = fields.count("nmsgs")?;
        fields.skip(
            n.saturating_mul(SIZE_OF_INVAL_MESSAGE),
            "invalidation messages",
        )?;
    }
    if xinfo & XACT_XINFO_HAS_TWOPHASE != 0 {
        parsed.twophase_xid = Some(fields.u32("twophase xid")?);
    }
    Ok(parsed)
}

/// The xid of a prepared transaction: `xl_xact_prepare.xid` (the TwoPhaseFileHeader
/// that is the PREPARE record's main data), after its magic and total_len.
pub fn parse_prepare_xid(record: &DecodedRecord) -> Result<u32, ParseError> {
    let mut fields = Fields::new(record);
    fields.skip(8, "magic and total_len")?;
    fields.u32("xid")
}

/// xl_smgr_create.
pub fn parse_smgr_create(record: &DecodedRecord) -> Result<(RelFileNode, u32), ParseError> {
    let mut fields = Fields::new(record);
    let rel = fields.rel_file_node()?;
    let fork = fields.u32("forkNum")?;
    Ok((rel, fork))
}

/// xl_smgr_truncate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SmgrTruncate {
    pub blkno: u32,
    pub rel: RelFileNode,
    pub flags: u32,
}

pub fn parse_smgr_truncate(record: &DecodedRecord) -> Result<SmgrTruncate, ParseError> {
    let mut fields = Fields::new(record);
    Ok(SmgrTruncate {
        blkno: fields.u32("blkno")?,
        rel: fields.rel_file_node()?,
        flags: fields.u32("flags")?,
    })
}

/// The Database rmgr's records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DbaseRecord {
    /// xl_dbase_create_file_copy_rec.
    CreateFileCopy {
        db: u32,
        spc: u32,
        src_db: u32,
        src_spc: u32,
    },
    /// xl_dbase_create_wal_log_rec.
    CreateWalLog { db: u32, spc: u32 },
    /// xl_dbase_drop_rec.
    Drop { db: u32, spcs: Vec<u32> },
}

pub fn parse_dbase(record: &DecodedRecord) -> Result<DbaseRecord, ParseError> {
    let mut fields = Fields::new(record);
    match record.rmgr_info() {
        XLOG_DBASE_CREATE_FILE_COPY => Ok(DbaseRecord::CreateFileCopy {
            db: fields.u32("db_id")?,
            spc: fields.u32("tablespace_id")?,
            src_db: fields.u32("src_db_id")?,
            src_spc: fields.u32("src_tablespace_id")?,
        }),
        XLOG_DBASE_CREATE_WAL_LOG => Ok(DbaseRecord::CreateWalLog {
            db: fields.u32("db_id")?,
            spc: fields.u32("tablespace_id")?,
        }),
        XLOG_DBASE_DROP => {
            let db = fields.u32("db_id")?;
            let n = fields.count("ntablespaces")?;
            Ok(DbaseRecord::Drop {
                db,
                spcs: fields.u32_array(n, "tablespace_ids")?,
            })
        }
        other => Err(fields.fail(format!("unknown dbase info {other:#04x}"))),
    }
}

/// xl_relmap_update: the new `pg_filenode.map` of `(spc, db)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelmapUpdate {
    pub db: u32,
    pub spc: u32,
    pub data: bytes::Bytes,
}

pub fn parse_relmap_update(record: &DecodedRecord) -> Result<RelmapUpdate, ParseError> {
    let mut fields = Fields::new(record);
    let db = fields.u32("dbid")?;
    let spc = fields.u32("tsid")?;
    let nbytes = fields.count("nbytes")?;
    if nbytes != RELMAP_FILE_BYTES {
        return Err(fields.fail(format!(
            "relmap of {nbytes} bytes, expected {RELMAP_FILE_BYTES}"
        )));
    }
    let start = fields.pos;
    fields.skip(nbytes, "relmap data")?;
    Ok(RelmapUpdate {
        db,
        spc,
        data: record.main_data.slice(start..start + nbytes),
    })
}

/// The `int pageno` of CLOG_ZEROPAGE and XLOG_MULTIXACT_ZERO_*_PAGE.
pub fn parse_pageno(record: &DecodedRecord) -> Result<u32, ParseError> {
    Fields::new(record).u32("pageno")
}

/// xl_clog_truncate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClogTruncate {
    /// The cutoff page: segments wholly before it go.
    pub pageno: u32,
    pub oldest_xact: u32,
    pub oldest_xact_db: u32,
}

pub fn parse_clog_truncate(record: &DecodedRecord) -> Result<ClogTruncate, ParseError> {
    let mut fields = Fields::new(record);
    Ok(ClogTruncate {
        pageno: fields.u32("pageno")?,
        oldest_xact: fields.u32("oldestXact")?,
        oldest_xact_db: fields.u32("oldestXactDb")?,
    })
}

/// xl_multixact_truncate: the offsets to remove are those of multixacts
/// [start_off, end_off), the members those at offsets [start_memb, end_memb).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MultiXactTruncate {
    pub oldest_multi_db: u32,
    pub start_off: u32,
    pub end_off: u32,
    pub start_memb: u32,
    pub end_memb: u32,
}

pub fn parse_multixact_truncate(record: &DecodedRecord) -> Result<MultiXactTruncate, ParseError> {
    let mut fields = Fields::new(record);
    Ok(MultiXactTruncate {
        oldest_multi_db: fields.u32("oldestMultiDB")?,
        start_off: fields.u32("startTruncOff")?,
        end_off: fields.u32("endTruncOff")?,
        start_memb: fields.u32("startTruncMemb")?,
        end_memb: fields.u32("endTruncMemb")?,
    })
}

/// xl_multixact_create.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MultiXactCreate {
    pub mid: u32,
    pub moff: u32,
    /// (xid, status) of each member (MultiXactMember).
    pub members: Vec<(u32, u32)>,
}

pub fn parse_multixact_create(record: &DecodedRecord) -> Result<MultiXactCreate, ParseError> {
    let mut fields = Fields::new(record);
    let mid = fields.u32("mid")?;
    let moff = fields.u32("moff")?;
    let n = fields.count("nmembers")?;
    let raw = fields.u32_array(n.saturating_mul(2), "members")?;
    let members = raw.chunks_exact(2).map(|pair| (pair[0], pair[1])).collect();
    Ok(MultiXactCreate { mid, moff, members })
}

/// The main data of a checkpoint record (a CheckPoint struct).
pub fn checkpoint_bytes(record: &DecodedRecord) -> Result<&[u8], ParseError> {
    let mut fields = Fields::new(record);
    fields.bytes(super::values::SIZE_OF_CHECKPOINT, "CheckPoint")
}

/// XLOG_NEXTOID's Oid.
pub fn parse_next_oid(record: &DecodedRecord) -> Result<u32, ParseError> {
    Fields::new(record).u32("nextOid")
}

/// `wal_log_hints` of xl_parameter_change (after six ints).
pub fn parse_wal_log_hints(record: &DecodedRecord) -> Result<bool, ParseError> {
    let mut fields = Fields::new(record);
    fields.skip(24, "MaxConnections .. wal_level")?;
    Ok(fields.bytes(1, "wal_log_hints")?[0] != 0)
}
