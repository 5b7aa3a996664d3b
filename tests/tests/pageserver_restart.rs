//! The pageserver inside `tarn up` survives `kill -9` while it ingests: pgbench runs
//! (`-i -s 2`, then ~10 s of TPC-B), the pageserver is SIGKILLed once it has ingested
//! part of the run, respawned from its command line in `tarn.json`, and must catch up
//! to `pg_current_wal_lsn()` taken after the run and a CHECKPOINT. Then every block of
//! pgbench_accounts, pgbench_branches, pgbench_tellers and pgbench_accounts_pkey read
//! through the pageserver at that LSN equals Postgres's data file after masking
//! (heap_mask / btree_mask), and relation sizes agree (the file may only be longer by
//! all-zero blocks that bulk extension adds without WAL). Any differing page fails.
//!
//! The status reports the deltas replayed per GetPage; its max is bounded by twice the
//! pushdown threshold: ingest keeps every page's chain of deltas (since its last image)
//! at most `threshold` long by writing an image instead of the next delta, counting
//! chains in memory. A restart forgets the counts, so a page whose chain was at most
//! `threshold` long at the durable LSN can get up to `threshold` more deltas before
//! pushdown writes its image: at most `2 * threshold` per read.

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use tarn_pages::mask::{btree_mask, heap_mask};
use tarn_pages::service::client::PageserverClient;
use tarn_pages::service::protocol::{ErrorCode, GetPageStats, RelRequest, Request, Response};
use tarn_pages::{BLCKSZ, Page};
use tarn_tests::{
    OwnedChild, PgCluster, TarnUp, TempDir, free_port_range, process_is_running, run_tarn,
    send_signal, wait_for,
};
use tarn_wal::Lsn;
use tarn_wal::decode::{ForkNumber, RelFileNode};

const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);
/// Catching up after the restart re-reads WAL from the durable LSN (debug builds, a
/// busy machine).
const INGEST_TIMEOUT: Duration = Duration::from_secs(300);
const PGBENCH_SECONDS: u64 = 10;
/// GetPage requests in flight while comparing.
const PIPELINE: u32 = 64;

fn lsn(text: &str) -> Lsn {
    text.trim()
        .parse()
        .unwrap_or_else(|e| panic!("{text:?} is not an LSN: {e:?}"))
}

fn status(addr: SocketAddr) -> Option<(Lsn, GetPageStats)> {
    let mut client = PageserverClient::connect(addr, CLIENT_TIMEOUT).ok()?;
    let timeline = client.timeline_or_default(None).ok()?;
    match client.call(&Request::Status { timeline }).ok()? {
        Response::Status {
            last_ingested_lsn,
            getpage,
            ..
        } => Some((last_ingested_lsn, getpage)),
        _ => None,
    }
}

fn rel_of(pg: &PgCluster, name: &str) -> RelFileNode {
    let ids = pg
        .psql(&format!(
            "SELECT CASE WHEN c.reltablespace = 0 THEN 1663 ELSE c.reltablespace END, d.oid, \
             pg_relation_filenode(c.oid) FROM pg_class c, pg_database d \
             WHERE c.relname = '{name}' AND d.datname = current_database()"
        ))
        .expect("relation ids");
    let oids: Vec<u32> = ids
        .split('|')
        .map(|p| p.trim().parse().expect("an oid"))
        .collect();
    RelFileNode {
        spc_node: oids[0],
        db_node: oids[1],
        rel_node: oids[2],
    }
}

/// Compares every block of `rel`'s main fork (first 1 GiB segment) read through the
/// pageserver at `at` with the data file; returns the number of blocks compared and
/// the failures.
fn compare_relation(
    client: &mut PageserverClient,
    data_dir: &Path,
    name: &str,
    rel: RelFileNode,
    btree: bool,
    at: Lsn,
) -> (u32, Vec<String>) {
    let mut failures = Vec::new();
    let path = data_dir
        .join("base")
        .join(rel.db_node.to_string())
        .join(rel.rel_node.to_string());
    let file = File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let file_blocks = (file.metadata().expect("stat").len() / BLCKSZ as u64) as u32;
    let timeline = client.timeline_or_default(None).expect("the main timeline");
    let request = |blk| RelRequest {
        timeline,
        rel,
        fork: ForkNumber::Main,
        blk,
        lsn: at,
    };
    let ours_blocks = match client.call(&Request::RelSize(request(0))).expect("size") {
        Response::Size(n) => n,
        other => panic!("{name}: size: {other:?}"),
    };
    let read_file = |blk: u32| {
        let mut bytes = vec![0u8; BLCKSZ];
        file.read_exact_at(&mut bytes, u64::from(blk) * BLCKSZ as u64)
            .expect("read a block");
        Page::from_bytes(&bytes).expect("8 KiB")
    };
    if ours_blocks > file_blocks {
        failures.push(format!(
            "{name}: pageserver size {ours_blocks} blocks, file {file_blocks}"
        ));
    }
    // Blocks beyond our size must be zeros Postgres added without WAL.
    for blk in ours_blocks..file_blocks {
        if read_file(blk).as_bytes().iter().any(|b| *b != 0) {
            failures.push(format!(
                "{name}: block {blk} is beyond the pageserver's size {ours_blocks} but not zeros"
            ));
        }
    }
    let blocks = ours_blocks.min(file_blocks);
    let mut next = 0;
    let mut done = 0;
    while done < blocks {
        while next < blocks && next - done < PIPELINE {
            client.send(&Request::GetPage(request(next))).expect("send");
            next += 1;
        }
        let blk = done;
        done += 1;
        let ours = match client.receive().expect("page") {
            Response::Page(bytes) => Page::from_bytes(&bytes[..]).expect("8 KiB"),
            Response::Error { code, message } => {
                failures.push(format!("{name}: block {blk}: {code:?}: {message}"));
                continue;
            }
            other => panic!("{name}: block {blk}: {other:?}"),
        };
        let theirs = read_file(blk);
        if ours.as_bytes() == theirs.as_bytes() {
            continue;
        }
        let zeros = |p: &Page| p.as_bytes().iter().all(|b| *b == 0);
        if zeros(&ours) || zeros(&theirs) {
            failures.push(format!(
                "{name}: block {blk}: only one side is zeros (pageserver: {})",
                zeros(&ours)
            ));
            continue;
        }
        let (mut a, mut b) = (ours, theirs);
        let mask = if btree { btree_mask } else { heap_mask };
        if let Err(e) = mask(&mut a, blk).and_then(|()| mask(&mut b, blk)) {
            failures.push(format!("{name}: block {blk} cannot be masked: {e}"));
            continue;
        }
        if a.as_bytes() != b.as_bytes() {
            let first = a
                .as_bytes()
                .iter()
                .zip(b.as_bytes())
                .position(|(x, y)| x != y)
                .unwrap_or(0);
            failures.push(format!(
                "{name}: block {blk} differs after masking (first at byte {first})"
            ));
        }
    }
    (blocks, failures)
}

#[test]
fn pageserver_killed_while_ingesting_catches_up_with_equal_pages() {
    let started = Instant::now();
    let dir = TempDir::new("pageserver-restart");
    let port = free_port_range(5);
    let cluster_dir = dir.join("cluster");
    let up = TarnUp::start(&cluster_dir, &["--port", &port.to_string()])
        .unwrap_or_else(|e| panic!("tarn up: {e}"));
    let addr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port + 4));
    let pg = up.postgres();
    let data_dir = up.layout().postgres_data_dir();

    pg.pgbench(&["-i", "-s", "2", "-q"]).expect("pgbench -i");
    // Nothing may change the tables after the final CHECKPOINT.
    for table in [
        "pgbench_accounts",
        "pgbench_branches",
        "pgbench_tellers",
        "pgbench_history",
    ] {
        pg.psql(&format!(
            "ALTER TABLE {table} SET (autovacuum_enabled = off)"
        ))
        .expect("autovacuum off");
    }
    let run_start = lsn(&pg.psql("SELECT pg_current_wal_lsn()").expect("lsn"));

    let workload = {
        let data_dir = data_dir.clone();
        thread::spawn(move || {
            let pg = PgCluster::open(&tarn_tests::pg(), &data_dir).expect("postgres");
            pg.pgbench(&[
                "-n",
                "-c",
                "2",
                "-j",
                "2",
                "-T",
                &PGBENCH_SECONDS.to_string(),
            ])
        })
    };

    // Kill the pageserver once it is ingesting the run's WAL.
    wait_for(
        "the pageserver to ingest WAL of the pgbench run",
        INGEST_TIMEOUT,
        || {
            let (ingested, _) = status(addr)?;
            (ingested > run_start && !workload.is_finished()).then_some(())
        },
    );
    let pid = up
        .manifest()
        .component("pageserver")
        .and_then(|c| c.pid)
        .expect("the pageserver's pid in tarn.json");
    let before_kill = status(addr).map(|(ingested, _)| ingested);
    send_signal(pid, libc::SIGKILL);
    wait_for("the pageserver to die", Duration::from_secs(30), || {
        (!process_is_running(pid)).then_some(())
    });
    assert!(
        !workload.is_finished(),
        "pgbench ended before the pageserver was killed"
    );
    eprintln!(
        "killed the pageserver (pid {pid}) at ingested LSN {before_kill:?}, {:?} in",
        started.elapsed()
    );
    let pageserver = OwnedChild::new("pageserver", up.respawn("pageserver"));

    let output = workload
        .join()
        .expect("pgbench thread")
        .expect("pgbench run");
    eprintln!(
        "pgbench: {}",
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter(|l| l.starts_with("number of transactions actually") || l.starts_with("tps"))
            .collect::<Vec<_>>()
            .join("; ")
    );
    pg.psql("CHECKPOINT").expect("checkpoint");
    let after = lsn(&pg.psql("SELECT pg_current_wal_lsn()").expect("lsn"));

    wait_for(
        "the respawned pageserver to ingest up to the CHECKPOINT",
        INGEST_TIMEOUT,
        || {
            let (ingested, _) = status(addr)?;
            (ingested >= after).then_some(())
        },
    );
    eprintln!("caught up to {after}, {:?} in", started.elapsed());

    let mut client = PageserverClient::connect(addr, CLIENT_TIMEOUT).expect("connect");
    let mut failures = Vec::new();
    let mut compared = 0;
    for (name, btree) in [
        ("pgbench_accounts", false),
        ("pgbench_branches", false),
        ("pgbench_tellers", false),
        ("pgbench_accounts_pkey", true),
    ] {
        let rel = rel_of(&pg, name);
        let (blocks, mut failed) =
            compare_relation(&mut client, &data_dir, name, rel, btree, after);
        assert!(blocks > 0, "{name} has no blocks");
        compared += blocks;
        failures.append(&mut failed);
    }
    assert!(
        failures.is_empty(),
        "{} page(s) differ from Postgres's data files:\n{}",
        failures.len(),
        failures
            .iter()
            .take(25)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    // A read of a block past the end still gets a clear error.
    let accounts = rel_of(&pg, "pgbench_accounts");
    let timeline = client.timeline_or_default(None).expect("the main timeline");
    match client
        .call(&Request::GetPage(RelRequest {
            timeline,
            rel: accounts,
            fork: ForkNumber::Main,
            blk: u32::MAX - 1,
            lsn: after,
        }))
        .expect("beyond eof")
    {
        Response::Error {
            code: ErrorCode::BeyondEof,
            ..
        } => {}
        other => panic!("expected BeyondEof, got {other:?}"),
    }

    // The deltas replayed per GetPage are reported, bounded by twice the threshold.
    let (_, getpage) = status(addr).expect("status");
    let metrics = getpage.metrics;
    eprintln!("{compared} blocks compared; GetPage: {metrics}");
    assert!(metrics.gets >= u64::from(compared), "{metrics}");
    assert_eq!(
        metrics.histogram.iter().sum::<u64>(),
        metrics.gets,
        "{metrics}"
    );
    assert!(getpage.threshold > 0);
    assert!(
        metrics.max_deltas <= 2 * getpage.threshold,
        "a GetPage replayed {} deltas, above twice the threshold {}: {metrics}",
        metrics.max_deltas,
        getpage.threshold
    );
    let cluster = cluster_dir.to_string_lossy().into_owned();
    let table = run_tarn(&["status", "--dir", &cluster]);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains(&format!(
            "deltas replayed per GetPage: {} gets, max {} (threshold {}",
            metrics.gets, metrics.max_deltas, getpage.threshold
        )),
        "{table}"
    );
    let json = run_tarn(&["status", "--dir", &cluster, "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&json.stdout).expect("status JSON");
    let reported = &json["pageserver"]["getpage_deltas"];
    assert_eq!(
        reported["max"].as_u64(),
        Some(u64::from(metrics.max_deltas)),
        "{json}"
    );
    assert!(
        reported["buckets"]
            .as_array()
            .is_some_and(|b| !b.is_empty()),
        "{json}"
    );

    let stopped = pageserver.stop();
    assert!(
        stopped.success(),
        "the respawned pageserver exited with {stopped}"
    );
    let status = up.stop();
    assert!(status.success(), "tarn up exited with {status}");
    eprintln!("done in {:?}", started.elapsed());
}
