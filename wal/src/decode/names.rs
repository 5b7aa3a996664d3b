//! Record type names as `pg_waldump` prints them ("Heap/INSERT+INIT"): the rmgr names
//! of rmgrlist.h and the `*_identify` functions of src/backend/access/rmgrdesc/.

use crate::format::XLR_INFO_MASK;

/// Resource manager names by id (rmgrlist.h, PG15).
const RMGR_NAMES: [&str; 22] = [
    "XLOG",
    "Transaction",
    "Storage",
    "CLOG",
    "Database",
    "Tablespace",
    "MultiXact",
    "RelMap",
    "Standby",
    "Heap2",
    "Heap",
    "Btree",
    "Hash",
    "Gin",
    "Gist",
    "Sequence",
    "SPGist",
    "BRIN",
    "CommitTs",
    "ReplicationOrigin",
    "Generic",
    "LogicalMessage",
];

/// The rmgr's name as `pg_waldump` prints it: the built-in name, `custom###` for a
/// custom rmgr id (128..=255, as pg_waldump's rmgrdesc.c), or `rmgr###` for an id no
/// rmgr may have.
pub fn rmgr_name(rmid: u8) -> String {
    match RMGR_NAMES.get(usize::from(rmid)) {
        Some(name) => (*name).to_string(),
        None if rmid >= crate::format::record::RM_MIN_CUSTOM_ID => format!("custom{rmid:03}"),
        None => format!("rmgr{rmid:03}"),
    }
}

/// The record type of a record with `rmid` and xl_info `info`: "rmgr/TYPE", where TYPE
/// is what the rmgr's `*_identify(info)` returns, or "UNKNOWN (xx)" with the rmgr bits
/// of `info` in hex when it returns NULL (pg_waldump's fallback).
pub fn record_type_name(rmid: u8, info: u8) -> String {
    let rmgr = rmgr_name(rmid);
    match identify(rmid, info) {
        Some(id) => format!("{rmgr}/{id}"),
        None => format!("{rmgr}/UNKNOWN ({:x})", info & !XLR_INFO_MASK),
    }
}

/// Mirrors each rmgr's `*_identify` (rmgrdesc/*.c). Most switch on `info &
/// ~XLR_INFO_MASK`; xact_identify on `info & XLOG_XACT_OPMASK`; commit_ts_identify and
/// replorigin_identify on the whole of `info`.
fn identify(rmid: u8, info: u8) -> Option<&'static str> {
    let rmgr_info = info & !XLR_INFO_MASK;
    Some(match rmid {
        // xlog_identify (xlogdesc.c)
        0 => match rmgr_info {
            0x00 => "CHECKPOINT_SHUTDOWN",
            0x10 => "CHECKPOINT_ONLINE",
            0x20 => "NOOP",
            0x30 => "NEXTOID",
            0x40 => "SWITCH",
            0x50 => "BACKUP_END",
            0x60 => "PARAMETER_CHANGE",
            0x70 => "RESTORE_POINT",
            0x80 => "FPW_CHANGE",
            0x90 => "END_OF_RECOVERY",
            0xA0 => "FPI_FOR_HINT",
            0xB0 => "FPI",
            0xD0 => "OVERWRITE_CONTRECORD",
            _ => return None,
        },
        // xact_identify (xactdesc.c): XLOG_XACT_OPMASK; 0x80 is XLOG_XACT_HAS_INFO.
        1 => match info & 0x70 {
            0x00 => "COMMIT",
            0x10 => "PREPARE",
            0x20 => "ABORT",
            0x30 => "COMMIT_PREPARED",
            0x40 => "ABORT_PREPARED",
            0x50 => "ASSIGNMENT",
            0x60 => "INVALIDATION",
            _ => return None,
        },
        // smgr_identify (smgrdesc.c)
        2 => match rmgr_info {
            0x10 => "CREATE",
            0x20 => "TRUNCATE",
            _ => return None,
        },
        // clog_identify (clogdesc.c)
        3 => match rmgr_info {
            0x00 => "ZEROPAGE",
            0x10 => "TRUNCATE",
            _ => return None,
        },
        // dbase_identify (dbasedesc.c)
        4 => match rmgr_info {
            0x00 => "CREATE_FILE_COPY",
            0x10 => "CREATE_WAL_LOG",
            0x20 => "DROP",
            _ => return None,
        },
        // tblspc_identify (tblspcdesc.c)
        5 => match rmgr_info {
            0x00 => "CREATE",
            0x10 => "DROP",
            _ => return None,
        },
        // multixact_identify (mxactdesc.c)
        6 => match rmgr_info {
            0x00 => "ZERO_OFF_PAGE",
            0x10 => "ZERO_MEM_PAGE",
            0x20 => "CREATE_ID",
            0x30 => "TRUNCATE_ID",
            _ => return None,
        },
        // relmap_identify (relmapdesc.c)
        7 => match rmgr_info {
            0x00 => "UPDATE",
            _ => return None,
        },
        // standby_identify (standbydesc.c)
        8 => match rmgr_info {
            0x00 => "LOCK",
            0x10 => "RUNNING_XACTS",
            0x20 => "INVALIDATIONS",
            _ => return None,
        },
        // heap2_identify (heapdesc.c); 0x80 is XLOG_HEAP_INIT_PAGE.
        9 => match rmgr_info {
            0x00 => "REWRITE",
            0x10 => "PRUNE",
            0x20 => "VACUUM",
            0x30 => "FREEZE_PAGE",
            0x40 => "VISIBLE",
            0x50 => "MULTI_INSERT",
            0xD0 => "MULTI_INSERT+INIT",
            0x60 => "LOCK_UPDATED",
            0x70 => "NEW_CID",
            _ => return None,
        },
        // heap_identify (heapdesc.c)
        10 => match rmgr_info {
            0x00 => "INSERT",
            0x80 => "INSERT+INIT",
            0x10 => "DELETE",
            0x20 => "UPDATE",
            0xA0 => "UPDATE+INIT",
            0x40 => "HOT_UPDATE",
            0xC0 => "HOT_UPDATE+INIT",
            0x30 => "TRUNCATE",
            0x50 => "HEAP_CONFIRM",
            0x60 => "LOCK",
            0x70 => "INPLACE",
            _ => return None,
        },
        // btree_identify (nbtdesc.c)
        11 => match rmgr_info {
            0x00 => "INSERT_LEAF",
            0x10 => "INSERT_UPPER",
            0x20 => "INSERT_META",
            0x30 => "SPLIT_L",
            0x40 => "SPLIT_R",
            0x50 => "INSERT_POST",
            0x60 => "DEDUP",
            0x70 => "DELETE",
            0x80 => "UNLINK_PAGE",
            0x90 => "UNLINK_PAGE_META",
            0xA0 => "NEWROOT",
            0xB0 => "MARK_PAGE_HALFDEAD",
            0xC0 => "VACUUM",
            0xD0 => "REUSE_PAGE",
            0xE0 => "META_CLEANUP",
            _ => return None,
        },
        // hash_identify (hashdesc.c)
        12 => match rmgr_info {
            0x00 => "INIT_META_PAGE",
            0x10 => "INIT_BITMAP_PAGE",
            0x20 => "INSERT",
            0x30 => "ADD_OVFL_PAGE",
            0x40 => "SPLIT_ALLOCATE_PAGE",
            0x50 => "SPLIT_PAGE",
            0x60 => "SPLIT_COMPLETE",
            0x70 => "MOVE_PAGE_CONTENTS",
            0x80 => "SQUEEZE_PAGE",
            0x90 => "DELETE",
            0xA0 => "SPLIT_CLEANUP",
            0xB0 => "UPDATE_META_PAGE",
            0xC0 => "VACUUM_ONE_PAGE",
            _ => return None,
        },
        // gin_identify (gindesc.c)
        13 => match rmgr_info {
            0x10 => "CREATE_PTREE",
            0x20 => "INSERT",
            0x30 => "SPLIT",
            0x40 => "VACUUM_PAGE",
            0x90 => "VACUUM_DATA_LEAF_PAGE",
            0x50 => "DELETE_PAGE",
            0x60 => "UPDATE_META_PAGE",
            0x70 => "INSERT_LISTPAGE",
            0x80 => "DELETE_LISTPAGE",
            _ => return None,
        },
        // gist_identify (gistdesc.c)
        14 => match rmgr_info {
            0x00 => "PAGE_UPDATE",
            0x10 => "DELETE",
            0x20 => "PAGE_REUSE",
            0x30 => "PAGE_SPLIT",
            0x60 => "PAGE_DELETE",
            0x70 => "ASSIGN_LSN",
            _ => return None,
        },
        // seq_identify (seqdesc.c)
        15 => match rmgr_info {
            0x00 => "LOG",
            _ => return None,
        },
        // spg_identify (spgdesc.c)
        16 => match rmgr_info {
            0x10 => "ADD_LEAF",
            0x20 => "MOVE_LEAFS",
            0x30 => "ADD_NODE",
            0x40 => "SPLIT_TUPLE",
            0x50 => "PICKSPLIT",
            0x60 => "VACUUM_LEAF",
            0x70 => "VACUUM_ROOT",
            0x80 => "VACUUM_REDIRECT",
            _ => return None,
        },
        // brin_identify (brindesc.c); 0x80 is XLOG_BRIN_INIT_PAGE.
        17 => match rmgr_info {
            0x00 => "CREATE_INDEX",
            0x10 => "INSERT",
            0x90 => "INSERT+INIT",
            0x20 => "UPDATE",
            0xA0 => "UPDATE+INIT",
            0x30 => "SAMEPAGE_UPDATE",
            0x40 => "REVMAP_EXTEND",
            0x50 => "DESUMMARIZE",
            _ => return None,
        },
        // commit_ts_identify (committsdesc.c) switches on the whole of info.
        18 => match info {
            0x00 => "ZEROPAGE",
            0x10 => "TRUNCATE",
            _ => return None,
        },
        // replorigin_identify (replorigindesc.c) switches on the whole of info.
        19 => match info {
            0x00 => "SET",
            0x10 => "DROP",
            _ => return None,
        },
        // generic_identify (genericdesc.c)
        20 => "Generic",
        // logicalmsg_identify (logicalmsgdesc.c)
        21 => match rmgr_info {
            0x00 => "MESSAGE",
            _ => return None,
        },
        _ => return None,
    })
}
