//! Data page checksums (`pd_checksum`), as Postgres computes them when it writes a page
//! of a cluster initialised with `--data-checksums` (storage/checksum_impl.h): 32
//! interleaved FNV-1a-like hashes over the page read as little-endian `u32` words, with
//! `pd_checksum` taken as zero, two extra rounds of zeros, folded by xor, mixed with the
//! block number and reduced to 1..=65535.
//!
//! The store's pages carry whatever `pd_checksum` the page had when WAL or the import
//! saw it (redo stamps LSNs, not checksums), so a basebackup of a cluster with checksums
//! sets it on every page, as the buffer manager does on every write.

use crate::page::{BLCKSZ, Page};

/// Hashes computed side by side (N_SUMS).
const N_SUMS: usize = 32;
/// FNV-1a's 32-bit prime.
const FNV_PRIME: u32 = 16_777_619;
/// Byte offset of `pd_checksum` in the page header.
const PD_CHECKSUM_OFFSET: usize = 8;

/// The starting state of each of the [`N_SUMS`] hashes (checksumBaseOffsets).
const BASE_OFFSETS: [u32; N_SUMS] = [
    0x5B1F36E9, 0xB8525960, 0x02AB50AA, 0x1DE66D2A, 0x79FF467A, 0x9BB9F8A3, 0x217E7CD2, 0x83E13D2C,
    0xF8D4474F, 0xE39EB970, 0x42C6AE16, 0x993216FA, 0x7B093B5D, 0x98DAFF3C, 0xF718902A, 0x0B1C9CDB,
    0xE58F764B, 0x187636BC, 0x5D7B3BB1, 0xE73DE7DE, 0x92BEC979, 0xCCA6C0B2, 0x304A0979, 0x85AA43D4,
    0x783125BB, 0x6CA8EAA2, 0xE407EAC6, 0x4B5CFC3E, 0x9FBF8C76, 0x15CA20BE, 0xF2CA9FD3, 0x959BD756,
];

/// One round of one hash (CHECKSUM_COMP).
fn mix(sum: u32, value: u32) -> u32 {
    let tmp = sum ^ value;
    tmp.wrapping_mul(FNV_PRIME) ^ (tmp >> 17)
}

/// pg_checksum_block: the page's words with `pd_checksum` read as zero.
fn checksum_block(page: &[u8; BLCKSZ]) -> u32 {
    let mut sums = BASE_OFFSETS;
    for (index, word) in page.chunks_exact(4).enumerate() {
        let mut bytes = [word[0], word[1], word[2], word[3]];
        // pd_checksum is the low half of the third word (little-endian).
        if index * 4 == PD_CHECKSUM_OFFSET {
            bytes[0] = 0;
            bytes[1] = 0;
        }
        let slot = index % N_SUMS;
        sums[slot] = mix(sums[slot], u32::from_le_bytes(bytes));
    }
    for _ in 0..2 {
        for sum in sums.iter_mut() {
            *sum = mix(*sum, 0);
        }
    }
    sums.iter().fold(0, |folded, sum| folded ^ sum)
}

/// pg_checksum_page: the checksum of block `blkno` of a relation fork holding `page`.
/// Defined for initialised pages only (Postgres never checksums a new page).
pub fn pg_checksum_page(page: &Page, blkno: u32) -> u16 {
    let checksum = checksum_block(page.as_bytes()) ^ blkno;
    // Offset by one: a checksum is never zero.
    ((checksum % 65_535) + 1) as u16
}

/// Sets `pd_checksum` as Postgres does before writing block `blkno`
/// (PageSetChecksumInplace): new (all-zero header) pages are left alone.
pub fn set_page_checksum(page: &mut Page, blkno: u32) {
    if !page.is_new() {
        let checksum = pg_checksum_page(page, blkno);
        page.set_checksum(checksum);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Block 5 of pg_proc (base/1/1255) from `initdb --data-checksums` of PostgreSQL
    /// 15.18, as written to disk.
    const PG_PROC_BLOCK_5: &[u8; BLCKSZ] = include_bytes!("testdata/pg_proc_block5.page");

    #[test]
    fn matches_a_page_postgres_checksummed() {
        let page = Page::from_bytes(PG_PROC_BLOCK_5).expect("8 KiB");
        assert_eq!(page.checksum(), 0xCA71, "the fixture's stored checksum");
        assert_eq!(pg_checksum_page(&page, 5), page.checksum());
        // The block number is part of the checksum, and so is every byte but
        // pd_checksum itself.
        assert_ne!(pg_checksum_page(&page, 6), page.checksum());
        let mut changed = page.clone();
        changed.as_bytes_mut()[4000] ^= 1;
        assert_ne!(pg_checksum_page(&changed, 5), page.checksum());
        let mut stale = page.clone();
        stale.set_checksum(0x1234);
        assert_eq!(pg_checksum_page(&stale, 5), 0xCA71);
        set_page_checksum(&mut stale, 5);
        assert_eq!(stale.as_bytes(), page.as_bytes());
    }

    #[test]
    fn new_pages_keep_no_checksum() {
        let mut page = Page::zeroed();
        set_page_checksum(&mut page, 3);
        assert_eq!(page.checksum(), 0);
    }
}
