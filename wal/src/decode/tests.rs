//! Unit tests of the decoder: hand-built records for every header variant, page images
//! in every storage form, every check of DecodeXLogRecord, seeded random mutations that
//! must never panic, and the stream decoder/reader over laid-out WAL.

use bytes::Bytes;

use super::pglz::pglz_compress_for_tests;
use super::*;
use crate::format::synth::WalGenerator;
use crate::format::{
    LongPageHeader, PageHeader, SIZE_OF_XLOG_LONG_PHD, SIZE_OF_XLOG_RECORD, ScanStop,
    WalStreamParams, XLOG_BLCKSZ, XLOG_PAGE_MAGIC, XLP_FIRST_IS_CONTRECORD, XLP_LONG_HEADER,
    XLogRecordHeader, max_align, record_crc,
};
use crate::{Lsn, SystemId};

const AT: Lsn = Lsn(0x0100_0028);
const REL: RelFileNode = RelFileNode {
    spc_node: 1663,
    db_node: 5,
    rel_node: 16384,
};

/// SplitMix64: seeded randomness for tests.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next_u64() as u8).collect()
    }
}

/// How a test image is stored.
#[derive(Clone, Copy, Debug)]
enum Store {
    Plain,
    Pglz,
    Lz4,
    Zstd,
}

/// A page image header and payload exactly as they go into the record.
#[derive(Clone, Debug)]
struct TestImage {
    bimg_len: u16,
    hole_offset: u16,
    bimg_info: u8,
    /// Written after bimg_info only when compressed with a hole.
    hole_length: u16,
    payload: Vec<u8>,
}

impl TestImage {
    /// The image of `page` with the hole `[hole_offset, hole_offset + hole_length)`
    /// removed (none if `hole_length == 0`), stored as XLogRecordAssemble does.
    fn of(page: &[u8; BLCKSZ], hole_offset: u16, hole_length: u16, store: Store) -> Self {
        let (off, len) = (usize::from(hole_offset), usize::from(hole_length));
        let mut raw = page[..off].to_vec();
        raw.extend_from_slice(&page[off + len..]);
        let (method, payload) = match store {
            Store::Plain => (0, raw),
            Store::Pglz => (BKPIMAGE_COMPRESS_PGLZ, pglz_compress_for_tests(&raw)),
            Store::Lz4 => (BKPIMAGE_COMPRESS_LZ4, lz4_flex::block::compress(&raw)),
            Store::Zstd => (
                BKPIMAGE_COMPRESS_ZSTD,
                zstd::bulk::compress(&raw, 3).expect("zstd compress"),
            ),
        };
        TestImage {
            bimg_len: payload.len() as u16,
            hole_offset,
            bimg_info: method | if len > 0 { BKPIMAGE_HAS_HOLE } else { 0 } | BKPIMAGE_APPLY,
            hole_length,
            payload,
        }
    }
}

#[derive(Clone, Debug)]
struct TestBlock {
    id: u8,
    fork_flags: u8,
    /// Declared data_length; `data` is the payload written.
    data_len: u16,
    data: Vec<u8>,
    image: Option<TestImage>,
    rel: RelFileNode,
    block: u32,
}

impl TestBlock {
    fn new(id: u8, block: u32) -> Self {
        TestBlock {
            id,
            fork_flags: 0,
            data_len: 0,
            data: Vec::new(),
            image: None,
            rel: REL,
            block,
        }
    }

    fn data(mut self, data: &[u8]) -> Self {
        self.fork_flags |= BKPBLOCK_HAS_DATA;
        self.data_len = data.len() as u16;
        self.data = data.to_vec();
        self
    }

    fn image(mut self, image: TestImage) -> Self {
        self.fork_flags |= BKPBLOCK_HAS_IMAGE;
        self.image = Some(image);
        self
    }

    fn flags(mut self, flags: u8) -> Self {
        self.fork_flags |= flags;
        self
    }
}

/// A record laid out as XLogRecordAssemble (xloginsert.c) does.
#[derive(Clone, Debug, Default)]
struct TestRecord {
    rmid: u8,
    info: u8,
    xid: u32,
    prev: u64,
    blocks: Vec<TestBlock>,
    origin: Option<u16>,
    toplevel_xid: Option<u32>,
    main_data: Vec<u8>,
}

impl TestRecord {
    fn encode(&self) -> Vec<u8> {
        let mut out = vec![0u8; SIZE_OF_XLOG_RECORD];
        for block in &self.blocks {
            out.push(block.id);
            out.push(block.fork_flags);
            out.extend_from_slice(&block.data_len.to_le_bytes());
            if let Some(image) = &block.image {
                out.extend_from_slice(&image.bimg_len.to_le_bytes());
                out.extend_from_slice(&image.hole_offset.to_le_bytes());
                out.push(image.bimg_info);
                let compressed = image.bimg_info
                    & (BKPIMAGE_COMPRESS_PGLZ | BKPIMAGE_COMPRESS_LZ4 | BKPIMAGE_COMPRESS_ZSTD)
                    != 0;
                if compressed && image.bimg_info & BKPIMAGE_HAS_HOLE != 0 {
                    out.extend_from_slice(&image.hole_length.to_le_bytes());
                }
            }
            if block.fork_flags & BKPBLOCK_SAME_REL == 0 {
                for oid in [block.rel.spc_node, block.rel.db_node, block.rel.rel_node] {
                    out.extend_from_slice(&oid.to_le_bytes());
                }
            }
            out.extend_from_slice(&block.block.to_le_bytes());
        }
        if let Some(origin) = self.origin {
            out.push(XLR_BLOCK_ID_ORIGIN);
            out.extend_from_slice(&origin.to_le_bytes());
        }
        if let Some(xid) = self.toplevel_xid {
            out.push(XLR_BLOCK_ID_TOPLEVEL_XID);
            out.extend_from_slice(&xid.to_le_bytes());
        }
        if !self.main_data.is_empty() {
            match u8::try_from(self.main_data.len()) {
                Ok(len) => out.extend_from_slice(&[255, len]),
                Err(_) => {
                    out.push(254);
                    out.extend_from_slice(&(self.main_data.len() as u32).to_le_bytes());
                }
            }
        }
        for block in &self.blocks {
            if let Some(image) = &block.image {
                out.extend_from_slice(&image.payload);
            }
            out.extend_from_slice(&block.data);
        }
        out.extend_from_slice(&self.main_data);
        let header = XLogRecordHeader {
            tot_len: out.len() as u32,
            xid: self.xid,
            prev: Lsn(self.prev),
            info: self.info,
            rmid: self.rmid,
            crc: 0,
        };
        out[..SIZE_OF_XLOG_RECORD].copy_from_slice(&header.encode());
        let crc = record_crc(&out);
        out[20..24].copy_from_slice(&crc.to_le_bytes());
        out
    }
}

/// A page that looks like a heap page: header, line pointers, free space (the hole),
/// tuples, so that the hole is zeros and the rest is not.
fn test_page(seed: u64, lower: u16, upper: u16) -> Box<[u8; BLCKSZ]> {
    let mut rng = Rng(seed);
    let mut page = Box::new([0u8; BLCKSZ]);
    let (lower_at, upper_at) = (usize::from(lower), usize::from(upper));
    page[..lower_at].copy_from_slice(&rng.bytes(lower_at));
    // Tuples are compressible: repeated short patterns.
    let pattern = rng.bytes(37);
    for (i, byte) in page[upper_at..].iter_mut().enumerate() {
        *byte = pattern[i % pattern.len()] ^ (i / 997) as u8;
    }
    page[12..14].copy_from_slice(&lower.to_le_bytes());
    page[14..16].copy_from_slice(&upper.to_le_bytes());
    page
}

/// Decodes `record` both ways, owned and in place, and checks that the two agree
/// (errors included): every test of the decoder tests both.
fn decode(record: &[u8]) -> Result<DecodedRecord, DecodeError> {
    let owned = decode_record(AT, record);
    let end_lsn = owned
        .as_ref()
        .map_or(Lsn(AT.0 + 0x2000), |decoded| decoded.end_lsn);
    let mut borrowed = DecodedRecordRef::default();
    match (
        &owned,
        decode_record_ref(AT, end_lsn, record, &mut borrowed),
    ) {
        (Ok(owned), Ok(())) => assert_eq!(owned.borrowed(), borrowed),
        (Err(owned), Err(error)) => assert_eq!(owned, &error),
        (owned, borrowed) => panic!("owned {owned:?}, in place {borrowed:?}"),
    }
    owned
}

fn decode_ok(record: &TestRecord) -> DecodedRecord {
    decode(&record.encode()).unwrap_or_else(|error| panic!("{error}"))
}

fn decode_err(record: &[u8]) -> String {
    match decode(record) {
        Ok(decoded) => panic!("decoded invalid record: {decoded:?}"),
        Err(error) => {
            assert_eq!(error.lsn, AT);
            error.detail
        }
    }
}

/// Decoding in place into one record over and over leaves nothing of the previous
/// record behind, up to the most block references a record can have.
#[test]
fn decoding_in_place_reuses_the_record() {
    let most = TestRecord {
        rmid: 10,
        blocks: (0..=XLR_MAX_BLOCK_ID)
            .map(|id| TestBlock::new(id, u32::from(id) * 3).data(&[id; 3]))
            .collect(),
        main_data: vec![7; 20],
        origin: Some(4),
        ..Default::default()
    };
    let few = TestRecord {
        rmid: 9,
        blocks: vec![TestBlock::new(2, 8).data(b"xyz")],
        toplevel_xid: Some(77),
        ..Default::default()
    };
    let (most_bytes, few_bytes) = (most.encode(), few.encode());
    let most_owned = decode_ok(&most);
    assert_eq!(most_owned.blocks.len(), MAX_BLOCK_REFS);
    let few_owned = decode_ok(&few);
    let mut record = DecodedRecordRef::default();
    for _ in 0..2 {
        decode_record_ref(AT, most_owned.end_lsn, &most_bytes, &mut record).expect("most");
        assert_eq!(record, most_owned.borrowed());
        assert_eq!(record.block(32).expect("block 32").data, &[32; 3]);
        decode_record_ref(AT, few_owned.end_lsn, &few_bytes, &mut record).expect("few");
        assert_eq!(record, few_owned.borrowed());
        assert_eq!(record.blocks.len(), 1);
        assert!(record.block(0).is_none() && record.origin.is_none());
    }
}

#[test]
fn block_refs_keep_ids_increasing_and_in_range() {
    let block = |block_id| BlockRef::<&[u8]> {
        block_id,
        ..BlockRef::default()
    };
    let mut blocks = BlockRefs::new();
    assert!(blocks.push(block(3)).is_ok());
    assert!(blocks.push(block(3)).is_err(), "repeated id");
    assert!(blocks.push(block(1)).is_err(), "decreasing id");
    assert!(
        blocks.push(block(XLR_MAX_BLOCK_ID + 1)).is_err(),
        "id above the max"
    );
    assert!(blocks.push(block(XLR_MAX_BLOCK_ID)).is_ok());
    assert_eq!(
        blocks.iter().map(|b| b.block_id).collect::<Vec<_>>(),
        [3, 32]
    );
    blocks.clear();
    assert!(blocks.is_empty());
}

#[test]
fn header_only_record() {
    let record = TestRecord {
        rmid: 0,
        info: 0x40,
        xid: 0,
        prev: 0x0100_0000,
        ..Default::default()
    };
    let decoded = decode_ok(&record);
    assert_eq!(decoded.total_len, 24);
    assert_eq!(decoded.prev, Lsn(0x0100_0000));
    assert!(decoded.blocks.is_empty());
    assert!(decoded.main_data.is_empty());
    assert!(decoded.is_xlog_switch());
    assert_eq!(decoded.type_name(), "XLOG/SWITCH");
    // A switch ends at its segment's end.
    assert_eq!(decoded.end_lsn, Lsn(0x0200_0000));
}

#[test]
fn main_data_short_and_long() {
    for len in [1usize, 255, 256, 70_000] {
        let main_data: Vec<u8> = (0..len).map(|i| i as u8).collect();
        let record = TestRecord {
            rmid: 1,
            info: 0x00,
            xid: 731,
            main_data: main_data.clone(),
            ..Default::default()
        };
        let encoded = record.encode();
        let decoded = decode(&encoded).expect("decodes");
        assert_eq!(&decoded.main_data[..], &main_data[..], "len {len}");
        assert_eq!(decoded.xid, 731);
        assert_eq!(decoded.type_name(), "Transaction/COMMIT");
        // The end skips the page headers the record crosses.
        assert_eq!(
            decoded.end_lsn,
            standard_record_end(
                AT,
                &XLogRecordHeader::decode(encoded[..24].try_into().expect("header"),),
                crate::format::DEFAULT_SEGMENT_SIZE_BYTES
            )
            .expect("end")
        );
        assert_eq!(decoded.rec_len(), encoded.len() as u64);
    }
}

#[test]
fn block_references_every_header_variant() {
    let other = RelFileNode {
        rel_node: 16390,
        ..REL
    };
    let record = TestRecord {
        rmid: 10,
        info: 0x80 | 0x01,
        xid: 800,
        blocks: vec![
            TestBlock::new(0, 7)
                .data(b"tuple-data")
                .flags(BKPBLOCK_WILL_INIT),
            TestBlock::new(1, 8).flags(BKPBLOCK_SAME_REL),
            TestBlock {
                rel: other,
                ..TestBlock::new(3, 9).data(&[1, 2, 3]).flags(2)
            },
            TestBlock::new(4, 10).flags(BKPBLOCK_SAME_REL | 1),
            TestBlock::new(32, u32::MAX).flags(3),
        ],
        origin: Some(7),
        toplevel_xid: Some(799),
        main_data: b"xl_heap_insert".to_vec(),
        ..Default::default()
    };
    let decoded = decode_ok(&record);
    assert_eq!(decoded.type_name(), "Heap/INSERT+INIT");
    assert_eq!(decoded.rmgr_info(), 0x80);
    assert_eq!(decoded.origin, Some(7));
    assert_eq!(decoded.toplevel_xid, Some(799));
    assert_eq!(&decoded.main_data[..], b"xl_heap_insert");
    type Summary<'a> = (u8, RelFileNode, ForkNumber, u32, bool, &'a [u8]);
    let summary: Vec<Summary<'_>> = decoded
        .blocks
        .iter()
        .map(|b| (b.block_id, b.rel, b.fork, b.block, b.will_init, &b.data[..]))
        .collect();
    assert_eq!(
        summary,
        vec![
            (0, REL, ForkNumber::Main, 7, true, &b"tuple-data"[..]),
            (1, REL, ForkNumber::Main, 8, false, &[][..]),
            (
                3,
                other,
                ForkNumber::VisibilityMap,
                9,
                false,
                &[1, 2, 3][..]
            ),
            (4, other, ForkNumber::Fsm, 10, false, &[][..]),
            (32, REL, ForkNumber::Init, u32::MAX, false, &[][..]),
        ]
    );
    assert!(decoded.blocks.iter().all(|b| b.image.is_none()));
    assert_eq!(decoded.block(3).map(|b| b.block), Some(9));
    assert!(decoded.block(2).is_none());
    assert_eq!(decoded.fpi_len(), 0);
}

#[test]
fn parts_are_slices_of_the_record() {
    let page = test_page(1, 200, 6000);
    let record = TestRecord {
        rmid: 10,
        blocks: vec![TestBlock::new(0, 1).data(b"abc").image(TestImage::of(
            &page,
            200,
            5800,
            Store::Plain,
        ))],
        main_data: vec![9; 40],
        ..Default::default()
    };
    let bytes = Bytes::from(record.encode());
    let decoded = decode_record_bytes(AT, bytes.clone()).expect("decodes");
    let range = bytes.as_ptr_range();
    for part in [
        &decoded.main_data,
        &decoded.blocks[0].data,
        &decoded.blocks[0].image.as_ref().expect("image").stored,
    ] {
        assert!(range.contains(&part.as_ptr()), "part not within the record");
    }
}

#[test]
fn images_in_every_storage_form_restore() {
    let page = test_page(2, 120, 5000);
    for store in [Store::Plain, Store::Pglz, Store::Lz4, Store::Zstd] {
        for (hole_offset, hole_length) in [(0u16, 0u16), (120, 4880), (8191, 1), (1, 8191)] {
            let mut expected = page.clone();
            expected[usize::from(hole_offset)..usize::from(hole_offset + hole_length)].fill(0);
            let image = TestImage::of(&page, hole_offset, hole_length, store);
            let record = TestRecord {
                rmid: 0,
                info: 0xB0,
                blocks: vec![TestBlock::new(0, 3).image(image.clone())],
                ..Default::default()
            };
            let what = format!("{store:?} hole {hole_offset}+{hole_length}");
            let decoded = decode(&record.encode()).unwrap_or_else(|e| panic!("{what}: {e}"));
            let block = &decoded.blocks[0];
            let stored = block.image.as_ref().expect("image");
            assert!(stored.apply, "{what}");
            assert_eq!(stored.hole_offset, hole_offset, "{what}");
            assert_eq!(stored.hole_length, hole_length, "{what}");
            assert_eq!(stored.stored.len(), usize::from(image.bimg_len), "{what}");
            let restored = decoded
                .restore_image(0)
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            assert!(
                restored[..] == expected[..],
                "{what}: restored page differs"
            );
            assert_eq!(decoded.fpi_len(), u64::from(image.bimg_len), "{what}");
            assert_eq!(
                decoded.rec_len() + decoded.fpi_len(),
                u64::from(decoded.total_len)
            );
        }
    }
    // The compressed forms really are compressed, and differ.
    let forms: Vec<Vec<u8>> = [Store::Pglz, Store::Lz4, Store::Zstd]
        .into_iter()
        .map(|store| TestImage::of(&page, 120, 4880, store).payload)
        .collect();
    assert!(forms.iter().all(|form| form.len() < 3000));
    assert_ne!(forms[0], forms[1]);
    assert_ne!(forms[1], forms[2]);
}

#[test]
fn consistency_check_images_are_not_applied() {
    let page = test_page(3, 64, 8000);
    let mut image = TestImage::of(&page, 64, 7936, Store::Lz4);
    image.bimg_info &= !BKPIMAGE_APPLY;
    let record = TestRecord {
        rmid: 11,
        info: 0x02,
        blocks: vec![TestBlock::new(0, 1).data(b"x").image(image)],
        ..Default::default()
    };
    let decoded = decode_ok(&record);
    let image = decoded.blocks[0].image.as_ref().expect("image");
    assert!(!image.apply);
    assert_eq!(image.compression, ImageCompression::Lz4);
    image.restore().expect("restores");
}

/// Every rejection of DecodeXLogRecord, plus tarn's own checks.
#[test]
fn invalid_records_are_rejected() {
    let page = test_page(4, 100, 7000);
    let base = |blocks: Vec<TestBlock>| TestRecord {
        rmid: 10,
        blocks,
        main_data: vec![1, 2, 3],
        ..Default::default()
    };
    let expect = |record: &TestRecord, message: &str| {
        let detail = decode_err(&record.encode());
        assert!(
            detail.contains(message),
            "{detail:?} does not mention {message:?}"
        );
    };
    expect(
        &base(vec![TestBlock::new(1, 0), TestBlock::new(1, 0)]),
        "out-of-order block_id 1",
    );
    expect(
        &base(vec![TestBlock::new(2, 0), TestBlock::new(0, 0)]),
        "out-of-order block_id 0",
    );
    expect(
        &base(vec![TestBlock::new(0, 0).flags(BKPBLOCK_SAME_REL)]),
        "BKPBLOCK_SAME_REL set but no previous rel",
    );
    expect(
        &base(vec![TestBlock::new(0, 0).flags(BKPBLOCK_HAS_DATA)]),
        "BKPBLOCK_HAS_DATA set, but no data included",
    );
    expect(
        &base(vec![TestBlock {
            data_len: 4,
            data: vec![0; 4],
            ..TestBlock::new(0, 0)
        }]),
        "BKPBLOCK_HAS_DATA not set, but data length is 4",
    );
    expect(
        &base(vec![TestBlock::new(0, 0).flags(4)]),
        "invalid fork number 4",
    );
    expect(&base(vec![TestBlock::new(33, 0)]), "invalid block_id 33");
    expect(&base(vec![TestBlock::new(251, 0)]), "invalid block_id 251");

    let with_image = |image: TestImage| base(vec![TestBlock::new(0, 0).image(image)]);
    let plain_hole = TestImage::of(&page, 100, 6900, Store::Plain);
    expect(
        &with_image(TestImage {
            hole_offset: 0,
            ..plain_hole.clone()
        }),
        "BKPIMAGE_HAS_HOLE set, but hole offset 0",
    );
    let pglz_hole = TestImage::of(&page, 100, 6900, Store::Pglz);
    expect(
        &with_image(TestImage {
            hole_length: 0,
            ..pglz_hole.clone()
        }),
        "BKPIMAGE_HAS_HOLE set, but hole offset 100 length 0",
    );
    let full = TestImage::of(&page, 0, 0, Store::Plain);
    expect(
        &with_image(TestImage {
            bimg_info: full.bimg_info | BKPIMAGE_HAS_HOLE,
            hole_offset: 10,
            ..full.clone()
        }),
        "BKPIMAGE_HAS_HOLE set",
    );
    expect(
        &with_image(TestImage {
            hole_offset: 10,
            ..full.clone()
        }),
        "BKPIMAGE_HAS_HOLE not set, but hole offset 10",
    );
    expect(
        &with_image(TestImage {
            bimg_info: BKPIMAGE_COMPRESS_LZ4,
            ..full.clone()
        }),
        "BKPIMAGE_COMPRESSED set, but block image length 8192",
    );
    expect(
        &with_image(TestImage {
            bimg_len: 100,
            payload: vec![0; 100],
            ..full.clone()
        }),
        // As in Postgres, the implied hole length (8192 - 100) trips this check first.
        "BKPIMAGE_HAS_HOLE not set, but hole offset 0 length 8092",
    );
    // Uncompressed with a hole that runs past the page (Postgres would overrun).
    expect(
        &with_image(TestImage {
            hole_offset: 7000,
            ..plain_hole.clone()
        }),
        "does not fit",
    );
    expect(
        &with_image(TestImage {
            hole_offset: 8000,
            hole_length: 500,
            ..pglz_hole.clone()
        }),
        "does not fit",
    );
    // bimg_len above BLCKSZ (Postgres's uint16 hole length would wrap).
    expect(
        &with_image(TestImage {
            bimg_len: 9000,
            payload: vec![0; 9000],
            ..plain_hole.clone()
        }),
        "does not fit",
    );
}

#[test]
fn lengths_must_add_up() {
    let record = TestRecord {
        rmid: 10,
        blocks: vec![TestBlock::new(0, 5).data(&[7; 20])],
        main_data: vec![1; 30],
        ..Default::default()
    }
    .encode();
    let with_len = |bytes: &[u8]| {
        let mut bytes = bytes.to_vec();
        let len = bytes.len() as u32;
        bytes[..4].copy_from_slice(&len.to_le_bytes());
        bytes
    };
    // Truncated payload, truncated headers, an extra byte, a header-only prefix.
    for cut in [1, 10, 49, record.len() - 25] {
        let detail = decode_err(&with_len(&record[..record.len() - cut]));
        assert!(detail.contains("invalid length"), "cut {cut}: {detail}");
    }
    let mut longer = record.clone();
    longer.push(0);
    assert!(decode_err(&with_len(&longer)).contains("invalid length"));
    // Main data longer than the record.
    let mut bad = record.clone();
    let main_len_at = bad
        .iter()
        .rposition(|b| *b == 255)
        .expect("main data header");
    bad[main_len_at + 1] = 200;
    assert!(decode_err(&bad).contains("invalid length"));
    // A long main-data length near u32::MAX must not overflow.
    let mut huge = with_len(&record[..SIZE_OF_XLOG_RECORD]);
    huge.extend_from_slice(&[254, 0xff, 0xff, 0xff, 0xff]);
    let huge = with_len(&huge);
    assert!(decode_err(&huge).contains("invalid length"));
    // xl_tot_len disagreeing with the bytes, and fewer bytes than a header.
    let mut wrong_total = record.clone();
    wrong_total[0] ^= 1;
    assert!(decode_err(&wrong_total).contains("xl_tot_len"));
    assert!(decode_err(&record[..23]).contains("shorter than its 24-byte header"));
    assert!(decode_err(&[]).contains("shorter"));
}

#[test]
fn corrupt_images_fail_to_restore() {
    let page = test_page(5, 300, 4000);
    for store in [Store::Pglz, Store::Lz4, Store::Zstd] {
        let good = TestImage::of(&page, 300, 3700, store);
        let mut rng = Rng(store as u64);
        for round in 0..200 {
            let mut payload = good.payload.clone();
            match round % 3 {
                0 => {
                    let at = rng.below(payload.len());
                    payload[at] ^= 1 << rng.below(8);
                }
                1 => payload.truncate(rng.below(payload.len())),
                _ => {
                    let len = rng.below(300) + 1;
                    payload = rng.bytes(len);
                }
            }
            let image = BlockImage {
                stored: Bytes::from(payload),
                hole_offset: 300,
                hole_length: 3700,
                apply: true,
                compression: match store {
                    Store::Pglz => ImageCompression::Pglz,
                    Store::Lz4 => ImageCompression::Lz4,
                    _ => ImageCompression::Zstd,
                },
            };
            // Either an error or a page; never a panic.
            if let Err(error) = image.restore() {
                assert!(!error.to_string().is_empty());
            }
        }
    }
    // Errors say what failed.
    let image = BlockImage {
        stored: Bytes::from_static(&[0xff; 10]),
        hole_offset: 0,
        hole_length: 0,
        apply: true,
        compression: ImageCompression::Zstd,
    };
    let error = image.restore().expect_err("garbage");
    assert!(
        error.to_string().starts_with("zstd image of 10 bytes"),
        "{error}"
    );
    let image = BlockImage {
        compression: ImageCompression::None,
        ..image
    };
    assert!(matches!(
        image.restore(),
        Err(ImageError::UncompressedLength { stored: 10, .. })
    ));
    let image = BlockImage {
        hole_offset: 8000,
        hole_length: 500,
        ..image
    };
    assert!(matches!(
        image.restore(),
        Err(ImageError::HoleOutOfPage { .. })
    ));
    // A valid LZ4 stream of the wrong size (Postgres would accept a short one).
    let short = BlockImage {
        stored: Bytes::from(lz4_flex::block::compress(&[5u8; 4000])),
        hole_offset: 100,
        hole_length: 100,
        apply: true,
        compression: ImageCompression::Lz4,
    };
    assert!(short.restore().is_err());
    let record = decode_ok(&TestRecord {
        rmid: 10,
        blocks: vec![TestBlock::new(0, 0).data(b"d")],
        ..Default::default()
    });
    let detail = record.restore_image(0).expect_err("no image").detail;
    assert!(detail.contains("block 0 has no image"), "{detail}");
    let detail = record.restore_image(1).expect_err("no block").detail;
    assert!(detail.contains("no block 1"), "{detail}");
}

#[test]
fn pglz_matches_postgres_semantics() {
    // "112341234123412341234" from pg_lzcompress.c: 5 literals, then a match of 16
    // bytes at offset 4 (overlapping).
    let stream = [0b0010_0000, b'1', b'1', b'2', b'3', b'4', 0x0d, 0x04];
    let mut out = [0u8; 21];
    pglz_decompress(&stream, &mut out).expect("decompresses");
    assert_eq!(&out, b"112341234123412341234");
    // Extended length: a 3-byte tag with 18 + 100 bytes.
    let stream = [0b0000_0010, b'z', 0x0f, 0x01, 100];
    let mut out = [0u8; 119];
    pglz_decompress(&stream, &mut out).expect("decompresses");
    assert!(out.iter().all(|b| *b == b'z'));
    // Errors.
    let mut out = [0u8; 21];
    assert!(matches!(
        pglz_decompress(&[0b01, 0x00, 0x00], &mut out),
        Err(PglzError::BadOffset { offset: 0, .. })
    ));
    assert!(matches!(
        pglz_decompress(&[0b10, b'a', 0x00, 0x02], &mut out),
        Err(PglzError::BadOffset { offset: 2, .. })
    ));
    assert!(matches!(
        pglz_decompress(&[0b10, b'a', 0x0f], &mut out),
        Err(PglzError::TruncatedTag { .. })
    ));
    assert!(matches!(
        pglz_decompress(&[0b10, b'a', 0x0f, 0x01], &mut out),
        Err(PglzError::TruncatedTag { .. })
    ));
    assert!(matches!(
        pglz_decompress(&[0, b'a', b'b'], &mut out),
        Err(PglzError::Incomplete { produced: 2, .. })
    ));
    // Input left over once the output is full.
    let mut two = [0u8; 2];
    assert!(matches!(
        pglz_decompress(&[0, b'a', b'b', b'c'], &mut two),
        Err(PglzError::Incomplete { consumed: 3, .. })
    ));
    // Round trips through the test compressor.
    let mut rng = Rng(9);
    for len in [0usize, 1, 3, 100, 4095, 4096, 8192] {
        for kind in 0..3 {
            let data: Vec<u8> = match kind {
                0 => vec![0; len],
                1 => rng.bytes(len),
                _ => (0..len).map(|i| (i % 7) as u8 ^ (i / 300) as u8).collect(),
            };
            let compressed = pglz_compress_for_tests(&data);
            let mut out = vec![0u8; len];
            pglz_decompress(&compressed, &mut out).expect("round trip");
            assert_eq!(out, data, "len {len} kind {kind}");
        }
    }
}

#[test]
fn record_type_names_follow_pg_waldump() {
    for (rmid, info, name) in [
        (0, 0x00, "XLOG/CHECKPOINT_SHUTDOWN"),
        (0, 0xB0, "XLOG/FPI"),
        (0, 0xA0, "XLOG/FPI_FOR_HINT"),
        (0, 0xC0, "XLOG/UNKNOWN (c0)"),
        (1, 0x80, "Transaction/COMMIT"),
        (1, 0xE0, "Transaction/INVALIDATION"),
        (1, 0x70, "Transaction/UNKNOWN (70)"),
        (9, 0x10, "Heap2/PRUNE"),
        (9, 0xD0, "Heap2/MULTI_INSERT+INIT"),
        (10, 0x00, "Heap/INSERT"),
        (10, 0x0B, "Heap/INSERT"),
        (10, 0xC0, "Heap/HOT_UPDATE+INIT"),
        (10, 0x50, "Heap/HEAP_CONFIRM"),
        (11, 0xE0, "Btree/META_CLEANUP"),
        (17, 0x90, "BRIN/INSERT+INIT"),
        (18, 0x01, "CommitTs/UNKNOWN (0)"),
        (20, 0x30, "Generic/Generic"),
        (21, 0x00, "LogicalMessage/MESSAGE"),
        (22, 0x00, "rmgr022/UNKNOWN (0)"),
        (130, 0x10, "custom130/UNKNOWN (10)"),
    ] {
        assert_eq!(
            record_type_name(rmid, info),
            name,
            "rmid {rmid} info {info:#x}"
        );
    }
}

/// Records covering every decoder path, for the mutation test.
fn sample_records() -> Vec<Vec<u8>> {
    let page = test_page(6, 80, 7900);
    let mut records = Vec::new();
    for (i, store) in [Store::Plain, Store::Pglz, Store::Lz4, Store::Zstd]
        .into_iter()
        .enumerate()
    {
        records.push(
            TestRecord {
                rmid: 10,
                info: 0x20,
                xid: 900 + i as u32,
                blocks: vec![
                    TestBlock::new(0, 1)
                        .data(&[3; 40])
                        .image(TestImage::of(&page, 80, 7820, store)),
                    TestBlock::new(1, 2)
                        .flags(BKPBLOCK_SAME_REL)
                        .image(TestImage::of(&page, 0, 0, store)),
                ],
                origin: Some(1),
                toplevel_xid: Some(5),
                main_data: vec![4; 300],
                ..Default::default()
            }
            .encode(),
        );
    }
    records.push(
        TestRecord {
            rmid: 11,
            blocks: vec![
                TestBlock::new(0, 3)
                    .data(&[1; 10])
                    .flags(BKPBLOCK_WILL_INIT),
                TestBlock::new(2, 4).flags(BKPBLOCK_SAME_REL | 2),
            ],
            main_data: vec![9; 12],
            ..Default::default()
        }
        .encode(),
    );
    records.push(TestRecord::default().encode());
    records
}

/// Seeded random mutations of valid records (bit flips, byte overwrites, truncation,
/// insertion, length-field edits) must decode to an error or to a record whose parts
/// add up, and restoring its images must return a page or an error; never a panic.
#[test]
fn random_mutations_never_panic() {
    let records = sample_records();
    for record in &records {
        let decoded = decode(record).expect("sample decodes");
        for block in &decoded.blocks {
            if let Some(image) = &block.image {
                image.restore().expect("sample image restores");
            }
        }
    }
    let mut rng = Rng(0x7A21);
    let (mut ok, mut rejected) = (0u32, 0u32);
    for _ in 0..20_000 {
        let mut bytes = records[rng.below(records.len())].clone();
        for _ in 0..=rng.below(4) {
            mutate(&mut rng, &mut bytes);
        }
        // Keep xl_tot_len consistent most of the time so that the body is exercised.
        if rng.below(8) != 0 && bytes.len() >= 4 {
            let len = bytes.len() as u32;
            bytes[..4].copy_from_slice(&len.to_le_bytes());
        }
        match decode(&bytes) {
            Ok(decoded) => {
                ok += 1;
                let parts: u64 = decoded
                    .blocks
                    .iter()
                    .map(|b| {
                        b.data.len() as u64 + b.image.as_ref().map_or(0, |i| i.stored_len() as u64)
                    })
                    .sum::<u64>()
                    + decoded.main_data.len() as u64;
                assert!(parts <= u64::from(decoded.total_len));
                for block in &decoded.blocks {
                    if let Some(image) = &block.image {
                        let _ = image.restore();
                    }
                }
            }
            Err(_) => rejected += 1,
        }
    }
    assert!(ok > 1000 && rejected > 1000, "ok {ok} rejected {rejected}");
}

fn mutate(rng: &mut Rng, bytes: &mut Vec<u8>) {
    if bytes.is_empty() {
        bytes.push(rng.next_u64() as u8);
        return;
    }
    let at = rng.below(bytes.len());
    match rng.below(6) {
        0 => bytes[at] ^= 1 << rng.below(8),
        1 => bytes[at] = rng.next_u64() as u8,
        2 => bytes.truncate(at),
        3 => bytes.insert(at, rng.next_u64() as u8),
        4 => {
            // A length-ish field in the headers: small values and extremes.
            let value = [0u16, 1, 2, 0xff, 0x100, 8191, 8192, 8193, 0xffff][rng.below(9)];
            let at = (SIZE_OF_XLOG_RECORD + rng.below(60)).min(bytes.len() - 1);
            let end = (at + 2).min(bytes.len());
            bytes[at..end].copy_from_slice(&value.to_le_bytes()[..end - at]);
        }
        _ => {
            let len = rng.below(bytes.len() - at).min(16);
            bytes.drain(at..at + len);
        }
    }
}

// ---- The stream decoder and reader ----

const SEG: u64 = 1 << 20;

fn params() -> WalStreamParams {
    WalStreamParams {
        segment_size_bytes: SEG,
        system_id: Some(SystemId(77)),
    }
}

/// Lays records out as WAL from `start` (a page start): page headers (long at
/// segment starts), continuation flags and xlp_rem_len, MAXALIGN padding, the xl_prev
/// chain and CRCs. Returns the bytes and each record's (start, end).
fn lay_out(records: &[TestRecord], start: Lsn) -> (Vec<u8>, Vec<(Lsn, Lsn)>) {
    assert_eq!(start.0 % XLOG_BLCKSZ, 0);
    let mut out = Vec::new();
    let mut pos = start.0;
    let mut prev = 0;
    let mut bounds = Vec::new();
    let page_header = |out: &mut Vec<u8>, pos: u64, rem_len: u32| {
        let long = pos.is_multiple_of(SEG);
        let header = PageHeader {
            magic: XLOG_PAGE_MAGIC,
            info: if long { XLP_LONG_HEADER } else { 0 }
                | if rem_len > 0 {
                    XLP_FIRST_IS_CONTRECORD
                } else {
                    0
                },
            timeline: 1,
            page_addr: Lsn(pos),
            rem_len,
            long: long.then_some(LongPageHeader {
                system_id: SystemId(77),
                segment_size_bytes: SEG as u32,
                xlog_blcksz: XLOG_BLCKSZ as u32,
            }),
        };
        let mut bytes = [0u8; SIZE_OF_XLOG_LONG_PHD];
        header.encode(&mut bytes);
        out.extend_from_slice(&bytes[..header.size()]);
        header.size() as u64
    };
    for record in records {
        let bytes = TestRecord {
            prev,
            ..record.clone()
        }
        .encode();
        if pos.is_multiple_of(XLOG_BLCKSZ) {
            pos += page_header(&mut out, pos, 0);
        }
        let record_start = pos;
        let mut rest = &bytes[..];
        loop {
            let n = rest.len().min((XLOG_BLCKSZ - pos % XLOG_BLCKSZ) as usize);
            out.extend_from_slice(&rest[..n]);
            pos += n as u64;
            rest = &rest[n..];
            if rest.is_empty() {
                break;
            }
            pos += page_header(&mut out, pos, rest.len() as u32);
        }
        let end = max_align(pos);
        out.resize(out.len() + (end - pos) as usize, 0);
        pos = end;
        prev = record_start;
        bounds.push((Lsn(record_start), Lsn(end)));
    }
    (out, bounds)
}

/// Records of every shape, some spanning pages (large images and main data).
fn stream_records(count: usize, seed: u64) -> Vec<TestRecord> {
    let mut rng = Rng(seed);
    let page = test_page(seed, 100, 7000);
    let images: Vec<TestImage> = [Store::Plain, Store::Pglz, Store::Lz4, Store::Zstd]
        .into_iter()
        .flat_map(|store| {
            [(0, 0), (100, 6900)].map(|(offset, len)| TestImage::of(&page, offset, len, store))
        })
        .collect();
    (0..count)
        .map(|i| {
            let mut blocks = Vec::new();
            if rng.below(2) == 0 {
                let len = rng.below(100) + 1;
                blocks.push(TestBlock::new(0, i as u32).data(&rng.bytes(len)));
            }
            if rng.below(3) == 0 {
                let image = images[rng.below(images.len())].clone();
                blocks.push(TestBlock::new(1, 7).image(image));
            }
            let main_len = [0, 10, 200, 3000, 20_000][rng.below(5)];
            TestRecord {
                rmid: 10,
                info: (rng.below(8) as u8) << 4,
                xid: i as u32,
                blocks,
                main_data: rng.bytes(main_len),
                ..Default::default()
            }
        })
        .collect()
}

fn drain(decoder: &mut WalStreamDecoder, out: &mut Vec<DecodedRecord>) {
    while let Some(record) = decoder.next_record() {
        out.push(record.expect("decodes"));
    }
}

#[test]
fn stream_decoder_reassembles_records_across_pages_for_any_chunking() {
    let start = Lsn(3 * SEG);
    let records = stream_records(500, 11);
    let (wal, bounds) = lay_out(&records, start);
    assert!(wal.len() as u64 > 2 * SEG, "crosses segments");
    let mut rng = Rng(12);
    for max_chunk in [1usize, 7, 24, 8192, 100_000, wal.len()] {
        let mut decoder = WalStreamDecoder::new(start, None, params()).expect("decoder");
        let mut decoded = Vec::new();
        let mut fed = 0;
        while fed < wal.len() {
            let n = (rng.below(max_chunk) + 1).min(wal.len() - fed);
            decoder.feed(&wal[fed..fed + n]).expect("valid WAL");
            fed += n;
            drain(&mut decoder, &mut decoded);
            // Memory stays bounded by one record (a few pages here) plus a chunk.
            let kept = decoder.buffered_bytes();
            assert!(kept < 64 * 1024, "kept {kept}");
        }
        assert_eq!(decoded.len(), records.len(), "chunks up to {max_chunk}");
        for ((record, got), (start, end)) in records.iter().zip(&decoded).zip(&bounds) {
            assert_eq!((got.lsn, got.end_lsn), (*start, *end));
            assert_eq!(got.xid, record.xid);
            assert_eq!(got.info, record.info);
            assert_eq!(got.main_data[..], record.main_data[..]);
            assert_eq!(got.blocks.len(), record.blocks.len());
            for block in &got.blocks {
                if block.image.is_some() {
                    got.restore_image(block.block_id).expect("restores");
                }
            }
        }
        assert_eq!(decoder.complete_end(), bounds.last().expect("records").1);
    }
}

/// Found by the wal_reader fuzz target: a record whose last byte is alone on the next
/// page, fed in 149-byte chunks, so that the page header in the middle of the record is
/// split between the bytes kept from earlier chunks and the current chunk.
#[test]
fn record_with_one_byte_on_the_next_page() {
    let start = Lsn(2 * SEG - 2 * XLOG_BLCKSZ);
    let record = |rmid| TestRecord {
        rmid,
        main_data: Vec::new(),
        ..Default::default()
    };
    let mut records = vec![record(1), record(0), record(2)];
    // 8097 bytes of body: 5 bytes of main-data header and 8092 of main data.
    records[2].main_data = vec![0xAB; 8092];
    let (wal, bounds) = lay_out(&records, start);
    for chunk in [1, 149, 8192, wal.len()] {
        let mut decoder = WalStreamDecoder::new(start, None, params()).expect("decoder");
        let mut decoded = Vec::new();
        for piece in wal.chunks(chunk) {
            decoder.feed(piece).expect("valid WAL");
            drain(&mut decoder, &mut decoded);
        }
        let got: Vec<(Lsn, Lsn)> = decoded.iter().map(|r| (r.lsn, r.end_lsn)).collect();
        assert_eq!(got, bounds, "chunk {chunk}");
    }
}

#[test]
fn reader_over_synthetic_wal_from_a_segment_start_inside_a_record() {
    let mut generator = WalGenerator::new(Lsn(SEG), None, SystemId(77), SEG, 5).expect("generator");
    let mut expected = Vec::new();
    let mut rng = Rng(13);
    for i in 0..400 {
        let len = [0, 1, 255, 256, 5000, 40_000][rng.below(6)];
        expected.push((generator.append_record(len), len));
        if i == 150 {
            let (start, end) = generator.append_switch().expect("switch");
            expected.push(((start, end), usize::MAX));
        }
    }
    let (wal_start, wal) = generator.take_bytes();
    let source = move |lsn: Lsn, buf: &mut [u8]| -> std::io::Result<usize> {
        let offset = usize::try_from(lsn.0 - wal_start.0).unwrap_or(usize::MAX);
        let available = wal.get(offset..).unwrap_or_default();
        let n = available.len().min(buf.len());
        buf[..n].copy_from_slice(&available[..n]);
        Ok(n)
    };
    let reader = WalRecordReader::new(source, Lsn(SEG), None, params()).expect("reader");
    let mut reader = reader;
    let mut got = Vec::new();
    while let Some(record) = reader.next_record().expect("no errors") {
        got.push(record);
    }
    assert_eq!(reader.stop(), Some(&ScanStop::EndOfStorage));
    assert_eq!(got.len(), expected.len());
    for (record, ((start, end), len)) in got.iter().zip(&expected) {
        assert_eq!((record.lsn, record.end_lsn), (*start, *end));
        if *len == usize::MAX {
            assert!(record.is_xlog_switch());
        } else {
            assert_eq!(record.main_data.len(), *len);
            assert_eq!(record.type_name(), "LogicalMessage/MESSAGE");
        }
    }
    let last_end = expected.last().expect("records").0.1;
    assert_eq!(reader.complete_end(), last_end);

    // From a later segment start, which begins inside a record: the records after it.
    let source = reader.into_source();
    let from = Lsn(3 * SEG);
    let mut later = WalRecordReader::new(source, from, None, params()).expect("reader");
    let starts: Vec<Lsn> = later
        .by_ref()
        .map(|record| record.expect("decodes").lsn)
        .collect();
    let expected_starts: Vec<Lsn> = expected
        .iter()
        .map(|((start, _), _)| *start)
        .filter(|start| *start > from)
        .collect();
    assert_eq!(starts, expected_starts);
    assert!(!starts.is_empty());

    // With a limit: only records that end before it.
    let source = later.into_source();
    let limit = expected[100].0.1;
    let mut limited = WalRecordReader::new(source, Lsn(SEG), None, params())
        .expect("reader")
        .with_limit(limit);
    let count = limited.by_ref().count();
    assert_eq!(count, 101);
    assert_eq!(limited.stop(), Some(&ScanStop::Limit));
}

#[test]
fn reader_stops_at_invalid_wal_after_the_valid_records() {
    let start = Lsn(2 * SEG);
    let records = stream_records(50, 21);
    let (mut wal, bounds) = lay_out(&records, start);
    // Corrupt one byte of record 30: records 0..30 come out, then the reader stops.
    let corrupt_at = (bounds[30].0.0 - start.0) as usize + 30;
    wal[corrupt_at] ^= 0x55;
    let source = move |lsn: Lsn, buf: &mut [u8]| -> std::io::Result<usize> {
        let offset = (lsn.0 - start.0) as usize;
        let available = wal.get(offset..).unwrap_or_default();
        let n = available.len().min(buf.len());
        buf[..n].copy_from_slice(&available[..n]);
        Ok(n)
    };
    let mut reader = WalRecordReader::new(source, start, None, params()).expect("reader");
    let mut count = 0;
    while let Some(record) = reader.next_record().expect("no decode errors") {
        assert_eq!(record.lsn, bounds[count].0);
        count += 1;
    }
    assert_eq!(count, 30);
    assert!(
        matches!(reader.stop(), Some(ScanStop::Invalid(_))),
        "{:?}",
        reader.stop()
    );
    assert_eq!(reader.complete_end(), bounds[29].1);
    // The stop is final.
    assert!(reader.next_record().expect("no error").is_none());

    // An I/O error is reported with its LSN.
    let failing = |_: Lsn, _: &mut [u8]| -> std::io::Result<usize> {
        Err(std::io::Error::other("disk on fire"))
    };
    let mut reader = WalRecordReader::new(failing, start, None, params()).expect("reader");
    let error = reader.next_record().expect_err("io error");
    assert!(error.to_string().contains("disk on fire"), "{error}");
    assert!(WalRecordReader::new(failing, Lsn(start.0 + 4), None, params()).is_err());
}

#[test]
fn a_crc_valid_record_that_does_not_decode_is_an_error_and_reading_goes_on() {
    let start = Lsn(SEG);
    let mut records = stream_records(5, 31);
    // Same-rel without a previous rel: framing and CRC fine, DecodeXLogRecord fails.
    records[2].blocks = vec![TestBlock::new(0, 1).flags(BKPBLOCK_SAME_REL)];
    let (wal, bounds) = lay_out(&records, start);
    let mut decoder = WalStreamDecoder::new(start, None, params()).expect("decoder");
    decoder.feed(&wal).expect("valid framing");
    let results: Vec<Result<DecodedRecord, DecodeError>> =
        std::iter::from_fn(|| decoder.next_record()).collect();
    assert_eq!(results.len(), 5);
    let error = results[2].as_ref().expect_err("record 2 fails");
    assert_eq!(error.lsn, bounds[2].0);
    assert!(error.to_string().contains("BKPBLOCK_SAME_REL"), "{error}");
    assert!(
        results
            .iter()
            .enumerate()
            .all(|(i, r)| r.is_ok() == (i != 2))
    );
}

#[test]
fn pg_wal_dir_reads_segments_and_ends_at_a_missing_one() {
    let dir = std::env::temp_dir().join(format!("tarn-decode-pgwal-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let start = Lsn(4 * SEG);
    let records = stream_records(120, 41);
    let (mut wal, bounds) = lay_out(&records, start);
    wal.resize(wal.len().div_ceil(SEG as usize) * SEG as usize, 0);
    for (i, segment) in wal.chunks(SEG as usize).enumerate() {
        let name = crate::format::segment_file_name(1, 4 + i as u64, SEG);
        std::fs::write(dir.join(name), segment).expect("write segment");
    }
    let source = PgWalDir::new(&dir, 1, SEG);
    let reader = WalRecordReader::new(source, start, None, params()).expect("reader");
    let starts: Vec<Lsn> = reader.map(|r| r.expect("decodes").lsn).collect();
    let expected: Vec<Lsn> = bounds.iter().map(|(start, _)| *start).collect();
    assert_eq!(starts, expected);
    let mut source = PgWalDir::new(&dir, 1, SEG);
    let mut buf = [0u8; 16];
    use crate::format::WalRead;
    assert_eq!(source.read_wal(Lsn(40 * SEG), &mut buf).expect("read"), 0);
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

#[test]
fn standard_record_end_skips_page_headers() {
    let header = |tot_len| XLogRecordHeader {
        tot_len,
        xid: 0,
        prev: Lsn(0),
        info: 0,
        rmid: 10,
        crc: 0,
    };
    let seg = crate::format::DEFAULT_SEGMENT_SIZE_BYTES;
    // Fits in the page: just MAXALIGN.
    assert_eq!(
        standard_record_end(Lsn(0x100_0028), &header(50), seg),
        Some(Lsn(0x100_0060))
    );
    // Ends exactly at the page end.
    assert_eq!(
        standard_record_end(Lsn(0x100_1FF0), &header(16), seg),
        Some(Lsn(0x100_2000))
    );
    // Crosses into the next page: its 24-byte header is skipped.
    assert_eq!(
        standard_record_end(Lsn(0x100_1FF0), &header(17), seg),
        Some(Lsn(0x100_2020))
    );
    // Crosses into a new segment: a 40-byte header.
    assert_eq!(
        standard_record_end(Lsn(0x1FF_FFF0), &header(17), seg),
        Some(Lsn(0x200_0030))
    );
    assert_eq!(
        standard_record_end(Lsn(u64::MAX - 8), &header(100), seg),
        None
    );
}

/// Decode and image errors travel inside redo and ingest errors: keep them small.
#[test]
fn errors_are_small() {
    assert!(std::mem::size_of::<ImageError>() <= 48);
    assert!(std::mem::size_of::<PglzError>() <= 20);
    assert!(std::mem::size_of::<DecodeError>() <= 32);
}
