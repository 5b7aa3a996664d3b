//! Delta replay is a tight loop with no allocation per record: the chains of
//! `support/workload.rs` (heap inserts, HOT and non-HOT updates, deletes, locks,
//! multi-inserts, prune, vacuum, freeze, visible, compressed FPIs; btree inserts,
//! dedup, posting list splits, vacuum and delete with posting list updates, a page
//! split, image deltas; VM, CLOG and multixact changes) are replayed under a counting
//! global allocator.
//!
//! With working memory kept across reads (as `PageReader` keeps it), replaying a
//! chain allocates once: the page it returns. Without (`replay`), what it allocates
//! does not grow with the chain.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use tarn_pages::RedoScratch;
use tarn_pages::reconstruct::{replay, replay_with};

#[path = "support/workload.rs"]
mod workload;

/// Counts the allocations made by the current thread while it is counting (tests run
/// on threads of their own, so they do not see each other's).
struct CountingAllocator;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn note_allocation() {
    // try_with: thread-locals may be gone while a thread exits.
    let counting = COUNTING.try_with(Cell::get).unwrap_or(false);
    if counting {
        let _ = ALLOCATIONS.try_with(|count| count.set(count.get() + 1));
    }
}

// SAFETY: every call is passed on to the system allocator unchanged; the counting
// touches only const-initialised thread-locals without destructors, which never
// allocate.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_allocation();
        // SAFETY: the caller's guarantees for `layout` are System's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note_allocation();
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_allocation();
        // SAFETY: `ptr` was allocated by System (through this allocator) with `layout`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// Runs `f`, returning how many allocations (and reallocations) it made.
fn allocations_during<R>(f: impl FnOnce() -> R) -> (u64, R) {
    ALLOCATIONS.with(|count| count.set(0));
    COUNTING.with(|counting| counting.set(true));
    let result = f();
    COUNTING.with(|counting| counting.set(false));
    (ALLOCATIONS.with(Cell::get), result)
}

const DELTAS: usize = 300;

/// The record kinds each chain must hold, so that the test keeps covering them.
fn required_kinds(name: &str) -> &'static [&'static str] {
    match name {
        "heap" => &[
            "Heap/INSERT",
            "Heap/HOT_UPDATE",
            "Heap/UPDATE",
            "Heap/DELETE",
            "Heap/LOCK",
            "Heap2/MULTI_INSERT",
            "Heap2/PRUNE",
            "Heap2/VACUUM",
            "Heap2/FREEZE_PAGE",
            "Heap2/VISIBLE",
            "XLOG/FPI",
        ],
        "btree" => &[
            "Btree/INSERT_LEAF",
            "Btree/INSERT_POST",
            "Btree/DEDUP",
            "Btree/VACUUM",
            "Btree/DELETE",
            "Btree/SPLIT_L",
            "image",
        ],
        "vm" => &["Heap2/VISIBLE", "clear vm bits"],
        "clog" => &["clog set status"],
        "multixact offsets" => &["multixact offsets"],
        "multixact members" => &["multixact members"],
        other => panic!("no required record kinds for chain {other}"),
    }
}

#[test]
fn the_chains_hold_every_record_kind_they_stand_for() {
    for workload in workload::all(DELTAS) {
        assert_eq!(workload.deltas(), DELTAS, "{}", workload.name);
        let kinds = workload.record_kinds();
        for kind in required_kinds(workload.name) {
            assert!(
                kinds.contains(*kind),
                "the {} chain has no {kind}: {kinds:?}",
                workload.name
            );
        }
    }
}

#[test]
fn replay_with_kept_scratch_allocates_only_the_page() {
    for workload in workload::all(DELTAS) {
        let mut scratch = RedoScratch::new();
        // The first replay sizes the scratch's buffers (and zstd's context).
        replay_with(workload.key, &workload.data, &mut scratch)
            .unwrap_or_else(|error| panic!("{}: {error}", workload.name));
        let (allocations, result) =
            allocations_during(|| replay_with(workload.key, &workload.data, &mut scratch));
        let (_page, stats) = result.unwrap_or_else(|error| panic!("{}: {error}", workload.name));
        assert_eq!(stats.deltas as usize, DELTAS, "{}", workload.name);
        assert_eq!(
            allocations, 1,
            "replaying the {} chain ({} records) allocated {allocations} times; only the \
             page it returns should be allocated",
            workload.name, stats.records
        );
    }
}

#[test]
fn replay_allocates_the_same_for_short_and_long_chains() {
    let short = workload::all(DELTAS);
    let long = workload::all(2 * DELTAS);
    for (short, long) in short.iter().zip(&long) {
        // zstd's per-thread decompression context, made once per thread.
        replay(long.key, &long.data).unwrap_or_else(|error| panic!("{}: {error}", long.name));
        let (short_allocations, result) = allocations_during(|| replay(short.key, &short.data));
        result.unwrap_or_else(|error| panic!("{}: {error}", short.name));
        let (long_allocations, result) = allocations_during(|| replay(long.key, &long.data));
        result.unwrap_or_else(|error| panic!("{}: {error}", long.name));
        assert_eq!(
            short_allocations,
            long_allocations,
            "{}: {DELTAS} deltas allocated {short_allocations} times, {} deltas \
             {long_allocations} times",
            short.name,
            2 * DELTAS
        );
        // The page, and scratch buffers sized once each (tuple, posting list,
        // temporary page, the four of a deduplication pass).
        assert!(
            long_allocations <= 8,
            "{}: {long_allocations} allocations",
            long.name
        );
    }
}
