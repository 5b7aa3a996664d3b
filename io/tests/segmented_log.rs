//! SegmentedLog behaviour on a real filesystem (tempdirs under /tmp), on a glommio
//! executor. Segments are 1 MiB to keep the tests fast.

mod common;

use std::cell::Cell;
use std::rc::Rc;

use common::{MIB, TempDir, config, on_executor, pattern};
use tarn_io::{IoError, SegmentedLog};

#[test]
fn write_sync_reopen_read_across_segment_boundary() {
    let tmp = TempDir::new("boundary");
    let dir = tmp.path().to_owned();
    let end = MIB + MIB / 2;
    on_executor(move || {
        let dir = dir.clone();
        async move {
            let log = SegmentedLog::open(&dir, config(MIB)).await?;
            assert!(log.segments().is_empty());
            log.set_written_end(0).await?;
            let chunk = 100_000usize;
            let mut pos = 0u64;
            while pos < end {
                let n = chunk.min((end - pos) as usize);
                log.write(pos, &pattern(pos, n, 0)).await?;
                pos += n as u64;
            }
            // Readable before sync (from memory) and after (from disk).
            assert_eq!(log.read(MIB - 100, 200).await?, pattern(MIB - 100, 200, 0));
            assert_eq!(log.sync().await?, end);
            assert_eq!(log.durable_end(), end);
            assert_eq!(log.read(MIB - 100, 200).await?, pattern(MIB - 100, 200, 0));
            log.close().await?;

            let log = SegmentedLog::open(&dir, config(MIB)).await?;
            assert!(log.segments().starts_with(&[0, 1]));
            // Before the end is known only raw reads work.
            assert!(matches!(
                log.read(0, 1).await,
                Err(IoError::EndUnknown { .. })
            ));
            assert_eq!(log.read_raw(MIB - 7, 14).await?, pattern(MIB - 7, 14, 0));
            log.set_written_end(end).await?;
            assert_eq!(
                log.read(0, end as usize).await?,
                pattern(0, end as usize, 0)
            );
            assert!(matches!(
                log.read(end - 1, 2).await,
                Err(IoError::ReadPastEnd { .. })
            ));
            log.close().await
        }
    })
    .expect("test body");
}

#[test]
fn unaligned_appends_of_odd_sizes() {
    let tmp = TempDir::new("odd");
    let dir = tmp.path().to_owned();
    on_executor(move || {
        let dir = dir.clone();
        async move {
            let log = SegmentedLog::open(&dir, config(MIB)).await?;
            log.set_written_end(0).await?;
            let sizes = [1usize, 7, 4095, 4097, 13, 8191, 1, 65_537, 3, 4096, 12_345];
            let mut pos = 0u64;
            // Enough rounds to cross into segment 1 with odd-sized appends.
            for round in 0..12 {
                for &n in &sizes {
                    let durable = log.append_durable(pos, &pattern(pos, n, 1)).await?;
                    assert!(
                        durable >= pos + n as u64,
                        "round {round}: durable {durable} < {}",
                        pos + n as u64
                    );
                    pos += n as u64;
                }
            }
            assert!(pos > MIB, "crosses a segment boundary");
            assert_eq!(
                log.read(0, pos as usize).await?,
                pattern(0, pos as usize, 1)
            );
            log.close().await?;

            let log = SegmentedLog::open(&dir, config(MIB)).await?;
            log.set_written_end(pos).await?;
            assert_eq!(
                log.read(0, pos as usize).await?,
                pattern(0, pos as usize, 1)
            );
            // The tail block reloaded from disk is extended correctly.
            log.append_durable(pos, &pattern(pos, 10, 1)).await?;
            assert_eq!(
                log.read(pos - 5000, 5010).await?,
                pattern(pos - 5000, 5010, 1)
            );
            log.close().await
        }
    })
    .expect("test body");
}

#[test]
fn overwrite_of_written_bytes_on_disk_and_in_memory() {
    let tmp = TempDir::new("overwrite");
    let dir = tmp.path().to_owned();
    on_executor(move || {
        let dir = dir.clone();
        async move {
            let log = SegmentedLog::open(&dir, config(MIB)).await?;
            log.set_written_end(0).await?;
            let end = MIB + 10_000;
            log.write(0, &pattern(0, end as usize, 2)).await?;
            log.sync().await?;
            let mut expected = pattern(0, end as usize, 2);

            // Already on disk (read-modify-write), straddling the segment boundary.
            let at = MIB - 5000;
            let new = pattern(at, 7000, 0x55);
            log.write(at, &new).await?;
            expected[at as usize..at as usize + 7000].copy_from_slice(&new);
            assert!(
                log.durable_end() <= at,
                "an overwrite is not durable until synced"
            );
            // Unaligned, inside one block.
            log.write(100, b"hello").await?;
            expected[100..105].copy_from_slice(b"hello");
            // The in-memory tail, then an append after it.
            log.write(end - 3, b"xyzw").await?;
            expected.truncate(end as usize - 3);
            expected.extend_from_slice(b"xyzw");
            // A re-sent identical append is fine too.
            log.write(end - 3, b"xyzw").await?;
            assert_eq!(log.written_end(), Some(end + 1));
            assert_eq!(log.read(0, expected.len()).await?, expected);
            assert_eq!(log.sync().await?, end + 1);
            log.close().await?;

            let log = SegmentedLog::open(&dir, config(MIB)).await?;
            log.set_written_end(end + 1).await?;
            assert_eq!(log.read(0, expected.len()).await?, expected);
            log.close().await
        }
    })
    .expect("test body");
}

#[test]
fn gap_is_refused_with_both_positions() {
    let tmp = TempDir::new("gap");
    let dir = tmp.path().to_owned();
    on_executor(move || {
        let dir = dir.clone();
        async move {
            let log = SegmentedLog::open(&dir, config(MIB)).await?;
            assert!(matches!(
                log.write(0, b"x").await,
                Err(IoError::EndUnknown { .. })
            ));
            log.set_written_end(0).await?;
            log.write(0, &[7u8; 1000]).await?;
            let err = log
                .write(1001, b"late")
                .await
                .expect_err("gap must be refused");
            assert!(matches!(
                err,
                IoError::Gap {
                    pos: 1001,
                    written_end: 1000,
                    ..
                }
            ));
            let msg = err.to_string();
            assert!(
                msg.contains("1001") && msg.contains("1000") && msg.contains("gap"),
                "{msg}"
            );
            // Nothing changed.
            assert_eq!(log.written_end(), Some(1000));
            log.write(1000, b"ok").await?;
            assert_eq!(log.sync().await?, 1002);
            log.close().await
        }
    })
    .expect("test body");
}

#[test]
fn truncate_then_reopen_shows_zeros_past_the_truncation_point() {
    let tmp = TempDir::new("truncate");
    let dir = tmp.path().to_owned();
    let end = MIB + MIB / 2;
    let cut = 700_001u64;
    on_executor(move || {
        let dir = dir.clone();
        async move {
            let log = SegmentedLog::open(&dir, config(MIB)).await?;
            log.set_written_end(0).await?;
            log.write(0, &pattern(0, end as usize, 3)).await?;
            log.sync().await?;
            log.truncate(cut).await?;
            assert_eq!(log.written_end(), Some(cut));
            assert_eq!(log.durable_end(), cut);
            assert!(matches!(
                log.read(cut, 1).await,
                Err(IoError::ReadPastEnd { .. })
            ));
            assert_eq!(log.segments(), vec![0]);
            log.close().await?;

            let log = SegmentedLog::open(&dir, config(MIB)).await?;
            assert_eq!(log.segments(), vec![0], "later segments are deleted");
            let raw = log.read_raw(0, MIB as usize).await?;
            assert_eq!(&raw[..cut as usize], &pattern(0, cut as usize, 3)[..]);
            assert!(
                raw[cut as usize..].iter().all(|&b| b == 0),
                "stale bytes past the cut"
            );
            log.set_written_end(cut).await?;
            // Appending again after the cut works across the boundary.
            let more = (end - cut) as usize;
            log.append_durable(cut, &pattern(cut, more, 4)).await?;
            let mut expected = pattern(0, cut as usize, 3);
            expected.extend(pattern(cut, more, 4));
            assert_eq!(log.read(0, end as usize).await?, expected);

            // Truncating at a segment start removes that segment, then reuse works.
            log.truncate(MIB).await?;
            assert_eq!(log.segments(), vec![0]);
            log.append_durable(MIB, b"again").await?;
            assert_eq!(
                log.read(MIB - 2, 7).await?,
                [&expected[MIB as usize - 2..MIB as usize], b"again"].concat()
            );
            log.close().await
        }
    })
    .expect("test body");
}

#[test]
fn group_commit_batches_concurrent_appends() {
    let tmp = TempDir::new("group");
    let dir = tmp.path().to_owned();
    const TASKS: u64 = 64;
    const LEN: usize = 300;
    on_executor(move || {
        let dir = dir.clone();
        async move {
            let mut cfg = config(MIB);
            // Keep the counters about the appends alone.
            cfg.preallocate_ahead = false;
            let log = Rc::new(SegmentedLog::open(&dir, cfg).await?);
            log.set_written_end(0).await?;
            let next_pos = Rc::new(Cell::new(0u64));
            let mut tasks = Vec::new();
            for i in 0..TASKS {
                let log = log.clone();
                let next_pos = next_pos.clone();
                tasks.push(glommio::spawn_local(async move {
                    // Claim the position and buffer the bytes in the same poll, so
                    // appends arrive in claim order whatever the scheduling.
                    let pos = next_pos.get();
                    next_pos.set(pos + LEN as u64);
                    let durable = log.append_durable(pos, &pattern(pos, LEN, i as u8)).await?;
                    Ok::<_, IoError>((pos, durable))
                }));
            }
            let mut expected = Vec::new();
            for (i, task) in tasks.into_iter().enumerate() {
                let (pos, durable) = task.await?;
                assert!(durable >= pos + LEN as u64);
                assert_eq!(pos, i as u64 * LEN as u64);
                expected.extend(pattern(pos, LEN, i as u8));
            }
            let stats = log.stats();
            assert_eq!(stats.appends, TASKS);
            assert_eq!(stats.append_bytes, TASKS * LEN as u64);
            assert!(stats.syncs < stats.appends, "no batching: {stats:?}");
            assert!(
                stats.syncs <= 3,
                "64 appends on an idle log need ~2 rounds: {stats:?}"
            );
            assert!(stats.writes <= 3, "{stats:?}");
            assert_eq!(log.read(0, expected.len()).await?, expected);
            Ok::<_, IoError>(())
        }
    })
    .expect("test body");
}

#[test]
fn start_mid_segment_and_replace_stale_segments() {
    let tmp = TempDir::new("stale");
    let dir = tmp.path().to_owned();
    on_executor(move || {
        let dir = dir.clone();
        async move {
            // A new log may start mid-segment (WAL starts where the primary is).
            let start = 3 * MIB + 12_345;
            let log = SegmentedLog::open(&dir, config(MIB)).await?;
            log.set_written_end(start).await?;
            log.append_durable(start, &pattern(start, 2 * MIB as usize, 5))
                .await?;
            assert_eq!(
                log.read(3 * MIB, 100).await?,
                vec![0u8; 100],
                "before the start"
            );
            log.close().await?;

            // Reopen declaring an earlier end: segment 4 and 5 are stale, and writing
            // into them must not expose their old bytes after our new end.
            let log = SegmentedLog::open(&dir, config(MIB)).await?;
            let end = 3 * MIB + 500_000;
            log.set_written_end(end).await?;
            assert_eq!(log.segments(), vec![3]);
            let new = pattern(end, MIB as usize, 6);
            log.append_durable(end, &new).await?;
            let new_end = end + MIB;
            let raw = log.read_raw(4 * MIB, MIB as usize).await?;
            let in_4 = (new_end - 4 * MIB) as usize;
            assert_eq!(&raw[..in_4], &new[(4 * MIB - end) as usize..]);
            assert!(
                raw[in_4..].iter().all(|&b| b == 0),
                "old segment 4 bytes leaked"
            );
            log.close().await
        }
    })
    .expect("test body");
}

#[test]
fn buffered_fallback_on_tmpfs() {
    // /dev/shm is tmpfs on Linux: no O_DIRECT. Skip quietly where it does not exist.
    let shm = std::path::Path::new("/dev/shm");
    if !shm.is_dir() {
        return;
    }
    let tmp = TempDir::new_in(shm, "tmpfs");
    let dir = tmp.path().to_owned();
    on_executor(move || {
        let dir = dir.clone();
        async move {
            let log = SegmentedLog::open(&dir, config(MIB)).await?;
            log.set_written_end(0).await?;
            log.append_durable(0, &pattern(0, 10_000, 7)).await?;
            assert_eq!(log.direct_io(), Some(false));
            assert_eq!(log.read(0, 10_000).await?, pattern(0, 10_000, 7));
            log.close().await
        }
    })
    .expect("test body");
}

#[test]
fn o_direct_on_tmp() {
    let tmp = TempDir::new("direct");
    let dir = tmp.path().to_owned();
    let direct = on_executor(move || {
        let dir = dir.clone();
        async move {
            let log = SegmentedLog::open(&dir, config(MIB)).await?;
            log.set_written_end(0).await?;
            log.append_durable(0, b"abc").await?;
            let direct = log.direct_io();
            log.close().await?;
            Ok::<_, IoError>(direct)
        }
    })
    .expect("test body");
    // /tmp is a disk filesystem on our machines; if not, the fallback test covers it.
    assert!(direct.is_some());
}

#[test]
fn bad_arguments_are_errors_not_panics() {
    let tmp = TempDir::new("args");
    let dir = tmp.path().to_owned();
    on_executor(move || {
        let dir = dir.clone();
        async move {
            assert!(matches!(
                SegmentedLog::open(&dir, config(1000)).await,
                Err(IoError::InvalidArgument { .. })
            ));
            let log = SegmentedLog::open(&dir, config(MIB)).await?;
            log.set_written_end(0).await?;
            assert!(matches!(
                log.set_written_end(5).await,
                Err(IoError::InvalidArgument { .. })
            ));
            assert!(matches!(
                log.truncate(1).await,
                Err(IoError::InvalidArgument { .. })
            ));
            assert!(matches!(
                log.write(u64::MAX - 1, b"xx").await,
                Err(IoError::InvalidArgument { .. })
            ));
            assert!(matches!(
                log.write(0, &vec![0u8; tarn_io::segmented_log::MAX_WRITE_BYTES + 1])
                    .await,
                Err(IoError::InvalidArgument { .. })
            ));
            assert!(matches!(
                log.read_raw(5 * MIB, 10).await,
                Err(IoError::MissingSegment { .. })
            ));
            log.close().await
        }
    })
    .expect("test body");
}
