//! Any bytes as one WAL record: `decode_record_bytes` must return a record or an error,
//! never panic; a record's parts must lie within it, and restoring its images must
//! return a page (with a zeroed hole) or an error. The in-place form
//! (`decode_record_ref`) must agree with it exactly, errors included.
//!
//! The first input byte chooses whether xl_tot_len is patched to the input's length
//! (so that mutations reach the body instead of failing the length check).

#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use tarn_wal::Lsn;
use tarn_wal::decode::{DecodedRecordRef, decode_record_bytes, decode_record_ref};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, record)) = data.split_first() else {
        return;
    };
    let mut record = record.to_vec();
    if mode & 1 == 1 && record.len() >= 4 {
        let len = record.len() as u32;
        record[..4].copy_from_slice(&len.to_le_bytes());
    }
    let len = record.len();
    let lsn = Lsn(0x0100_0028);
    let owned = decode_record_bytes(lsn, Bytes::from(record.clone()));
    let end_lsn = owned
        .as_ref()
        .map_or(Lsn(lsn.0 + 0x2000), |decoded| decoded.end_lsn);
    let mut in_place = DecodedRecordRef::default();
    match (
        &owned,
        decode_record_ref(lsn, end_lsn, &record, &mut in_place),
    ) {
        (Ok(owned), Ok(())) => assert_eq!(owned.borrowed(), in_place, "the two forms agree"),
        (Err(owned), Err(error)) => assert_eq!(owned, &error, "the two forms agree"),
        (owned, in_place) => panic!("owned {owned:?}, in place {in_place:?}"),
    }
    let Ok(decoded) = owned else {
        return;
    };
    assert_eq!(decoded.total_len as usize, len);
    let mut parts = decoded.main_data.len();
    let mut previous_id = None;
    for block in &decoded.blocks {
        assert!(previous_id < Some(block.block_id), "block ids increase");
        previous_id = Some(block.block_id);
        parts += block.data.len();
        if let Some(image) = &block.image {
            parts += image.stored.len();
            if let Ok(page) = image.restore() {
                let hole = usize::from(image.hole_offset)
                    ..usize::from(image.hole_offset) + usize::from(image.hole_length);
                assert!(page[hole].iter().all(|byte| *byte == 0), "hole is zeroed");
            }
        }
    }
    assert!(parts + 24 <= len, "parts within the record");
    assert_eq!(decoded.rec_len() + decoded.fpi_len(), len as u64);
    let _ = decoded.type_name();
});
