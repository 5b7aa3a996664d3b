//! Delta chains as the store holds them, for the replay allocation test and the replay
//! benchmark: a page image followed by deltas, each delta a WAL record laid out byte
//! for byte as XLogRecordAssemble writes it (or one of tarn's synthesised changes).
//!
//! The chains are grown by redoing each record on a working copy of the page with
//! [`apply_record`], so every record is one the page accepts at that point: offsets
//! name existing line pointers, tuples fit, posting lists split where they can. The
//! heap chain cycles through INSERT, HOT and non-HOT UPDATE (same page, prefix and
//! suffix compression; and the old half of a cross-page update), LOCK, DELETE,
//! MULTI_INSERT, PRUNE (redirects, dead and unused), VACUUM, FREEZE_PAGE and VISIBLE,
//! with a compressed XLOG_FPI (pglz, LZ4, zstd in turn) now and then; the btree chain
//! through INSERT_LEAF, DEDUP, INSERT_POST, VACUUM and DELETE with posting list
//! updates, SPLIT_L and an image delta. Small VM, CLOG and multixact chains cover the
//! synthesised records.
//!
//! Uses only the public API (it is built against older trees for before/after
//! benchmarks too).

#![allow(dead_code)]

use std::collections::HashMap;

use bytes::Bytes;
use tarn_pages::Page;
use tarn_pages::btree::BtPageOpaque;
use tarn_pages::ingest::{
    DeltaRecord, MemberWrite, TRANSACTION_STATUS_ABORTED, TRANSACTION_STATUS_COMMITTED,
    encode_delta,
};
use tarn_pages::redo::RedoSettings;
use tarn_pages::store::{Key, ReconstructData, SlruKind, Value};
use tarn_wal::Lsn;
use tarn_wal::decode::{ForkNumber, RelFileNode, decode_record, record_type_name};

const BLCKSZ: usize = 8192;
const RM_XLOG_ID: u8 = 0;
const RM_HEAP2_ID: u8 = 9;
const RM_HEAP_ID: u8 = 10;
const RM_BTREE_ID: u8 = 11;

pub const HEAP_REL: RelFileNode = RelFileNode {
    spc_node: 1663,
    db_node: 5,
    rel_node: 16384,
};
pub const INDEX_REL: RelFileNode = RelFileNode {
    spc_node: 1663,
    db_node: 5,
    rel_node: 16390,
};

/// A key's versions, ready for `replay`.
pub struct Workload {
    pub name: &'static str,
    pub key: Key,
    pub data: ReconstructData,
    /// Records inside the deltas.
    pub records: usize,
}

impl Workload {
    pub fn deltas(&self) -> usize {
        self.data.deltas.len()
    }

    /// The kinds of records in the chain: WAL record types as pg_waldump names them
    /// ("Heap/HOT_UPDATE"), tarn's own by name ("image", "clog set status").
    pub fn record_kinds(&self) -> std::collections::BTreeSet<String> {
        let mut kinds = std::collections::BTreeSet::new();
        for (_, value) in &self.data.deltas {
            let Value::Delta { record, .. } = value else {
                continue;
            };
            for delta in tarn_pages::ingest::decode_delta(record).expect("the delta decodes") {
                match &delta {
                    DeltaRecord::Wal { lsn, record, .. } => {
                        let decoded = decode_record(*lsn, record).expect("the record decodes");
                        kinds.insert(record_type_name(decoded.rmid, decoded.info));
                    }
                    other => {
                        kinds.insert(other.kind().to_string());
                    }
                }
            }
        }
        kinds
    }
}

/// Every chain, each with `deltas` deltas.
pub fn all(deltas: usize) -> Vec<Workload> {
    vec![
        heap(deltas),
        btree(deltas),
        vm(deltas),
        clog(deltas),
        multixact_offsets(deltas),
        multixact_members(deltas),
    ]
}

/// How a block image is stored in the record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Pglz,
    Lz4,
    Zstd,
}

/// One block reference to assemble.
struct Block {
    block_id: u8,
    rel: RelFileNode,
    fork: ForkNumber,
    block: u32,
    will_init: bool,
    data: Vec<u8>,
    image: Option<(Page, Compression)>,
}

impl Block {
    fn new(block_id: u8, rel: RelFileNode, block: u32, data: Vec<u8>) -> Block {
        Block {
            block_id,
            rel,
            fork: ForkNumber::Main,
            block,
            will_init: false,
            data,
            image: None,
        }
    }

    fn will_init(mut self) -> Block {
        self.will_init = true;
        self
    }
}

/// The stored form of a page image: the hole between pd_lower and pd_upper left out,
/// then compressed. Returns (stored bytes, hole offset, hole length, bimg_info bits).
fn stored_image(page: &Page, compression: Compression) -> (Vec<u8>, u16, u16, u8) {
    const BKPIMAGE_HAS_HOLE: u8 = 0x01;
    const BKPIMAGE_APPLY: u8 = 0x02;
    let (lower, upper) = (usize::from(page.lower()), usize::from(page.upper()));
    let (hole_offset, hole_length) = if upper > lower && lower >= 24 {
        (lower, upper - lower)
    } else {
        (0, 0)
    };
    let bytes = page.as_bytes();
    let mut raw = bytes[..hole_offset].to_vec();
    raw.extend_from_slice(&bytes[hole_offset + hole_length..]);
    let mut info = BKPIMAGE_APPLY;
    if hole_length > 0 {
        info |= BKPIMAGE_HAS_HOLE;
    }
    let stored = match compression {
        Compression::None => raw,
        Compression::Pglz => {
            info |= 0x04;
            pglz_compress(&raw)
        }
        Compression::Lz4 => {
            info |= 0x08;
            lz4_flex::block::compress(&raw)
        }
        Compression::Zstd => {
            info |= 0x10;
            zstd::bulk::compress(&raw, 1).expect("zstd compresses")
        }
    };
    (stored, hole_offset as u16, hole_length as u16, info)
}

/// A record laid out as XLogRecordAssemble does: header, block headers (SAME_REL for a
/// repeated relation), main data header, then each block's image and data, then the
/// main data. xl_prev and the CRC are left zero: decoding does not check them.
fn assemble(xid: u32, rmid: u8, info: u8, blocks: &[Block], main: &[u8]) -> Vec<u8> {
    let mut headers = Vec::new();
    let mut payload = Vec::new();
    let mut last_rel = None;
    for block in blocks {
        let mut fork_flags = block.fork as u8;
        let image = block
            .image
            .as_ref()
            .map(|(page, compression)| stored_image(page, *compression));
        if image.is_some() {
            fork_flags |= 0x10;
        }
        if !block.data.is_empty() {
            fork_flags |= 0x20;
        }
        if block.will_init {
            fork_flags |= 0x40;
        }
        let same_rel = last_rel == Some(block.rel);
        if same_rel {
            fork_flags |= 0x80;
        }
        headers.push(block.block_id);
        headers.push(fork_flags);
        headers.extend_from_slice(&(block.data.len() as u16).to_le_bytes());
        if let Some((stored, hole_offset, hole_length, bimg_info)) = &image {
            headers.extend_from_slice(&(stored.len() as u16).to_le_bytes());
            headers.extend_from_slice(&hole_offset.to_le_bytes());
            headers.push(*bimg_info);
            if bimg_info & 0x1C != 0 && bimg_info & 0x01 != 0 {
                headers.extend_from_slice(&hole_length.to_le_bytes());
            }
            payload.extend_from_slice(stored);
        }
        if !same_rel {
            for field in [block.rel.spc_node, block.rel.db_node, block.rel.rel_node] {
                headers.extend_from_slice(&field.to_le_bytes());
            }
        }
        headers.extend_from_slice(&block.block.to_le_bytes());
        payload.extend_from_slice(&block.data);
        last_rel = Some(block.rel);
    }
    if !main.is_empty() {
        if main.len() <= 255 {
            headers.push(255);
            headers.push(main.len() as u8);
        } else {
            headers.push(254);
            headers.extend_from_slice(&(main.len() as u32).to_le_bytes());
        }
        payload.extend_from_slice(main);
    }
    let tot_len = 24 + headers.len() + payload.len();
    let mut bytes = Vec::with_capacity(tot_len);
    bytes.extend_from_slice(&(tot_len as u32).to_le_bytes());
    bytes.extend_from_slice(&xid.to_le_bytes());
    bytes.extend_from_slice(&0u64.to_le_bytes());
    bytes.push(info);
    bytes.push(rmid);
    bytes.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    bytes.extend_from_slice(&headers);
    bytes.extend_from_slice(&payload);
    bytes
}

/// Grows one key's chain: records are redone on `page` as they are added.
struct Chain {
    key: Key,
    rel: RelFileNode,
    fork: ForkNumber,
    blkno: u32,
    page: Page,
    next_lsn: u64,
    xid: u32,
    image: Option<(Lsn, Bytes)>,
    deltas: Vec<(Lsn, Value)>,
    records: usize,
    rng: u64,
}

impl Chain {
    fn new(rel: RelFileNode, fork: ForkNumber, blkno: u32) -> Chain {
        Chain {
            key: Key::rel_block(rel, fork, blkno),
            rel,
            fork,
            blkno,
            page: Page::zeroed(),
            next_lsn: 0x0100_0028,
            xid: 1000,
            image: None,
            deltas: Vec::new(),
            records: 0,
            rng: 0x9E37_79B9_7F4A_7C15,
        }
    }

    fn random(&mut self, below: u32) -> u32 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng % u64::from(below)) as u32
    }

    fn next_xid(&mut self) -> u32 {
        self.xid += 1;
        self.xid
    }

    /// Adds the record as a delta of this key (its block `ours`), after redoing it.
    fn wal(&mut self, rmid: u8, info: u8, blocks: &[Block], main: &[u8], ours: u8) {
        let xid = self.next_xid();
        let bytes = assemble(xid, rmid, info, blocks, main);
        let lsn = Lsn(self.next_lsn);
        let decoded = decode_record(lsn, &bytes).expect("the workload's record decodes");
        tarn_pages::apply_record(&decoded, ours, &mut self.page).unwrap_or_else(|error| {
            panic!("the workload's record does not redo: {error}");
        });
        let delta = DeltaRecord::Wal {
            block_id: ours,
            settings: RedoSettings::default(),
            lsn,
            end_lsn: decoded.end_lsn,
            record: Bytes::from(bytes),
        };
        self.push(decoded.end_lsn, vec![delta]);
    }

    /// Adds synthesised records as one delta (applied to the working page by the
    /// caller).
    fn push(&mut self, end_lsn: Lsn, records: Vec<DeltaRecord>) {
        self.records += records.len();
        self.deltas.push((
            end_lsn,
            Value::Delta {
                will_init: false,
                record: encode_delta(&records),
            },
        ));
        self.next_lsn = end_lsn.0;
    }

    /// Makes the page as it is now the chain's image: what came before is history.
    fn snapshot(&mut self) {
        self.image = Some((
            Lsn(self.next_lsn),
            Bytes::copy_from_slice(self.page.as_bytes()),
        ));
        self.deltas.clear();
        self.records = 0;
    }

    fn finish(self, name: &'static str) -> Workload {
        Workload {
            name,
            key: self.key,
            data: ReconstructData {
                image: self.image,
                deltas: self.deltas,
            },
            records: self.records,
        }
    }

    fn block(&self, block_id: u8, data: Vec<u8>) -> Block {
        let mut block = Block::new(block_id, self.rel, self.blkno, data);
        block.fork = self.fork;
        block
    }

    /// XLOG_FPI of the page as it is, its image compressed with `compression`.
    fn fpi(&mut self, compression: Compression) {
        let mut block = self.block(0, Vec::new());
        block.image = Some((self.page.clone(), compression));
        self.wal(RM_XLOG_ID, 0xB0, &[block], &[], 0);
    }
}

fn le16(value: u16) -> [u8; 2] {
    value.to_le_bytes()
}

fn le32(value: u32) -> [u8; 4] {
    value.to_le_bytes()
}

// ---- heap ------------------------------------------------------------------------

const XLOG_HEAP_INSERT: u8 = 0x00;
const XLOG_HEAP_DELETE: u8 = 0x10;
const XLOG_HEAP_UPDATE: u8 = 0x20;
const XLOG_HEAP_HOT_UPDATE: u8 = 0x40;
const XLOG_HEAP_LOCK: u8 = 0x60;
const XLOG_HEAP_INIT_PAGE: u8 = 0x80;
const XLOG_HEAP2_PRUNE: u8 = 0x10;
const XLOG_HEAP2_VACUUM: u8 = 0x20;
const XLOG_HEAP2_FREEZE_PAGE: u8 = 0x30;
const XLOG_HEAP2_VISIBLE: u8 = 0x40;
const XLOG_HEAP2_MULTI_INSERT: u8 = 0x50;

const HEAP_HASVARWIDTH: u16 = 0x0002;
const HEAP_XMAX_INVALID: u16 = 0x0800;
const HEAP_XMIN_COMMITTED: u16 = 0x0100;
const HEAP_ONLY_TUPLE: u16 = 0x8000;
const HEAP_UPDATED: u16 = 0x2000;

/// xl_heap_header (3 attributes, varwidth, t_hoff 24) and the tuple's data after the
/// 23-byte header: one padding byte, then `body`.
fn heap_tuple_data(body: &[u8], infomask2: u16) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend(le16(3 | infomask2));
    out.extend(le16(HEAP_HASVARWIDTH | HEAP_XMAX_INVALID));
    out.push(24);
    out.push(0);
    out.extend_from_slice(body);
    out
}

fn heap_body(seed: u32, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (seed as usize * 31 + i / 4) as u8)
        .collect()
}

impl Chain {
    fn heap_insert(&mut self, offnum: u16, body: &[u8], init: bool) {
        let mut main = Vec::new();
        main.extend(le16(offnum));
        main.push(0);
        let mut block = self.block(0, heap_tuple_data(body, 0));
        let mut info = XLOG_HEAP_INSERT;
        if init {
            block = block.will_init();
            info |= XLOG_HEAP_INIT_PAGE;
        }
        self.wal(RM_HEAP_ID, info, &[block], &main, 0);
    }

    fn xl_heap_update(old_offnum: u16, flags: u8, new_offnum: u16, xmax: u32) -> Vec<u8> {
        let mut main = Vec::new();
        main.extend(le32(xmax));
        main.extend(le16(old_offnum));
        main.push(0);
        main.push(flags);
        main.extend(le32(0));
        main.extend(le16(new_offnum));
        main
    }

    /// An update whose old and new tuple are both on this page; the new tuple shares
    /// a `prefix` and `suffix` with the old one.
    fn heap_update_same_page(
        &mut self,
        hot: bool,
        old: u16,
        new: u16,
        body: &[u8],
        prefix: u16,
        suffix: u16,
    ) {
        const XLH_UPDATE_PREFIX_FROM_OLD: u8 = 1 << 5;
        const XLH_UPDATE_SUFFIX_FROM_OLD: u8 = 1 << 6;
        let mut flags = 0;
        let mut data = Vec::new();
        if prefix > 0 {
            flags |= XLH_UPDATE_PREFIX_FROM_OLD;
            data.extend(le16(prefix));
        }
        if suffix > 0 {
            flags |= XLH_UPDATE_SUFFIX_FROM_OLD;
            data.extend(le16(suffix));
        }
        let infomask2 = if hot { HEAP_ONLY_TUPLE } else { 0 };
        let tuple = heap_tuple_data(body, infomask2);
        data.extend_from_slice(&tuple);
        let xmax = self.xid + 1;
        let main = Chain::xl_heap_update(old, flags, new, xmax);
        let info = if hot {
            XLOG_HEAP_HOT_UPDATE
        } else {
            XLOG_HEAP_UPDATE
        };
        let block = self.block(0, data);
        self.wal(RM_HEAP_ID, info, &[block], &main, 0);
    }

    /// The old half of an update that put the new version on another page.
    fn heap_update_away(&mut self, old: u16) {
        let xmax = self.xid + 1;
        let main = Chain::xl_heap_update(old, 0, 1, xmax);
        let new_page = Block::new(0, self.rel, self.blkno + 1, heap_tuple_data(b"moved", 0));
        let old_page = self.block(1, Vec::new());
        self.wal(
            RM_HEAP_ID,
            XLOG_HEAP_UPDATE,
            &[new_page, old_page],
            &main,
            1,
        );
    }

    fn heap_delete(&mut self, offnum: u16, flags: u8) {
        let mut main = Vec::new();
        main.extend(le32(self.xid + 1));
        main.extend(le16(offnum));
        main.push(0);
        main.push(flags);
        let block = self.block(0, Vec::new());
        self.wal(RM_HEAP_ID, XLOG_HEAP_DELETE, &[block], &main, 0);
    }

    fn heap_lock(&mut self, offnum: u16) {
        const XLHL_XMAX_LOCK_ONLY: u8 = 0x02;
        const XLHL_XMAX_EXCL_LOCK: u8 = 0x04;
        let mut main = Vec::new();
        main.extend(le32(self.xid + 1));
        main.extend(le16(offnum));
        main.push(XLHL_XMAX_LOCK_ONLY | XLHL_XMAX_EXCL_LOCK);
        main.push(0);
        let block = self.block(0, Vec::new());
        self.wal(RM_HEAP_ID, XLOG_HEAP_LOCK, &[block], &main, 0);
    }

    fn heap_multi_insert(&mut self, first: u16, bodies: &[Vec<u8>]) {
        let mut main = vec![0u8, 0];
        main.extend(le16(bodies.len() as u16));
        let mut data = Vec::new();
        for (index, body) in bodies.iter().enumerate() {
            main.extend(le16(first + index as u16));
            if data.len() % 2 == 1 {
                data.push(0);
            }
            // xl_multi_insert_tuple {datalen, t_infomask2, t_infomask, t_hoff}
            data.extend(le16(body.len() as u16 + 1));
            data.extend(le16(3));
            data.extend(le16(HEAP_HASVARWIDTH | HEAP_XMAX_INVALID));
            data.push(24);
            data.push(0);
            data.extend_from_slice(body);
        }
        let block = self.block(0, data);
        self.wal(RM_HEAP2_ID, XLOG_HEAP2_MULTI_INSERT, &[block], &main, 0);
    }

    fn heap_prune(&mut self, redirected: &[(u16, u16)], dead: &[u16], unused: &[u16]) {
        let mut main = Vec::new();
        main.extend(le32(self.xid - 5));
        main.extend(le16(redirected.len() as u16));
        main.extend(le16(dead.len() as u16));
        let mut data = Vec::new();
        for (from, to) in redirected {
            data.extend(le16(*from));
            data.extend(le16(*to));
        }
        for offnum in dead.iter().chain(unused) {
            data.extend(le16(*offnum));
        }
        let block = self.block(0, data);
        self.wal(RM_HEAP2_ID, XLOG_HEAP2_PRUNE, &[block], &main, 0);
    }

    fn heap_vacuum(&mut self, unused: &[u16]) {
        let main = le16(unused.len() as u16).to_vec();
        let data = unused.iter().flat_map(|offnum| le16(*offnum)).collect();
        let block = self.block(0, data);
        self.wal(RM_HEAP2_ID, XLOG_HEAP2_VACUUM, &[block], &main, 0);
    }

    fn heap_freeze(&mut self, offnums: &[u16]) {
        let mut main = Vec::new();
        main.extend(le32(self.xid - 10));
        main.extend(le16(offnums.len() as u16));
        let mut data = Vec::new();
        for offnum in offnums {
            // xl_heap_freeze_tuple {xmax, offset, t_infomask2, t_infomask, frzflags}
            data.extend(le32(0));
            data.extend(le16(*offnum));
            data.extend(le16(3));
            data.extend(le16(
                HEAP_HASVARWIDTH | HEAP_XMAX_INVALID | HEAP_XMIN_COMMITTED | 0x0200,
            ));
            data.push(0);
            data.push(0);
        }
        let block = self.block(0, data);
        self.wal(RM_HEAP2_ID, XLOG_HEAP2_FREEZE_PAGE, &[block], &main, 0);
    }

    /// Heap2/VISIBLE, this page being the heap page (block 1).
    fn heap_visible(&mut self) {
        let mut main = Vec::new();
        main.extend(le32(self.xid - 10));
        main.push(0x03);
        let mut vm = Block::new(0, self.rel, 0, Vec::new());
        vm.fork = ForkNumber::VisibilityMap;
        let heap = self.block(1, Vec::new());
        self.wal(RM_HEAP2_ID, XLOG_HEAP2_VISIBLE, &[vm, heap], &main, 1);
    }
}

/// A heap page of 30 tuples, then `deltas` deltas of the cycle in the module docs.
pub fn heap(deltas: usize) -> Workload {
    const BASE: u16 = 30;
    const XLH_DELETE_ALL_VISIBLE_CLEARED: u8 = 1 << 0;
    let mut chain = Chain::new(HEAP_REL, ForkNumber::Main, 3);
    for offnum in 1..=BASE {
        let body = heap_body(u32::from(offnum), 60 + usize::from(offnum % 7) * 8);
        chain.heap_insert(offnum, &body, offnum == 1);
    }
    chain.snapshot();
    let compressions = [Compression::Pglz, Compression::Lz4, Compression::Zstd];
    let mut cycle = 0u32;
    while chain.deltas.len() < deltas {
        let m = chain.page.max_offset_number();
        let body = heap_body(cycle, 72);
        let mut step = 0;
        // One step per delta, so that the chain stops at exactly `deltas`.
        while step < 17 && chain.deltas.len() < deltas {
            match step {
                0 => chain.heap_insert(m + 1, &body, false),
                1 => chain.heap_update_same_page(true, m + 1, m + 2, &body[..40], 8, 0),
                2 => chain.heap_update_same_page(false, m + 2, m + 3, &body[..50], 0, 16),
                3 => chain.heap_lock(m + 3),
                4 => chain.heap_update_away(1 + (cycle % u32::from(BASE)) as u16),
                5 => chain.heap_delete(m + 3, 0),
                6 => {
                    let bodies = [
                        heap_body(cycle + 1, 48),
                        heap_body(cycle + 2, 90),
                        heap_body(cycle, 33),
                    ];
                    chain.heap_multi_insert(m + 4, &bodies);
                }
                7 => chain.heap_delete(m + 4, XLH_DELETE_ALL_VISIBLE_CLEARED),
                8 => chain.heap_prune(&[(m + 5, m + 6)], &[m + 1, m + 3, m + 4], &[m + 2]),
                9 => chain.heap_vacuum(&[m + 1, m + 3, m + 4]),
                10 => chain.heap_freeze(&[m + 6, 2 + (cycle % 20) as u16]),
                11 => chain.heap_visible(),
                12 => chain.heap_delete(m + 6, XLH_DELETE_ALL_VISIBLE_CLEARED),
                13 => chain.heap_prune(&[], &[m + 5], &[m + 6]),
                14 => chain.heap_vacuum(&[m + 5]),
                15 => chain.heap_insert(m + 1, &heap_body(cycle + 7, 20), false),
                _ => {
                    if cycle % 2 == 1 {
                        chain.fpi(compressions[(cycle / 2 % 3) as usize]);
                    } else {
                        chain.heap_lock(m + 1);
                    }
                }
            }
            step += 1;
        }
        // The insert of step 15 leaves one more tuple behind each cycle: prune it
        // away now and then so that the page never fills.
        if chain.deltas.len() < deltas && chain.page.max_offset_number() > BASE + 8 {
            let extra: Vec<u16> = (BASE + 1..=chain.page.max_offset_number()).collect();
            chain.heap_prune(&[], &extra, &[]);
            if chain.deltas.len() < deltas {
                chain.heap_vacuum(&extra);
            }
        }
        cycle += 1;
    }
    chain.finish("heap")
}

// ---- btree -----------------------------------------------------------------------

const XLOG_BTREE_INSERT_LEAF: u8 = 0x00;
const XLOG_BTREE_SPLIT_L: u8 = 0x30;
const XLOG_BTREE_INSERT_POST: u8 = 0x50;
const XLOG_BTREE_DEDUP: u8 = 0x60;
const XLOG_BTREE_DELETE: u8 = 0x70;
const XLOG_BTREE_NEWROOT: u8 = 0xA0;
const XLOG_BTREE_VACUUM: u8 = 0xC0;

/// A leaf tuple: t_tid = the heap TID, t_info = 16, an int4 key, 4 bytes of padding.
fn leaf_tuple(key: u32, heap_block: u32, heap_offset: u16) -> Vec<u8> {
    let mut tuple = Vec::with_capacity(16);
    tuple.extend(le16((heap_block >> 16) as u16));
    tuple.extend(le16(heap_block as u16));
    tuple.extend(le16(heap_offset));
    tuple.extend(le16(16));
    tuple.extend(le32(key));
    tuple.extend(le32(0));
    tuple
}

fn tuple_key(tuple: &[u8]) -> u32 {
    u32::from_le_bytes([tuple[8], tuple[9], tuple[10], tuple[11]])
}

fn is_posting(tuple: &[u8]) -> bool {
    let info = u16::from_le_bytes([tuple[6], tuple[7]]);
    let posid = u16::from_le_bytes([tuple[4], tuple[5]]);
    info & 0x2000 != 0 && posid & 0x2000 != 0
}

fn posting_count(tuple: &[u8]) -> u16 {
    u16::from_le_bytes([tuple[4], tuple[5]]) & 0x0FFF
}

impl Chain {
    fn first_data_key(&self) -> u16 {
        let opaque = BtPageOpaque::read(&self.page).expect("a btree page");
        opaque.first_data_key()
    }

    fn item(&self, offnum: u16) -> Vec<u8> {
        self.page.item(offnum).expect("an item").to_vec()
    }

    /// Where `key` goes among the data items (after its equals).
    fn position_of(&self, key: u32) -> u16 {
        let first = self.first_data_key();
        let max = self.page.max_offset_number();
        (first..=max)
            .find(|offnum| tuple_key(&self.item(*offnum)) > key)
            .unwrap_or(max + 1)
    }

    fn btree_insert(&mut self, key: u32) {
        let offnum = self.position_of(key);
        let heap_block = self.random(1000);
        let tuple = leaf_tuple(key, heap_block, 1 + self.random(100) as u16);
        let block = self.block(0, tuple);
        self.wal(
            RM_BTREE_ID,
            XLOG_BTREE_INSERT_LEAF,
            &[block],
            &le16(offnum),
            0,
        );
    }

    /// Dedup of the first run of at least `min` equal keys.
    fn btree_dedup(&mut self, min: u16) -> bool {
        let first = self.first_data_key();
        let max = self.page.max_offset_number();
        let mut start = first;
        while start <= max {
            let key = tuple_key(&self.item(start));
            let mut end = start;
            while end < max && tuple_key(&self.item(end + 1)) == key {
                end += 1;
            }
            if end - start + 1 >= min {
                let mut data = Vec::new();
                data.extend(le16(start));
                data.extend(le16(end - start + 1));
                let block = self.block(0, data);
                self.wal(RM_BTREE_ID, XLOG_BTREE_DEDUP, &[block], &le16(1), 0);
                return true;
            }
            start = end + 1;
        }
        false
    }

    fn posting_offnum(&self) -> Option<u16> {
        let first = self.first_data_key();
        (first..=self.page.max_offset_number()).find(|offnum| {
            let tuple = self.item(*offnum);
            is_posting(&tuple) && posting_count(&tuple) >= 2
        })
    }

    /// INSERT_POST: a new item whose TID falls after the posting list's first TID.
    fn btree_insert_post(&mut self, posting: u16) {
        let tuple = self.item(posting);
        let list = u16::from_le_bytes([tuple[2], tuple[3]]) as usize;
        let first_tid = &tuple[list..list + 6];
        let block = (u32::from(u16::from_le_bytes([first_tid[0], first_tid[1]])) << 16)
            | u32::from(u16::from_le_bytes([first_tid[2], first_tid[3]]));
        let offset = u16::from_le_bytes([first_tid[4], first_tid[5]]);
        // Same block, one offset further: between the first and the second TID when
        // the list is sorted, and anywhere is fine for redo.
        let newitem = leaf_tuple(tuple_key(&tuple), block, offset + 1);
        let mut data = le16(1).to_vec();
        data.extend_from_slice(&newitem);
        let record_block = self.block(0, data);
        self.wal(
            RM_BTREE_ID,
            XLOG_BTREE_INSERT_POST,
            &[record_block],
            &le16(posting + 1),
            0,
        );
    }

    /// VACUUM (or DELETE) of three plain items, and the posting list at `posting`
    /// losing its first TID.
    fn btree_delete_items(&mut self, delete: bool, posting: Option<u16>) {
        let first = self.first_data_key();
        let max = self.page.max_offset_number();
        let plain: Vec<u16> = (first..=max)
            .filter(|offnum| Some(*offnum) != posting && !is_posting(&self.item(*offnum)))
            .collect();
        if plain.len() < 8 {
            return;
        }
        let step = plain.len() / 3;
        let deleted = [plain[0], plain[step], plain[2 * step]];
        let mut data = Vec::new();
        for offnum in deleted {
            data.extend(le16(offnum));
        }
        let nupdated = u16::from(posting.is_some());
        if let Some(posting) = posting {
            data.extend(le16(posting));
            data.extend(le16(1));
            data.extend(le16(0));
        }
        let mut main = Vec::new();
        let info = if delete {
            main.extend(le32(self.xid - 3));
            XLOG_BTREE_DELETE
        } else {
            XLOG_BTREE_VACUUM
        };
        main.extend(le16(deleted.len() as u16));
        main.extend(le16(nupdated));
        let block = self.block(0, data);
        self.wal(RM_BTREE_ID, info, &[block], &main, 0);
    }

    /// SPLIT_L of this page (block 0, the left half) at its middle, the new item
    /// going left; the right half is a new page.
    fn btree_split(&mut self, key: u32) {
        let first = self.first_data_key();
        let max = self.page.max_offset_number();
        let firstrightoff = first + (max - first) / 2;
        let newitemoff = self.position_of(key).min(firstrightoff);
        let newitem = leaf_tuple(key, self.random(1000), 7);
        let left_hikey = leaf_tuple(tuple_key(&self.item(firstrightoff)), 0, 0);
        let mut left = newitem.clone();
        left.extend_from_slice(&left_hikey);
        let mut right = Vec::new();
        for offnum in (firstrightoff..=max).rev() {
            right.extend_from_slice(&self.item(offnum));
        }
        let mut main = Vec::new();
        main.extend(le32(0));
        main.extend(le16(firstrightoff));
        main.extend(le16(newitemoff));
        main.extend(le16(0));
        let right_blkno = 100 + self.random(1000);
        let blocks = [
            self.block(0, left),
            Block::new(1, self.rel, right_blkno, right).will_init(),
        ];
        self.wal(RM_BTREE_ID, XLOG_BTREE_SPLIT_L, &blocks, &main, 0);
    }

    /// A restored page as an image delta (what ingest stores for an FPI).
    fn image_delta(&mut self) {
        let end_lsn = Lsn(self.next_lsn + 0x100);
        let image = Bytes::copy_from_slice(self.page.as_bytes());
        self.push(end_lsn, vec![DeltaRecord::Image(image)]);
    }
}

/// A leaf page (a root leaf made by NEWROOT, then 120 inserts), then `deltas`
/// deltas: inserts of duplicates, dedup, posting list splits, vacuum and delete with
/// posting list updates, a page split when the page is full, an image now and then.
pub fn btree(deltas: usize) -> Workload {
    let mut chain = Chain::new(INDEX_REL, ForkNumber::Main, 1);
    let mut main = Vec::new();
    main.extend(le32(1));
    main.extend(le32(0));
    let mut meta_data = Vec::new();
    for field in [4u32, 1, 0, 1, 0, 0, 1] {
        meta_data.extend(le32(field));
    }
    let root = chain.block(0, Vec::new()).will_init();
    let meta = Block::new(2, INDEX_REL, 0, meta_data).will_init();
    chain.wal(RM_BTREE_ID, XLOG_BTREE_NEWROOT, &[root, meta], &main, 0);
    for _ in 0..120 {
        let key = chain.random(100_000);
        chain.btree_insert(key);
    }
    chain.snapshot();
    let mut cycle = 0u32;
    while chain.deltas.len() < deltas {
        let step = cycle % 12;
        match step {
            0..=3 => {
                // Four duplicates of one key per round: dedup material.
                let key = 50_000 + cycle / 12;
                chain.btree_insert(key);
            }
            4 => {
                if !chain.btree_dedup(3) {
                    let key = chain.random(100_000);
                    chain.btree_insert(key);
                }
            }
            5 => match chain.posting_offnum() {
                Some(posting) => chain.btree_insert_post(posting),
                None => {
                    let key = chain.random(100_000);
                    chain.btree_insert(key);
                }
            },
            6 | 7 => {
                let key = chain.random(100_000);
                chain.btree_insert(key);
            }
            8 => {
                let posting = chain.posting_offnum();
                chain.btree_delete_items(false, posting);
            }
            9 => {
                let posting = chain.posting_offnum();
                chain.btree_delete_items(true, posting);
            }
            10 => {
                if chain.page.max_offset_number() > 140 {
                    let key = chain.random(100_000);
                    chain.btree_split(key);
                } else {
                    let key = chain.random(100_000);
                    chain.btree_insert(key);
                }
            }
            _ => {
                if cycle % 48 == 11 {
                    chain.image_delta();
                } else {
                    for _ in 0..4 {
                        if chain.deltas.len() < deltas {
                            let key = chain.random(100_000);
                            chain.btree_insert(key);
                        }
                    }
                }
            }
        }
        cycle += 1;
    }
    chain.finish("btree")
}

// ---- VM, CLOG, multixact -----------------------------------------------------------

/// A visibility map page: Heap2/VISIBLE setting bits (block 0, the VM page) and the
/// bits heap changes clear, two per delta as a heap update clearing two blocks does.
pub fn vm(deltas: usize) -> Workload {
    let mut chain = Chain::new(HEAP_REL, ForkNumber::VisibilityMap, 0);
    chain.page.init(0);
    chain.snapshot();
    let mut heap_block = 0u32;
    while chain.deltas.len() < deltas {
        heap_block = (heap_block + 37) % 30_000;
        if chain.deltas.len() % 3 == 2 {
            let end_lsn = Lsn(chain.next_lsn + 0x80);
            let records = vec![
                DeltaRecord::ClearVmBits {
                    heap_block,
                    flags: 0x03,
                },
                DeltaRecord::ClearVmBits {
                    heap_block: heap_block + 1,
                    flags: 0x03,
                },
            ];
            tarn_pages::vm::clear_vm_bits(&mut chain.page, heap_block, 0x03);
            tarn_pages::vm::clear_vm_bits(&mut chain.page, heap_block + 1, 0x03);
            chain.push(end_lsn, records);
        } else {
            let mut main = Vec::new();
            main.extend(le32(900));
            main.push(0x03);
            let vm = chain.block(0, Vec::new());
            let heap = Block::new(1, HEAP_REL, heap_block, Vec::new());
            chain.wal(RM_HEAP2_ID, XLOG_HEAP2_VISIBLE, &[vm, heap], &main, 0);
        }
    }
    chain.finish("vm")
}

/// A CLOG page: commits and aborts of 1 to 8 transactions per delta.
pub fn clog(deltas: usize) -> Workload {
    let mut chain = Chain::new(HEAP_REL, ForkNumber::Main, 0);
    chain.key = Key::slru_page(SlruKind::Clog, 0, 0);
    chain.snapshot();
    let mut xid = 3u32;
    for n in 0..deltas {
        let count = 1 + (n % 8) as u32;
        let xids: Vec<u32> = (xid..xid + count).collect();
        xid += count;
        let status = if n % 5 == 4 {
            TRANSACTION_STATUS_ABORTED
        } else {
            TRANSACTION_STATUS_COMMITTED
        };
        let end_lsn = Lsn(chain.next_lsn + 0x40);
        chain.push(end_lsn, vec![DeltaRecord::ClogSetStatus { status, xids }]);
    }
    chain.finish("clog")
}

/// A pg_multixact/offsets page: two entries per delta, as RecordNewMultiXact writes
/// a multixact's offset and the next one's.
pub fn multixact_offsets(deltas: usize) -> Workload {
    let mut chain = Chain::new(HEAP_REL, ForkNumber::Main, 0);
    chain.key = Key::slru_page(SlruKind::MultiXactOffsets, 0, 0);
    chain.snapshot();
    for n in 0..deltas {
        let end_lsn = Lsn(chain.next_lsn + 0x40);
        let entry = (n % 2047) as u16;
        let offset = 1 + 3 * n as u32;
        let entries = vec![(entry, offset), (entry + 1, offset + 3)];
        chain.push(end_lsn, vec![DeltaRecord::MultiXactOffsets { entries }]);
    }
    chain.finish("multixact offsets")
}

/// A pg_multixact/members page: three members per delta.
pub fn multixact_members(deltas: usize) -> Workload {
    let mut chain = Chain::new(HEAP_REL, ForkNumber::Main, 0);
    chain.key = Key::slru_page(SlruKind::MultiXactMembers, 0, 0);
    chain.snapshot();
    for n in 0..deltas {
        let end_lsn = Lsn(chain.next_lsn + 0x40);
        let offset = 1 + 3 * (n as u32 % 500);
        let members = (0..3)
            .map(|i| MemberWrite {
                offset: offset + i,
                xid: 500 + n as u32,
                status: (i % 6) as u8,
            })
            .collect();
        chain.push(end_lsn, vec![DeltaRecord::MultiXactMembers { members }]);
    }
    chain.finish("multixact members")
}

// ---- pglz -------------------------------------------------------------------------

/// A greedy PGLZ compressor (3-byte prefix table, 4095-byte window): valid input for
/// pglz_decompress, not byte-identical to Postgres's pglz_compress.
pub fn pglz_compress(source: &[u8]) -> Vec<u8> {
    const MAX_OFFSET: usize = 0x0fff;
    const MAX_LEN: usize = 18 + 255;
    let mut last: HashMap<[u8; 3], usize> = HashMap::new();
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < source.len() {
        let control_at = out.len();
        out.push(0u8);
        for bit in 0..8 {
            if pos >= source.len() {
                break;
            }
            let mut best = (0usize, 0usize);
            if pos > 0 && source[pos] == source[pos - 1] {
                let mut len = 0;
                while len < MAX_LEN
                    && pos + len < source.len()
                    && source[pos + len] == source[pos - 1]
                {
                    len += 1;
                }
                best = (1, len);
            }
            if let Some(prefix) = source.get(pos..pos + 3)
                && let Some(&from) = last.get(&[prefix[0], prefix[1], prefix[2]])
                && pos - from <= MAX_OFFSET
            {
                let offset = pos - from;
                let mut len = 0;
                while len < MAX_LEN
                    && pos + len < source.len()
                    && source[pos + len] == source[pos + len - offset]
                {
                    len += 1;
                }
                if len > best.1 {
                    best = (offset, len);
                }
            }
            let (offset, len) = best;
            let advance = if len >= 3 {
                out[control_at] |= 1 << bit;
                let nibble = (len - 3).min(15);
                out.push((((offset >> 8) as u8) << 4) | nibble as u8);
                out.push(offset as u8);
                if nibble == 15 {
                    out.push((len - 18) as u8);
                }
                len
            } else {
                out.push(source[pos]);
                1
            };
            for at in pos..pos + advance {
                if let Some(prefix) = source.get(at..at + 3) {
                    last.insert([prefix[0], prefix[1], prefix[2]], at);
                }
            }
            pos += advance;
        }
    }
    out
}
