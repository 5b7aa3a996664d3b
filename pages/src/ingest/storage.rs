//! The records that change which files exist and how long they are: smgr create and
//! truncate (storage.c smgr_redo), relmap updates (relmapper.c relmap_redo), CREATE
//! and DROP DATABASE (dbcommands.c dbase_redo), and the drops of committed or aborted
//! transactions.

use bytes::Bytes;
use tarn_wal::decode::{DecodedRecord, ForkNumber, RelFileNode};

use super::records::*;
use super::{
    Batch, DeltaRecord, IngestError, Ingester, KEPT_FORKS, check_tablespace, inconsistent,
    load_image, unsupported,
};
use crate::reconstruct;
use crate::store::{Key, TimelineStore};
use crate::vm::vm_blocks_after_truncate;

impl Ingester {
    // ---- storage -------------------------------------------------------------------

    pub(super) fn smgr(
        &mut self,
        store: &TimelineStore,
        batch: &mut Batch,
        record: &DecodedRecord,
    ) -> Result<(), IngestError> {
        let parse = |source| IngestError::Parse {
            lsn: record.lsn,
            source,
        };
        match record.rmgr_info() {
            XLOG_SMGR_CREATE => {
                let (rel, fork) = parse_smgr_create(record).map_err(parse)?;
                let fork = u8::try_from(fork)
                    .ok()
                    .and_then(ForkNumber::from_u8)
                    .ok_or_else(|| inconsistent(record, format!("invalid fork number {fork}")))?;
                // smgrcreate(isRedo): a fork that exists stays as it is.
                if fork != ForkNumber::Fsm && self.rel_size(store, rel, fork)?.is_none() {
                    self.create_fork(store, rel, fork)?;
                }
            }
            XLOG_SMGR_TRUNCATE => {
                let truncate = parse_smgr_truncate(record).map_err(parse)?;
                self.smgr_truncate(store, batch, truncate)?;
            }
            _ => return Err(unsupported(record, "unknown storage record")),
        }
        Ok(())
    }

    /// Mirrors smgr_redo's XLOG_SMGR_TRUNCATE: the main fork is created if missing and
    /// cut to `blkno` (never grown: mdtruncate ignores growth in recovery); the VM's
    /// last remaining page loses the truncated heap blocks' bits and the fork is cut
    /// (visibilitymap_prepare_truncate). The FSM is not kept.
    pub(super) fn smgr_truncate(
        &mut self,
        store: &TimelineStore,
        batch: &mut Batch,
        truncate: SmgrTruncate,
    ) -> Result<(), IngestError> {
        let rel = truncate.rel;
        let main = match self.rel_size(store, rel, ForkNumber::Main)? {
            Some(nblocks) => nblocks,
            None => {
                self.create_fork(store, rel, ForkNumber::Main)?;
                0
            }
        };
        if truncate.flags & SMGR_TRUNCATE_HEAP != 0 && truncate.blkno < main {
            self.set_rel_size(rel, ForkNumber::Main, Some(truncate.blkno));
        }
        if truncate.flags & SMGR_TRUNCATE_VM != 0
            && let Some(vm_nblocks) = self.rel_size(store, rel, ForkNumber::VisibilityMap)?
        {
            let (keep, partial) = vm_blocks_after_truncate(truncate.blkno);
            let mut cut = true;
            if partial {
                let last = keep - 1;
                if last < vm_nblocks {
                    batch.push(
                        Key::rel_block(rel, ForkNumber::VisibilityMap, last),
                        DeltaRecord::TruncateVmPage {
                            new_heap_nblocks: truncate.blkno,
                        },
                        false,
                    );
                    self.stats.synthesized_deltas += 1;
                } else {
                    // vm_readbuf found no page: "the file was already smaller".
                    cut = false;
                }
            }
            if cut && vm_nblocks > keep {
                self.set_rel_size(rel, ForkNumber::VisibilityMap, Some(keep));
            }
        }
        self.stats.relations_truncated += 1;
        Ok(())
    }

    // ---- relmap and databases ----------------------------------------------------------

    pub(super) fn relmap(
        &mut self,
        batch: &mut Batch,
        record: &DecodedRecord,
    ) -> Result<(), IngestError> {
        if record.rmgr_info() != XLOG_RELMAP_UPDATE {
            return Err(unsupported(record, "unknown relmap record"));
        }
        let update = parse_relmap_update(record).map_err(|source| IngestError::Parse {
            lsn: record.lsn,
            source,
        })?;
        if update.spc == 0 {
            return Err(inconsistent(record, "relmap of tablespace 0"));
        }
        batch
            .images
            .insert(Key::relmap_file(update.spc, update.db), update.data);
        self.stats.relmap_updates += 1;
        Ok(())
    }

    pub(super) fn dbase(
        &mut self,
        store: &TimelineStore,
        batch: &mut Batch,
        record: &DecodedRecord,
    ) -> Result<(), IngestError> {
        let parsed = parse_dbase(record).map_err(|source| IngestError::Parse {
            lsn: record.lsn,
            source,
        })?;
        match parsed {
            DbaseRecord::CreateWalLog { db, spc } => {
                check_tablespace(record, spc)?;
                // CreateDirAndVersionFile: the directory; relations come as records.
                self.rel_dir_mut(store, spc, db)?;
                self.dirty_rel_dirs.insert((spc, db));
                if self.db_dir_mut(store)?.0.insert((spc, db)) {
                    self.dirty_db_dir = true;
                }
                self.stats.databases_created_wal_log += 1;
            }
            DbaseRecord::CreateFileCopy {
                db,
                spc,
                src_db,
                src_spc,
            } => {
                check_tablespace(record, spc)?;
                check_tablespace(record, src_spc)?;
                self.create_db_file_copy(store, batch, record, (spc, db), (src_spc, src_db))?;
                self.stats.databases_created_file_copy += 1;
            }
            DbaseRecord::Drop { db, spcs } => {
                for spc in spcs {
                    check_tablespace(record, spc)?;
                    self.drop_db_relations(store, spc, db)?;
                    if self.db_dir_mut(store)?.0.remove(&(spc, db)) {
                        self.dirty_db_dir = true;
                    }
                }
                self.stats.databases_dropped += 1;
            }
        }
        Ok(())
    }

    /// Mirrors dbase_redo's XLOG_DBASE_CREATE_FILE_COPY: the target directory is
    /// removed if present, then every file of the template copied — here every page
    /// of every relation fork of the template as it is at this record (the state
    /// after the previous record), the sizes, the relation directory and the relmap.
    pub(super) fn create_db_file_copy(
        &mut self,
        store: &TimelineStore,
        batch: &mut Batch,
        record: &DecodedRecord,
        (spc, db): (u32, u32),
        (src_spc, src_db): (u32, u32),
    ) -> Result<(), IngestError> {
        self.drop_db_relations(store, spc, db)?;
        let at = store.last_lsn();
        let src_rels: Vec<(u32, ForkNumber)> = self
            .rel_dir_mut(store, src_spc, src_db)?
            .0
            .iter()
            .copied()
            .collect();
        for (rel_node, fork) in src_rels {
            let src = RelFileNode {
                spc_node: src_spc,
                db_node: src_db,
                rel_node,
            };
            let Some(nblocks) = self.rel_size(store, src, fork)? else {
                return Err(inconsistent(
                    record,
                    format!("template relation {src:?} {fork:?} is listed but does not exist"),
                ));
            };
            let dst = RelFileNode {
                spc_node: spc,
                db_node: db,
                rel_node,
            };
            self.create_fork(store, dst, fork)?;
            self.set_rel_size(dst, fork, Some(nblocks));
            for blk in 0..nblocks {
                let src_key = Key::rel_block(src, fork, blk);
                let page = reconstruct::get_page_at_lsn(store, src_key, at).map_err(|source| {
                    IngestError::Reconstruct {
                        lsn: record.lsn,
                        key: src_key,
                        source: Box::new(source),
                    }
                })?;
                batch.push(
                    Key::rel_block(dst, fork, blk),
                    DeltaRecord::Image(Bytes::copy_from_slice(page.as_bytes())),
                    true,
                );
                self.stats.pages_copied_by_file_copy += 1;
            }
        }
        if let Some(relmap) = load_image(store, Key::relmap_file(src_spc, src_db))? {
            batch.images.insert(Key::relmap_file(spc, db), relmap);
        }
        if self.db_dir_mut(store)?.0.insert((spc, db)) {
            self.dirty_db_dir = true;
        }
        self.dirty_rel_dirs.insert((spc, db));
        Ok(())
    }

    /// Every relation of the database is dropped and its directory emptied.
    pub(super) fn drop_db_relations(
        &mut self,
        store: &TimelineStore,
        spc: u32,
        db: u32,
    ) -> Result<(), IngestError> {
        let rels: Vec<(u32, ForkNumber)> = self
            .rel_dir_mut(store, spc, db)?
            .0
            .iter()
            .copied()
            .collect();
        for (rel_node, fork) in rels {
            let rel = RelFileNode {
                spc_node: spc,
                db_node: db,
                rel_node,
            };
            self.drop_fork(store, rel, fork)?;
        }
        self.dirty_rel_dirs.insert((spc, db));
        Ok(())
    }

    /// DropRelationFiles for one relation: every fork.
    pub(super) fn drop_relation(
        &mut self,
        store: &TimelineStore,
        rel: RelFileNode,
    ) -> Result<(), IngestError> {
        for fork in KEPT_FORKS {
            self.drop_fork(store, rel, fork)?;
        }
        self.stats.relations_dropped += 1;
        Ok(())
    }

    pub(super) fn drop_fork(
        &mut self,
        store: &TimelineStore,
        rel: RelFileNode,
        fork: ForkNumber,
    ) -> Result<(), IngestError> {
        if self.rel_size(store, rel, fork)?.is_some() {
            self.set_rel_size(rel, fork, None);
        }
        if self
            .rel_dir_mut(store, rel.spc_node, rel.db_node)?
            .0
            .remove(&(rel.rel_node, fork))
        {
            self.dirty_rel_dirs.insert((rel.spc_node, rel.db_node));
        }
        Ok(())
    }

    pub(super) fn create_fork(
        &mut self,
        store: &TimelineStore,
        rel: RelFileNode,
        fork: ForkNumber,
    ) -> Result<(), IngestError> {
        debug_assert_ne!(fork, ForkNumber::Fsm);
        self.set_rel_size(rel, fork, Some(0));
        if self
            .rel_dir_mut(store, rel.spc_node, rel.db_node)?
            .0
            .insert((rel.rel_node, fork))
        {
            self.dirty_rel_dirs.insert((rel.spc_node, rel.db_node));
        }
        self.stats.relations_created += 1;
        Ok(())
    }
}
