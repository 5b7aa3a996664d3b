//! The PostgreSQL 15 slotted page: header, line pointers and the bufpage.c routines
//! that redo uses to change a page (`storage/bufpage.h`, `storage/itemid.h`,
//! `backend/storage/page/bufpage.c`).
//!
//! A [`Page`] is exactly one 8 KiB block as Postgres writes it: little-endian fields,
//! the 24-byte `PageHeaderData`, the line pointer array growing up from it, tuples
//! growing down from `pd_special`. Every routine here mirrors its bufpage.c namesake
//! byte for byte, including where tuples land when the page is compacted, because
//! redo must produce the very bytes Postgres would.
//!
//! Postgres trusts a page's pointers only so far: where it would `ereport(ERROR)` or
//! `PANIC` on a corrupt page we return a [`PageError`]; where C would silently read or
//! write outside the page we also return an error rather than guess. The caller (redo)
//! names the page in its own error.

use std::fmt;

use tarn_wal::Lsn;

/// Size of a page (BLCKSZ). Postgres makes it a compile-time option; tarn supports
/// only the default.
pub const BLCKSZ: usize = 8192;
/// `SizeOfPageHeaderData`: the fixed header before the line pointer array.
pub const SIZE_OF_PAGE_HEADER: usize = 24;
/// `sizeof(ItemIdData)`.
pub const ITEM_ID_SIZE: usize = 4;
/// MAXIMUM_ALIGNOF on the platforms tarn supports (x86-64, aarch64).
pub const MAXIMUM_ALIGNOF: usize = 8;
/// `PG_PAGE_LAYOUT_VERSION`.
pub const PG_PAGE_LAYOUT_VERSION: u16 = 4;

/// pd_flags: there are unused line pointers before pd_lower (a hint).
pub const PD_HAS_FREE_LINES: u16 = 0x0001;
/// pd_flags: not enough free space for a new tuple (a hint).
pub const PD_PAGE_FULL: u16 = 0x0002;
/// pd_flags: all tuples on the page are visible to everyone.
pub const PD_ALL_VISIBLE: u16 = 0x0004;

/// Line pointer states (lp_flags).
pub const LP_UNUSED: u8 = 0;
pub const LP_NORMAL: u8 = 1;
pub const LP_REDIRECT: u8 = 2;
pub const LP_DEAD: u8 = 3;

/// `InvalidOffsetNumber`.
pub const INVALID_OFFSET_NUMBER: u16 = 0;
/// `FirstOffsetNumber`.
pub const FIRST_OFFSET_NUMBER: u16 = 1;
/// `MaxOffsetNumber` (BLCKSZ / sizeof(ItemIdData)).
pub const MAX_OFFSET_NUMBER: u16 = (BLCKSZ / ITEM_ID_SIZE) as u16;

/// `SizeofHeapTupleHeader` (offsetof(HeapTupleHeaderData, t_bits)).
pub const SIZEOF_HEAP_TUPLE_HEADER: usize = 23;
/// `MaxHeapTuplesPerPage`: (BLCKSZ - SizeOfPageHeaderData) /
/// (MAXALIGN(SizeofHeapTupleHeader) + sizeof(ItemIdData)) = 291.
pub const MAX_HEAP_TUPLES_PER_PAGE: usize =
    (BLCKSZ - SIZE_OF_PAGE_HEADER) / (max_align(SIZEOF_HEAP_TUPLE_HEADER) + ITEM_ID_SIZE);
/// `MaxHeapTupleSize`: BLCKSZ - MAXALIGN(SizeOfPageHeaderData + sizeof(ItemIdData)).
pub const MAX_HEAP_TUPLE_SIZE: usize = BLCKSZ - max_align(SIZE_OF_PAGE_HEADER + ITEM_ID_SIZE);
/// `MaxIndexTuplesPerPage`: (BLCKSZ - SizeOfPageHeaderData) /
/// (MAXALIGN(sizeof(IndexTupleData) + 1) + sizeof(ItemIdData)) = 408.
pub const MAX_INDEX_TUPLES_PER_PAGE: usize =
    (BLCKSZ - SIZE_OF_PAGE_HEADER) / (max_align(8 + 1) + ITEM_ID_SIZE);

/// Rounds up to a multiple of [`MAXIMUM_ALIGNOF`] (MAXALIGN).
pub const fn max_align(len: usize) -> usize {
    (len + (MAXIMUM_ALIGNOF - 1)) & !(MAXIMUM_ALIGNOF - 1)
}

/// Byte offsets of PageHeaderData's fields.
mod offsets {
    pub const LSN_HI: usize = 0;
    pub const LSN_LO: usize = 4;
    pub const CHECKSUM: usize = 8;
    pub const FLAGS: usize = 10;
    pub const LOWER: usize = 12;
    pub const UPPER: usize = 14;
    pub const SPECIAL: usize = 16;
    pub const PAGESIZE_VERSION: usize = 18;
    pub const PRUNE_XID: usize = 20;
}

/// A page that Postgres's own checks would reject, or an operation it would refuse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PageError {
    #[error("corrupted page pointers: lower = {lower}, upper = {upper}, special = {special}")]
    CorruptPointers {
        lower: u16,
        upper: u16,
        special: u16,
    },
    #[error("corrupted line pointer: offset = {offset}, size = {size}")]
    CorruptLinePointer { offset: usize, size: usize },
    #[error("corrupted item lengths: total {total}, available space {available}")]
    CorruptItemLengths { total: usize, available: usize },
    #[error("invalid offset number {offnum}: the page has {max} line pointers")]
    InvalidOffset { offnum: u16, max: u16 },
    #[error("incorrect index offsets supplied")]
    IncorrectIndexOffsets,
    #[error("too many items ({count}) for one page")]
    TooManyItems { count: usize },
    #[error("will not overwrite a used ItemId at offset {offnum}")]
    ItemIdInUse { offnum: u16 },
    #[error("specified item offset {offnum} is too large (limit {limit})")]
    OffsetTooLarge { offnum: u16, limit: u16 },
    #[error("can't put more than MaxHeapTuplesPerPage items in a heap page (offset {offnum})")]
    TooManyHeapTuples { offnum: u16 },
    #[error("no room for a {size}-byte item: lower = {lower}, upper = {upper}")]
    NoSpace { size: usize, lower: u16, upper: u16 },
    #[error("item of {size} bytes is larger than a page item can be")]
    ItemTooLarge { size: usize },
    #[error("line pointer {offnum} (offset {offset}, length {len}) lies outside the page")]
    ItemOutsidePage {
        offnum: u16,
        offset: usize,
        len: usize,
    },
}

/// One line pointer (ItemIdData): `lp_off:15, lp_flags:2, lp_len:15` packed in a
/// little-endian u32, lp_off in the low bits.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct ItemId(u32);

impl ItemId {
    pub const UNUSED: ItemId = ItemId(0);

    pub fn from_raw(raw: u32) -> ItemId {
        ItemId(raw)
    }

    pub fn raw(self) -> u32 {
        self.0
    }

    /// Builds a line pointer; each field is truncated to its bit width as C's
    /// bitfield assignment does.
    pub fn new(off: usize, flags: u8, len: usize) -> ItemId {
        let off = (off as u32) & 0x7fff;
        let flags = u32::from(flags) & 0x3;
        let len = (len as u32) & 0x7fff;
        ItemId(off | (flags << 15) | (len << 17))
    }

    /// ItemIdSetNormal.
    pub fn normal(off: usize, len: usize) -> ItemId {
        ItemId::new(off, LP_NORMAL, len)
    }

    /// ItemIdSetRedirect: lp_off holds the offset number redirected to.
    pub fn redirect(link: u16) -> ItemId {
        ItemId::new(usize::from(link), LP_REDIRECT, 0)
    }

    /// ItemIdSetDead: dead, with no storage.
    pub fn dead() -> ItemId {
        ItemId::new(0, LP_DEAD, 0)
    }

    /// ItemIdGetOffset.
    pub fn lp_off(self) -> usize {
        (self.0 & 0x7fff) as usize
    }

    /// ItemIdGetFlags.
    pub fn lp_flags(self) -> u8 {
        ((self.0 >> 15) & 0x3) as u8
    }

    /// ItemIdGetLength.
    pub fn lp_len(self) -> usize {
        (self.0 >> 17) as usize
    }

    /// ItemIdGetRedirect.
    pub fn redirect_target(self) -> u16 {
        self.lp_off() as u16
    }

    /// ItemIdIsUsed.
    pub fn is_used(self) -> bool {
        self.lp_flags() != LP_UNUSED
    }

    /// ItemIdIsNormal.
    pub fn is_normal(self) -> bool {
        self.lp_flags() == LP_NORMAL
    }

    /// ItemIdIsRedirected.
    pub fn is_redirected(self) -> bool {
        self.lp_flags() == LP_REDIRECT
    }

    /// ItemIdIsDead.
    pub fn is_dead(self) -> bool {
        self.lp_flags() == LP_DEAD
    }

    /// ItemIdHasStorage.
    pub fn has_storage(self) -> bool {
        self.lp_len() != 0
    }

    /// The same line pointer with lp_off replaced (`lp->lp_off = off`).
    pub fn with_off(self, off: usize) -> ItemId {
        ItemId::new(off, self.lp_flags(), self.lp_len())
    }

    /// The same line pointer with lp_flags replaced (`lp->lp_flags = flags`).
    pub fn with_flags(self, flags: u8) -> ItemId {
        ItemId::new(self.lp_off(), flags, self.lp_len())
    }

    /// The same line pointer with lp_len replaced (`lp->lp_len = len`).
    pub fn with_len(self, len: usize) -> ItemId {
        ItemId::new(self.lp_off(), self.lp_flags(), len)
    }
}

impl fmt::Debug for ItemId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.lp_flags() {
            LP_UNUSED => "unused",
            LP_NORMAL => "normal",
            LP_REDIRECT => "redirect",
            _ => "dead",
        };
        write!(
            f,
            "ItemId({state}, off {}, len {})",
            self.lp_off(),
            self.lp_len()
        )
    }
}

/// Flags of [`Page::add_item_extended`] (PAI_*).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AddItemFlags {
    /// PAI_OVERWRITE: place the item at the given offset, which must be unused,
    /// instead of shifting later line pointers up.
    pub overwrite: bool,
    /// PAI_IS_HEAP: refuse offsets above MaxHeapTuplesPerPage.
    pub is_heap: bool,
}

/// One 8 KiB page.
#[derive(Clone, PartialEq, Eq)]
pub struct Page {
    bytes: Box<[u8; BLCKSZ]>,
}

impl fmt::Debug for Page {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Page")
            .field("lsn", &self.lsn())
            .field("flags", &self.flags())
            .field("lower", &self.lower())
            .field("upper", &self.upper())
            .field("special", &self.special())
            .field("prune_xid", &self.prune_xid())
            .finish_non_exhaustive()
    }
}

impl Default for Page {
    fn default() -> Self {
        Page::zeroed()
    }
}

/// Per-item data gathered before compaction (itemIdCompactData). Kept in arrays on
/// the stack as Postgres does (MaxHeapTuplesPerPage or MaxIndexTuplesPerPage of
/// them), hence u16 fields: every value is below BLCKSZ.
#[derive(Clone, Copy, Debug, Default)]
struct CompactItem {
    /// Index into the line pointer array (offset number - 1).
    offset_index: u16,
    /// Page offset of the item's data.
    item_off: u16,
    /// MAXALIGN(lp_len).
    aligned_len: u16,
}

impl CompactItem {
    fn new(offset_index: usize, item_off: usize, aligned_len: usize) -> CompactItem {
        // Callers check that the item lies inside the page, so all three fit.
        CompactItem {
            offset_index: offset_index as u16,
            item_off: item_off as u16,
            aligned_len: aligned_len as u16,
        }
    }

    fn offset_index(self) -> usize {
        usize::from(self.offset_index)
    }

    fn item_off(self) -> usize {
        usize::from(self.item_off)
    }

    fn aligned_len(self) -> usize {
        usize::from(self.aligned_len)
    }

    /// Where the item's data ends.
    fn end(self) -> usize {
        self.item_off() + self.aligned_len()
    }
}

impl Page {
    /// An all-zero page: what Postgres reads beyond a relation's end, and what
    /// `PageIsNew` recognises.
    pub fn zeroed() -> Page {
        Page {
            bytes: Box::new([0; BLCKSZ]),
        }
    }

    /// A page from exactly [`BLCKSZ`] bytes; `None` for any other length.
    pub fn from_bytes(bytes: &[u8]) -> Option<Page> {
        if bytes.len() != BLCKSZ {
            return None;
        }
        // Straight into the heap: one allocation, one copy (no 8 KiB array on the
        // stack to move into a box).
        let bytes: Box<[u8; BLCKSZ]> = bytes.to_vec().into_boxed_slice().try_into().ok()?;
        Some(Page { bytes })
    }

    pub fn as_bytes(&self) -> &[u8; BLCKSZ] {
        &self.bytes
    }

    pub fn as_bytes_mut(&mut self) -> &mut [u8; BLCKSZ] {
        &mut self.bytes
    }

    fn u16_at(&self, at: usize) -> u16 {
        u16::from_le_bytes([self.bytes[at], self.bytes[at + 1]])
    }

    fn set_u16_at(&mut self, at: usize, value: u16) {
        self.bytes[at..at + 2].copy_from_slice(&value.to_le_bytes());
    }

    fn u32_at(&self, at: usize) -> u32 {
        u32::from_le_bytes([
            self.bytes[at],
            self.bytes[at + 1],
            self.bytes[at + 2],
            self.bytes[at + 3],
        ])
    }

    fn set_u32_at(&mut self, at: usize, value: u32) {
        self.bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
    }

    // ---- PageHeaderData ------------------------------------------------------

    /// PageGetLSN: pd_lsn is stored as {xlogid, xrecoff}, high half first.
    pub fn lsn(&self) -> Lsn {
        let hi = u64::from(self.u32_at(offsets::LSN_HI));
        let lo = u64::from(self.u32_at(offsets::LSN_LO));
        Lsn((hi << 32) | lo)
    }

    /// PageSetLSN.
    pub fn set_lsn(&mut self, lsn: Lsn) {
        self.set_u32_at(offsets::LSN_HI, (lsn.0 >> 32) as u32);
        self.set_u32_at(offsets::LSN_LO, lsn.0 as u32);
    }

    pub fn checksum(&self) -> u16 {
        self.u16_at(offsets::CHECKSUM)
    }

    pub fn set_checksum(&mut self, checksum: u16) {
        self.set_u16_at(offsets::CHECKSUM, checksum);
    }

    pub fn flags(&self) -> u16 {
        self.u16_at(offsets::FLAGS)
    }

    pub fn set_flags(&mut self, flags: u16) {
        self.set_u16_at(offsets::FLAGS, flags);
    }

    /// pd_lower: offset to the start of free space.
    pub fn lower(&self) -> u16 {
        self.u16_at(offsets::LOWER)
    }

    pub fn set_lower(&mut self, lower: u16) {
        self.set_u16_at(offsets::LOWER, lower);
    }

    /// pd_upper: offset to the end of free space.
    pub fn upper(&self) -> u16 {
        self.u16_at(offsets::UPPER)
    }

    pub fn set_upper(&mut self, upper: u16) {
        self.set_u16_at(offsets::UPPER, upper);
    }

    /// pd_special: offset to the start of the special space.
    pub fn special(&self) -> u16 {
        self.u16_at(offsets::SPECIAL)
    }

    pub fn set_special(&mut self, special: u16) {
        self.set_u16_at(offsets::SPECIAL, special);
    }

    pub fn pagesize_version(&self) -> u16 {
        self.u16_at(offsets::PAGESIZE_VERSION)
    }

    pub fn set_pagesize_version(&mut self, value: u16) {
        self.set_u16_at(offsets::PAGESIZE_VERSION, value);
    }

    /// PageGetPageSize.
    pub fn page_size(&self) -> usize {
        usize::from(self.pagesize_version() & 0xff00)
    }

    /// PageGetPageLayoutVersion.
    pub fn layout_version(&self) -> u16 {
        self.pagesize_version() & 0x00ff
    }

    /// pd_prune_xid: oldest prunable XID, or 0.
    pub fn prune_xid(&self) -> u32 {
        self.u32_at(offsets::PRUNE_XID)
    }

    pub fn set_prune_xid(&mut self, xid: u32) {
        self.set_u32_at(offsets::PRUNE_XID, xid);
    }

    /// PageSetPrunable: remember `xid` if it is older than the current hint.
    pub fn set_prunable(&mut self, xid: u32) {
        let current = self.prune_xid();
        if current == 0 || transaction_id_precedes(xid, current) {
            self.set_prune_xid(xid);
        }
    }

    /// PageIsNew: never initialised (pd_upper == 0).
    pub fn is_new(&self) -> bool {
        self.upper() == 0
    }

    /// PageIsEmpty: no line pointers.
    pub fn is_empty(&self) -> bool {
        usize::from(self.lower()) <= SIZE_OF_PAGE_HEADER
    }

    fn has_flag(&self, flag: u16) -> bool {
        self.flags() & flag != 0
    }

    fn set_flag(&mut self, flag: u16, on: bool) {
        let flags = self.flags();
        self.set_flags(if on { flags | flag } else { flags & !flag });
    }

    /// PageHasFreeLinePointers.
    pub fn has_free_line_pointers(&self) -> bool {
        self.has_flag(PD_HAS_FREE_LINES)
    }

    /// PageSetHasFreeLinePointers / PageClearHasFreeLinePointers.
    pub fn set_has_free_line_pointers(&mut self, on: bool) {
        self.set_flag(PD_HAS_FREE_LINES, on);
    }

    /// PageIsFull.
    pub fn is_full(&self) -> bool {
        self.has_flag(PD_PAGE_FULL)
    }

    /// PageSetFull / PageClearFull.
    pub fn set_full(&mut self, on: bool) {
        self.set_flag(PD_PAGE_FULL, on);
    }

    /// PageIsAllVisible.
    pub fn is_all_visible(&self) -> bool {
        self.has_flag(PD_ALL_VISIBLE)
    }

    /// PageSetAllVisible / PageClearAllVisible.
    pub fn set_all_visible(&mut self, on: bool) {
        self.set_flag(PD_ALL_VISIBLE, on);
    }

    // ---- line pointers -------------------------------------------------------

    /// PageGetMaxOffsetNumber.
    pub fn max_offset_number(&self) -> u16 {
        let lower = usize::from(self.lower());
        if lower <= SIZE_OF_PAGE_HEADER {
            0
        } else {
            ((lower - SIZE_OF_PAGE_HEADER) / ITEM_ID_SIZE) as u16
        }
    }

    /// Byte offset of line pointer `offnum` (PageGetItemId's address).
    fn item_id_pos(offnum: u16) -> Option<usize> {
        if offnum == 0 {
            return None;
        }
        let pos = SIZE_OF_PAGE_HEADER + (usize::from(offnum) - 1) * ITEM_ID_SIZE;
        (pos + ITEM_ID_SIZE <= BLCKSZ).then_some(pos)
    }

    /// PageGetItemId for any offset whose line pointer lies inside the page (it need
    /// not be below pd_lower, as in C). Use [`Page::item_id_checked`] to also require
    /// `offnum <= PageGetMaxOffsetNumber`.
    pub fn item_id(&self, offnum: u16) -> Result<ItemId, PageError> {
        let pos = Page::item_id_pos(offnum).ok_or(PageError::InvalidOffset {
            offnum,
            max: self.max_offset_number(),
        })?;
        Ok(ItemId(self.u32_at(pos)))
    }

    /// The line pointer `offnum`, which must be in 1..=PageGetMaxOffsetNumber.
    pub fn item_id_checked(&self, offnum: u16) -> Result<ItemId, PageError> {
        let max = self.max_offset_number();
        if offnum == 0 || offnum > max {
            return Err(PageError::InvalidOffset { offnum, max });
        }
        self.item_id(offnum)
    }

    /// Overwrites line pointer `offnum` (which must lie inside the page).
    pub fn set_item_id(&mut self, offnum: u16, item_id: ItemId) -> Result<(), PageError> {
        let pos = Page::item_id_pos(offnum).ok_or(PageError::InvalidOffset {
            offnum,
            max: self.max_offset_number(),
        })?;
        self.set_u32_at(pos, item_id.0);
        Ok(())
    }

    /// The byte range of the item `item_id` (line pointer `offnum`) points at
    /// (PageGetItem), checked to lie inside the page.
    pub fn item_range(
        &self,
        offnum: u16,
        item_id: ItemId,
    ) -> Result<std::ops::Range<usize>, PageError> {
        let start = item_id.lp_off();
        let end = start + item_id.lp_len();
        if end > BLCKSZ {
            return Err(PageError::ItemOutsidePage {
                offnum,
                offset: start,
                len: item_id.lp_len(),
            });
        }
        Ok(start..end)
    }

    /// PageGetItem for line pointer `offnum`.
    pub fn item(&self, offnum: u16) -> Result<&[u8], PageError> {
        let range = self.item_range(offnum, self.item_id(offnum)?)?;
        Ok(&self.bytes[range])
    }

    /// PageGetItem for line pointer `offnum`, mutably.
    pub fn item_mut(&mut self, offnum: u16) -> Result<&mut [u8], PageError> {
        let range = self.item_range(offnum, self.item_id(offnum)?)?;
        Ok(&mut self.bytes[range])
    }

    /// The line pointer array 1..=PageGetMaxOffsetNumber.
    pub fn item_ids(&self) -> impl Iterator<Item = (u16, ItemId)> + '_ {
        (FIRST_OFFSET_NUMBER..=self.max_offset_number())
            .filter_map(move |offnum| self.item_id(offnum).ok().map(|id| (offnum, id)))
    }

    /// PageGetContents: the bytes after the MAXALIGNed header (the visibility map's
    /// bitmap lives there).
    pub fn contents(&self) -> &[u8] {
        &self.bytes[max_align(SIZE_OF_PAGE_HEADER)..]
    }

    pub fn contents_mut(&mut self) -> &mut [u8] {
        &mut self.bytes[max_align(SIZE_OF_PAGE_HEADER)..]
    }

    /// The special space (PageGetSpecialPointer .. end of page), checked.
    pub fn special_space(&self) -> Result<&[u8], PageError> {
        let special = usize::from(self.special());
        if !(SIZE_OF_PAGE_HEADER..=BLCKSZ).contains(&special) {
            return Err(self.corrupt_pointers());
        }
        Ok(&self.bytes[special..])
    }

    pub fn special_space_mut(&mut self) -> Result<&mut [u8], PageError> {
        let special = usize::from(self.special());
        if !(SIZE_OF_PAGE_HEADER..=BLCKSZ).contains(&special) {
            return Err(self.corrupt_pointers());
        }
        Ok(&mut self.bytes[special..])
    }

    fn corrupt_pointers(&self) -> PageError {
        PageError::CorruptPointers {
            lower: self.lower(),
            upper: self.upper(),
            special: self.special(),
        }
    }

    /// The "be wary about corrupted page pointers" check shared by the routines that
    /// move tuples (`pd_special` MAXALIGNed when `require_aligned_special`).
    fn check_pointers(&self, require_aligned_special: bool) -> Result<(), PageError> {
        let (lower, upper, special) = (
            usize::from(self.lower()),
            usize::from(self.upper()),
            usize::from(self.special()),
        );
        if lower < SIZE_OF_PAGE_HEADER
            || lower > upper
            || upper > special
            || special > BLCKSZ
            || (require_aligned_special && special != max_align(special))
        {
            return Err(self.corrupt_pointers());
        }
        Ok(())
    }

    // ---- bufpage.c -----------------------------------------------------------

    /// Mirrors PageInit (bufpage.c): zero the page, then set the pointers for an
    /// empty page with `special_size` (MAXALIGNed) bytes of special space. Panics if
    /// the special space leaves no room for the header, as Postgres asserts.
    pub fn init(&mut self, special_size: usize) {
        let special_size = max_align(special_size);
        assert!(
            BLCKSZ > special_size + SIZE_OF_PAGE_HEADER,
            "PageInit: special space of {special_size} bytes does not fit a page"
        );
        self.bytes.fill(0);
        self.set_flags(0);
        self.set_lower(SIZE_OF_PAGE_HEADER as u16);
        self.set_upper((BLCKSZ - special_size) as u16);
        self.set_special((BLCKSZ - special_size) as u16);
        self.set_pagesize_version(BLCKSZ as u16 | PG_PAGE_LAYOUT_VERSION);
    }

    /// PageGetSpecialSize: bytes from pd_special to the end of the page.
    pub fn special_size(&self) -> Result<usize, PageError> {
        Ok(self.special_space()?.len())
    }

    /// Mirrors PageGetTempPageCopySpecial (bufpage.c): `temp` (whatever it held)
    /// becomes an empty page (PageInit, so all zeros but the header) with this page's
    /// special space copied over. Putting it back is PageRestoreTempPage, a plain copy
    /// of the whole page (or a swap). The caller keeps `temp` for the next time
    /// instead of allocating a page each time.
    pub fn temp_copy_special_into(&self, temp: &mut Page) -> Result<(), PageError> {
        let special_size = self.special_size()?;
        if max_align(special_size) + SIZE_OF_PAGE_HEADER >= BLCKSZ {
            return Err(self.corrupt_pointers());
        }
        temp.init(special_size);
        let at = usize::from(temp.special());
        let from = usize::from(self.special());
        temp.bytes[at..at + special_size].copy_from_slice(&self.bytes[from..]);
        Ok(())
    }

    /// Mirrors PageAddItemExtended (bufpage.c). Returns the offset number the item
    /// was placed at. Where Postgres returns InvalidOffsetNumber (after a WARNING,
    /// or silently when the item does not fit) this returns the reason; on such an
    /// error the page is unchanged.
    pub fn add_item_extended(
        &mut self,
        item: &[u8],
        offset_number: u16,
        flags: AddItemFlags,
    ) -> Result<u16, PageError> {
        let size = item.len();
        // "Be wary about corrupted page pointers": PANIC in Postgres.
        self.check_pointers(false)?;

        let limit = self.max_offset_number() + 1;
        let mut needshuffle = false;
        let mut offnum = offset_number;

        if offnum != INVALID_OFFSET_NUMBER && offnum <= MAX_OFFSET_NUMBER {
            if flags.overwrite {
                if offnum < limit {
                    let item_id = self.item_id(offnum)?;
                    if item_id.is_used() || item_id.has_storage() {
                        return Err(PageError::ItemIdInUse { offnum });
                    }
                }
            } else if offnum < limit {
                needshuffle = true;
            }
        } else {
            // Not a valid offset number (OffsetNumberIsValid): find a free slot; if
            // there is none, use limit (the first open slot).
            if self.has_free_line_pointers() {
                offnum = FIRST_OFFSET_NUMBER;
                while offnum < limit {
                    let item_id = self.item_id(offnum)?;
                    if !item_id.is_used() && !item_id.has_storage() {
                        break;
                    }
                    offnum += 1;
                }
                if offnum >= limit {
                    // The hint is wrong, so reset it.
                    self.set_has_free_line_pointers(false);
                }
            } else {
                offnum = limit;
            }
        }
        if offnum > limit {
            return Err(PageError::OffsetTooLarge { offnum, limit });
        }
        if flags.is_heap && usize::from(offnum) > MAX_HEAP_TUPLES_PER_PAGE {
            return Err(PageError::TooManyHeapTuples { offnum });
        }

        // Signed arithmetic, as Postgres does, so that a huge item cannot wrap.
        let lower = if offnum == limit || needshuffle {
            i64::from(self.lower()) + ITEM_ID_SIZE as i64
        } else {
            i64::from(self.lower())
        };
        let aligned_size = max_align(size);
        let upper = i64::from(self.upper()) - aligned_size as i64;
        if lower > upper {
            return Err(PageError::NoSpace {
                size,
                lower: self.lower(),
                upper: self.upper(),
            });
        }
        // lp_len has 15 bits; Postgres never builds items that large.
        if size > 0x7fff {
            return Err(PageError::ItemTooLarge { size });
        }
        let (lower, upper) = (lower as usize, upper as usize);

        let pos = Page::item_id_pos(offnum).ok_or(PageError::OffsetTooLarge { offnum, limit })?;
        if needshuffle {
            let count = usize::from(limit - offnum) * ITEM_ID_SIZE;
            self.bytes.copy_within(pos..pos + count, pos + ITEM_ID_SIZE);
        }
        self.set_u32_at(pos, ItemId::normal(upper, size).0);
        self.bytes[upper..upper + size].copy_from_slice(item);
        self.set_lower(lower as u16);
        self.set_upper(upper as u16);
        Ok(offnum)
    }

    /// Mirrors compactify_tuples (bufpage.c): moves the items listed in `items` to
    /// the end of the page, in list order (so in reverse line pointer order when the
    /// list is in line pointer order), and sets pd_upper. Bytes between the new
    /// pd_upper and the old one keep whatever they held, as in Postgres.
    ///
    /// `presorted` means `items` is in strictly descending `item_off` order, which
    /// lets Postgres move tuples in place; otherwise they go through a scratch copy.
    /// Both paths are kept so that every byte written matches Postgres's.
    fn compactify_tuples(&mut self, items: &[CompactItem], presorted: bool) {
        debug_assert!(!items.is_empty());
        let special = usize::from(self.special());
        let mut upper: usize;
        let mut i: usize;
        let mut current: CompactItem;
        if presorted {
            // Skip the tuples already in their final place at the end of the page.
            upper = special;
            i = 0;
            loop {
                current = items[i];
                if upper != current.end() {
                    break;
                }
                upper -= current.aligned_len();
                i += 1;
                if i >= items.len() {
                    break;
                }
            }
            let mut copy_tail = current.end();
            let mut copy_head = copy_tail;
            while i < items.len() {
                current = items[i];
                if copy_head != current.end() {
                    // A gap: move everything gathered so far in one go.
                    self.bytes.copy_within(copy_head..copy_tail, upper);
                    copy_tail = current.end();
                }
                upper -= current.aligned_len();
                copy_head = current.item_off();
                self.set_lp_off(current.offset_index(), upper);
                i += 1;
            }
            self.bytes.copy_within(copy_head..copy_tail, upper);
        } else {
            let mut scratch = [0u8; BLCKSZ];
            if items.len() < usize::from(self.max_offset_number()) / 4 {
                // Most tuples were removed: copy the survivors one by one.
                for item in items {
                    let range = item.item_off()..item.end();
                    scratch[range.clone()].copy_from_slice(&self.bytes[range]);
                }
                i = 0;
                current = items[0];
                upper = special;
            } else {
                upper = special;
                i = 0;
                loop {
                    current = items[i];
                    if upper != current.end() {
                        break;
                    }
                    upper -= current.aligned_len();
                    i += 1;
                    if i >= items.len() {
                        break;
                    }
                }
                // Copy everything that may need to move into the scratch page.
                let old_upper = usize::from(self.upper());
                if upper > old_upper {
                    scratch[old_upper..upper].copy_from_slice(&self.bytes[old_upper..upper]);
                }
            }
            let mut copy_tail = current.end();
            let mut copy_head = copy_tail;
            while i < items.len() {
                current = items[i];
                if copy_head != current.end() {
                    let len = copy_tail - copy_head;
                    self.bytes[upper..upper + len].copy_from_slice(&scratch[copy_head..copy_tail]);
                    copy_tail = current.end();
                }
                upper -= current.aligned_len();
                copy_head = current.item_off();
                self.set_lp_off(current.offset_index(), upper);
                i += 1;
            }
            let len = copy_tail - copy_head;
            self.bytes[upper..upper + len].copy_from_slice(&scratch[copy_head..copy_tail]);
        }
        self.set_upper(upper as u16);
    }

    /// `lp->lp_off = off` for the line pointer at array index `index`.
    fn set_lp_off(&mut self, index: usize, off: usize) {
        let pos = SIZE_OF_PAGE_HEADER + index * ITEM_ID_SIZE;
        let item_id = ItemId(self.u32_at(pos)).with_off(off);
        self.set_u32_at(pos, item_id.0);
    }

    /// Mirrors PageRepairFragmentation (bufpage.c): compacts a heap page's tuples
    /// after pruning, truncates trailing unused line pointers, and sets or clears
    /// PD_HAS_FREE_LINES.
    pub fn repair_fragmentation(&mut self) -> Result<(), PageError> {
        let pd_lower = usize::from(self.lower());
        let pd_upper = usize::from(self.upper());
        let pd_special = usize::from(self.special());
        self.check_pointers(true)?;

        let nline = self.max_offset_number();
        if usize::from(nline) > MAX_HEAP_TUPLES_PER_PAGE {
            // Postgres's itemidbase array holds MaxHeapTuplesPerPage entries.
            return Err(PageError::TooManyItems {
                count: usize::from(nline),
            });
        }
        let mut items = [CompactItem::default(); MAX_HEAP_TUPLES_PER_PAGE];
        let mut nitems = 0usize;
        let mut nunused = 0usize;
        let mut totallen = 0usize;
        let mut last_offset = pd_special;
        let mut presorted = true;
        let mut final_used = INVALID_OFFSET_NUMBER;
        for offnum in FIRST_OFFSET_NUMBER..=nline {
            let item_id = self.item_id(offnum)?;
            if item_id.is_used() {
                if item_id.has_storage() {
                    let item_off = item_id.lp_off();
                    if last_offset > item_off {
                        last_offset = item_off;
                    } else {
                        presorted = false;
                    }
                    if item_off < pd_upper || item_off >= pd_special {
                        return Err(PageError::CorruptLinePointer {
                            offset: item_off,
                            size: item_id.lp_len(),
                        });
                    }
                    let aligned_len = max_align(item_id.lp_len());
                    if item_off + aligned_len > BLCKSZ {
                        // Postgres would copy from beyond the page.
                        return Err(PageError::CorruptLinePointer {
                            offset: item_off,
                            size: item_id.lp_len(),
                        });
                    }
                    totallen += aligned_len;
                    // nline <= MaxHeapTuplesPerPage: there is a slot.
                    items[nitems] =
                        CompactItem::new(usize::from(offnum) - 1, item_off, aligned_len);
                    nitems += 1;
                }
                final_used = offnum;
            } else {
                self.set_item_id(offnum, ItemId::UNUSED)?;
                nunused += 1;
            }
        }

        if nitems == 0 {
            self.set_upper(pd_special as u16);
        } else {
            if totallen > pd_special - pd_lower {
                return Err(PageError::CorruptItemLengths {
                    total: totallen,
                    available: pd_special - pd_lower,
                });
            }
            self.compactify_tuples(&items[..nitems], presorted);
        }

        if final_used != nline {
            // Truncate the trailing unused line pointers.
            let nunused_end = usize::from(nline - final_used);
            nunused -= nunused_end;
            self.set_lower((pd_lower - ITEM_ID_SIZE * nunused_end) as u16);
        }
        self.set_has_free_line_pointers(nunused > 0);
        Ok(())
    }

    /// Mirrors PageTruncateLinePointerArray (bufpage.c): drops unused line pointers at
    /// the end of the array (always keeping the first one) and sets or clears
    /// PD_HAS_FREE_LINES.
    pub fn truncate_line_pointer_array(&mut self) -> Result<(), PageError> {
        let mut countdone = false;
        let mut sethint = false;
        let mut nunused_end = 0usize;
        let max = self.max_offset_number();
        for offnum in (FIRST_OFFSET_NUMBER..=max).rev() {
            let item_id = self.item_id(offnum)?;
            if !countdone && offnum > FIRST_OFFSET_NUMBER {
                if !item_id.is_used() {
                    nunused_end += 1;
                } else {
                    countdone = true;
                }
            } else if !item_id.is_used() {
                sethint = true;
                break;
            }
        }
        if nunused_end > 0 {
            let lower = usize::from(self.lower()) - ITEM_ID_SIZE * nunused_end;
            self.set_lower(lower as u16);
        }
        self.set_has_free_line_pointers(sethint);
        Ok(())
    }

    /// Mirrors PageGetFreeSpace: free space less one line pointer, 0 if none.
    pub fn free_space(&self) -> usize {
        let space = i64::from(self.upper()) - i64::from(self.lower());
        if space < ITEM_ID_SIZE as i64 {
            0
        } else {
            (space - ITEM_ID_SIZE as i64) as usize
        }
    }

    /// Mirrors PageGetFreeSpaceForMultipleTuples.
    pub fn free_space_for_multiple_tuples(&self, ntups: usize) -> usize {
        let space = i64::from(self.upper()) - i64::from(self.lower());
        let needed = (ntups * ITEM_ID_SIZE) as i64;
        if space < needed {
            0
        } else {
            (space - needed) as usize
        }
    }

    /// Mirrors PageGetExactFreeSpace.
    pub fn exact_free_space(&self) -> usize {
        let space = i64::from(self.upper()) - i64::from(self.lower());
        space.max(0) as usize
    }

    /// Mirrors PageGetHeapFreeSpace: as [`Page::free_space`], but 0 when the page
    /// already has MaxHeapTuplesPerPage line pointers and none is free.
    pub fn heap_free_space(&self) -> usize {
        let mut space = self.free_space();
        if space > 0 {
            let nline = self.max_offset_number();
            if usize::from(nline) >= MAX_HEAP_TUPLES_PER_PAGE {
                if self.has_free_line_pointers() {
                    // The hint may be wrong: confirm there is a free line pointer.
                    let any_free = (FIRST_OFFSET_NUMBER..=nline)
                        .any(|offnum| self.item_id(offnum).is_ok_and(|id| !id.is_used()));
                    if !any_free {
                        space = 0;
                    }
                } else {
                    space = 0;
                }
            }
        }
        space
    }

    /// The checks PageIndexTupleDelete and friends make on one line pointer: returns
    /// (offset, lp_len).
    fn check_index_item(&self, offnum: u16) -> Result<(usize, usize), PageError> {
        let item_id = self.item_id(offnum)?;
        let size = item_id.lp_len();
        let offset = item_id.lp_off();
        if offset < usize::from(self.upper())
            || offset + size > usize::from(self.special())
            || offset != max_align(offset)
        {
            return Err(PageError::CorruptLinePointer { offset, size });
        }
        Ok((offset, size))
    }

    /// Mirrors PageIndexTupleDelete (bufpage.c): removes an index tuple and its line
    /// pointer, closing both gaps.
    pub fn index_tuple_delete(&mut self, offnum: u16) -> Result<(), PageError> {
        self.check_pointers(true)?;
        let nline = self.max_offset_number();
        if offnum == 0 || offnum > nline {
            return Err(PageError::InvalidOffset { offnum, max: nline });
        }
        let (offset, size) = self.check_index_item(offnum)?;
        let size = max_align(size);

        // Close the gap in the line pointer array.
        let lp_pos = SIZE_OF_PAGE_HEADER + usize::from(offnum - 1) * ITEM_ID_SIZE;
        let next_pos = lp_pos + ITEM_ID_SIZE;
        let lower = usize::from(self.lower());
        if lower > next_pos {
            self.bytes.copy_within(next_pos..lower, lp_pos);
        }

        // Move the tuple data before the deleted tuple up by its size.
        let upper = usize::from(self.upper());
        if offset > upper {
            self.bytes.copy_within(upper..offset, upper + size);
        }
        self.set_upper((upper + size) as u16);
        self.set_lower((lower - ITEM_ID_SIZE) as u16);

        if !self.is_empty() {
            for other in FIRST_OFFSET_NUMBER..nline {
                let item_id = self.item_id(other)?;
                if item_id.lp_off() <= offset {
                    self.set_item_id(other, item_id.with_off(item_id.lp_off() + size))?;
                }
            }
        }
        Ok(())
    }

    /// Mirrors PageIndexMultiDelete (bufpage.c): removes the index tuples at
    /// `itemnos`, which must be in ascending order.
    pub fn index_multi_delete(&mut self, itemnos: &[u16]) -> Result<(), PageError> {
        if itemnos.len() > MAX_INDEX_TUPLES_PER_PAGE {
            return Err(PageError::TooManyItems {
                count: itemnos.len(),
            });
        }
        if itemnos.len() <= 2 {
            // Few items: retail deletion, last first so offsets stay valid.
            for offnum in itemnos.iter().rev() {
                self.index_tuple_delete(*offnum)?;
            }
            return Ok(());
        }
        self.check_pointers(true)?;
        let pd_lower = usize::from(self.lower());
        let pd_upper = usize::from(self.upper());
        let pd_special = usize::from(self.special());

        let nline = self.max_offset_number();
        if usize::from(nline) > MAX_INDEX_TUPLES_PER_PAGE {
            // Postgres's itemidbase and newitemids arrays hold MaxIndexTuplesPerPage
            // entries; an index page cannot have more line pointers.
            return Err(PageError::TooManyItems {
                count: usize::from(nline),
            });
        }
        let mut items = [CompactItem::default(); MAX_INDEX_TUPLES_PER_PAGE];
        let mut new_item_ids = [ItemId::UNUSED; MAX_INDEX_TUPLES_PER_PAGE];
        let mut nkept = 0usize;
        let mut totallen = 0usize;
        let mut nextitm = 0usize;
        let mut last_offset = pd_special;
        let mut presorted = true;
        for offnum in FIRST_OFFSET_NUMBER..=nline {
            let item_id = self.item_id(offnum)?;
            let size = item_id.lp_len();
            let offset = item_id.lp_off();
            if offset < pd_upper || offset + size > pd_special || offset != max_align(offset) {
                return Err(PageError::CorruptLinePointer { offset, size });
            }
            if nextitm < itemnos.len() && offnum == itemnos[nextitm] {
                nextitm += 1;
            } else {
                if last_offset > offset {
                    last_offset = offset;
                } else {
                    presorted = false;
                }
                let aligned_len = max_align(size);
                totallen += aligned_len;
                items[nkept] = CompactItem::new(nkept, offset, aligned_len);
                new_item_ids[nkept] = item_id;
                nkept += 1;
            }
        }
        if nextitm != itemnos.len() {
            return Err(PageError::IncorrectIndexOffsets);
        }
        if totallen > pd_special - pd_lower {
            return Err(PageError::CorruptItemLengths {
                total: totallen,
                available: pd_special - pd_lower,
            });
        }
        for (index, item_id) in new_item_ids[..nkept].iter().enumerate() {
            self.set_u32_at(SIZE_OF_PAGE_HEADER + index * ITEM_ID_SIZE, item_id.0);
        }
        self.set_lower((SIZE_OF_PAGE_HEADER + nkept * ITEM_ID_SIZE) as u16);
        if nkept == 0 {
            self.set_upper(pd_special as u16);
        } else {
            self.compactify_tuples(&items[..nkept], presorted);
        }
        Ok(())
    }

    /// Mirrors PageIndexTupleDeleteNoCompact (bufpage.c): removes an index tuple's
    /// data, marking its line pointer unused (or dropping it if it is the last one).
    pub fn index_tuple_delete_no_compact(&mut self, offnum: u16) -> Result<(), PageError> {
        self.check_pointers(true)?;
        let mut nline = self.max_offset_number();
        if offnum == 0 || offnum > nline {
            return Err(PageError::InvalidOffset { offnum, max: nline });
        }
        let (offset, size) = self.check_index_item(offnum)?;
        let size = max_align(size);

        if offnum < nline {
            self.set_item_id(offnum, ItemId::UNUSED)?;
        } else {
            self.set_lower(self.lower() - ITEM_ID_SIZE as u16);
            nline -= 1;
        }

        let upper = usize::from(self.upper());
        if offset > upper {
            self.bytes.copy_within(upper..offset, upper + size);
        }
        self.set_upper((upper + size) as u16);

        if !self.is_empty() {
            for other in FIRST_OFFSET_NUMBER..=nline {
                let item_id = self.item_id(other)?;
                if item_id.has_storage() && item_id.lp_off() <= offset {
                    self.set_item_id(other, item_id.with_off(item_id.lp_off() + size))?;
                }
            }
        }
        Ok(())
    }

    /// Mirrors PageIndexTupleOverwrite (bufpage.c): replaces the tuple at `offnum` in
    /// place, shifting the data before it. Returns false (page unchanged) if the new
    /// tuple does not fit.
    pub fn index_tuple_overwrite(
        &mut self,
        offnum: u16,
        new_tuple: &[u8],
    ) -> Result<bool, PageError> {
        self.check_pointers(true)?;
        let itemcount = self.max_offset_number();
        if offnum == 0 || offnum > itemcount {
            return Err(PageError::InvalidOffset {
                offnum,
                max: itemcount,
            });
        }
        let (offset, oldsize) = self.check_index_item(offnum)?;
        let oldsize = max_align(oldsize);
        let aligned_new_size = max_align(new_tuple.len());
        let (lower, upper) = (usize::from(self.lower()), usize::from(self.upper()));
        if aligned_new_size > oldsize + (upper - lower) {
            return Ok(false);
        }
        if new_tuple.len() > 0x7fff {
            return Err(PageError::ItemTooLarge {
                size: new_tuple.len(),
            });
        }
        // How much the tuple shrinks: the delta for pd_upper and the moved pointers.
        let size_diff = oldsize as i64 - aligned_new_size as i64;
        if size_diff != 0 {
            let new_upper = (upper as i64 + size_diff) as usize;
            self.bytes.copy_within(upper..offset, new_upper);
            self.set_upper(new_upper as u16);
            for other in FIRST_OFFSET_NUMBER..=itemcount {
                let item_id = self.item_id(other)?;
                if item_id.has_storage() && item_id.lp_off() <= offset {
                    let moved = (item_id.lp_off() as i64 + size_diff) as usize;
                    self.set_item_id(other, item_id.with_off(moved))?;
                }
            }
        }
        let new_offset = (offset as i64 + size_diff) as usize;
        let item_id = self
            .item_id(offnum)?
            .with_off(new_offset)
            .with_len(new_tuple.len());
        self.set_item_id(offnum, item_id)?;
        self.bytes[new_offset..new_offset + new_tuple.len()].copy_from_slice(new_tuple);
        Ok(true)
    }
}

/// TransactionIdPrecedes (transam.c): modulo-2^32 comparison for normal XIDs, plain
/// comparison when either is a permanent XID (< 3).
pub fn transaction_id_precedes(id1: u32, id2: u32) -> bool {
    const FIRST_NORMAL_TRANSACTION_ID: u32 = 3;
    if id1 < FIRST_NORMAL_TRANSACTION_ID || id2 < FIRST_NORMAL_TRANSACTION_ID {
        return id1 < id2;
    }
    (id1.wrapping_sub(id2) as i32) < 0
}

#[cfg(test)]
#[path = "page_tests.rs"]
mod tests;
