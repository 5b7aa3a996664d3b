//! The pageserver inside `tarn up`: it follows the committed WAL on the safekeepers and
//! answers GetPage@LSN. A table is created and filled through Postgres; once `tarn
//! status` shows the pageserver ingested past the CHECKPOINT, its first block read from
//! the pageserver equals the block in Postgres's data file (after heap_mask: hint bits
//! are set without WAL), sizes agree, an LSN before the second insert shows fewer
//! tuples, an LSN far in the future times out with a clear error, and garbage on the
//! socket gets an error response while the server stays up.

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use tarn_pages::mask::heap_mask;
use tarn_pages::service::client::PageserverClient;
use tarn_pages::service::protocol::{ErrorCode, RelRequest, Request, Response};
use tarn_pages::{BLCKSZ, Page};
use tarn_tests::{TarnUp, TempDir, free_port_range, run_tarn, wait_for};
use tarn_wal::Lsn;
use tarn_wal::decode::{ForkNumber, RelFileNode};

const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);
const INGEST_TIMEOUT: Duration = Duration::from_secs(60);
const FIRST_ROWS: u16 = 10;
const ALL_ROWS: u16 = 60;

fn lsn(text: &str) -> Lsn {
    text.trim()
        .parse()
        .unwrap_or_else(|e| panic!("{text:?} is not an LSN: {e:?}"))
}

fn page(response: Response) -> Page {
    match response {
        Response::Page(bytes) => Page::from_bytes(&bytes[..]).expect("8 KiB"),
        other => panic!("expected a page, got {other:?}"),
    }
}

#[test]
fn pageserver_serves_pages_of_committed_wal() {
    let dir = TempDir::new("pageserver-getpage");
    let port = free_port_range(5);
    let cluster_dir = dir.join("cluster");
    let up = TarnUp::start(&cluster_dir, &["--port", &port.to_string()])
        .unwrap_or_else(|e| panic!("tarn up: {e}"));
    let manifest = up.manifest();
    assert_eq!(manifest.pageserver_port, Some(port + 4));
    assert!(manifest.components.contains_key("pageserver"));
    let addr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port + 4));
    let pg = up.postgres();

    pg.psql("CREATE TABLE t (id int, v text)").expect("create");
    pg.psql(&format!(
        "INSERT INTO t SELECT g, 'row ' || g FROM generate_series(1, {FIRST_ROWS}) g"
    ))
    .expect("first insert");
    let before = lsn(&pg.psql("SELECT pg_current_wal_lsn()").expect("lsn"));
    pg.psql(&format!(
        "INSERT INTO t SELECT g, 'row ' || g FROM generate_series({}, {ALL_ROWS}) g",
        FIRST_ROWS + 1
    ))
    .expect("second insert");
    pg.psql("CHECKPOINT").expect("checkpoint");
    let after = lsn(&pg.psql("SELECT pg_current_wal_lsn()").expect("lsn"));
    let ids = pg
        .psql(
            "SELECT CASE WHEN c.reltablespace = 0 THEN 1663 ELSE c.reltablespace END, d.oid, c.relfilenode \
             FROM pg_class c, pg_database d WHERE c.relname = 't' AND d.datname = current_database()",
        )
        .expect("relation ids");
    let oids: Vec<u32> = ids.split('|').map(|p| p.parse().expect("an oid")).collect();
    let rel = RelFileNode {
        spc_node: oids[0],
        db_node: oids[1],
        rel_node: oids[2],
    };

    // tarn status shows the pageserver's progress.
    let cluster = cluster_dir.to_string_lossy().into_owned();
    wait_for(
        "the pageserver to ingest past the CHECKPOINT",
        INGEST_TIMEOUT,
        || {
            let out = run_tarn(&["status", "--dir", &cluster, "--json"]);
            let status: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            let ingested = status["pageserver"]["last_ingested_lsn"].as_str()?;
            (lsn(ingested) >= after).then_some(())
        },
    );
    let table = run_tarn(&["status", "--dir", &cluster]);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains("pageserver 127.0.0.1"), "{table}");
    assert!(table.contains("last ingested LSN"), "{table}");
    assert!(table.contains("deltas replayed per GetPage"), "{table}");

    let mut client = PageserverClient::connect(addr, CLIENT_TIMEOUT).expect("connect");
    let timeline = client.timeline_or_default(None).expect("the main timeline");
    let at = |lsn: Lsn, blk: u32| RelRequest {
        timeline,
        rel,
        fork: ForkNumber::Main,
        blk,
        lsn,
    };

    // Pipelined: page, size, existence, status; answered in order.
    client.send(&Request::GetPage(at(after, 0))).expect("send");
    client.send(&Request::RelSize(at(after, 0))).expect("send");
    client
        .send(&Request::RelExists(at(after, 0)))
        .expect("send");
    client.send(&Request::GetPage(at(after, 1))).expect("send");
    let ours = page(client.receive().expect("page"));
    let size = client.receive().expect("size");
    assert_eq!(client.receive().expect("exists"), Response::Exists(true));
    match client.receive().expect("beyond eof") {
        Response::Error {
            code: ErrorCode::BeyondEof,
            ..
        } => {}
        other => panic!("a block past the end must be BeyondEof, got {other:?}"),
    }

    let data_file = cluster_dir
        .join("postgres/base")
        .join(rel.db_node.to_string())
        .join(rel.rel_node.to_string());
    let file = File::open(&data_file).expect("data file");
    let file_blocks = file.metadata().expect("stat").len() / BLCKSZ as u64;
    assert_eq!(size, Response::Size(file_blocks as u32), "relation size");
    let mut theirs = vec![0u8; BLCKSZ];
    file.read_exact_at(&mut theirs, 0).expect("read block 0");
    let mut theirs = Page::from_bytes(&theirs).expect("8 KiB");
    assert_eq!(ours.max_offset_number(), ALL_ROWS);
    assert_eq!(ours.lsn(), theirs.lsn(), "pd_lsn");
    let mut ours_masked = ours.clone();
    heap_mask(&mut ours_masked, 0).expect("mask ours");
    heap_mask(&mut theirs, 0).expect("mask theirs");
    assert!(
        ours_masked.as_bytes() == theirs.as_bytes(),
        "block 0 differs from the data file after masking"
    );

    // The CLI agrees.
    let out_path = dir.join("block0");
    let cli = run_tarn(&[
        "getpage",
        "--pageserver",
        &addr.to_string(),
        "--rel",
        &format!("{}/{}/{}", rel.spc_node, rel.db_node, rel.rel_node),
        "--block",
        "0",
        "--lsn",
        &after.to_string(),
        "--out",
        &out_path.to_string_lossy(),
    ]);
    assert!(cli.status.success(), "tarn getpage: {cli:?}");
    assert_eq!(
        std::fs::read(&out_path).expect("written page"),
        ours.as_bytes().to_vec()
    );

    // Historic read: before the second insert the page had fewer tuples.
    let historic = page(
        client
            .call(&Request::GetPage(at(before, 0)))
            .expect("historic"),
    );
    assert_eq!(historic.max_offset_number(), FIRST_ROWS);
    assert!(historic.lower() < ours.lower());

    // Far in the future: a clear timeout after the bounded wait.
    let started = Instant::now();
    match client
        .call(&Request::GetPage(at(Lsn(after.0 + (1 << 40)), 0)))
        .expect("future")
    {
        Response::Error {
            code: ErrorCode::Timeout,
            message,
        } => assert!(message.contains("timed out"), "{message}"),
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(started.elapsed() >= Duration::from_secs(9));

    // A well-framed request with a bad body: an error, and the connection goes on.
    let mut bad = Vec::new();
    bad.extend_from_slice(&tarn_pages::service::protocol::SERVICE_MAGIC.to_le_bytes());
    bad.push(1);
    bad.extend_from_slice(&3u32.to_le_bytes());
    bad.extend_from_slice(&[1, 2, 3]);
    client.send_raw(&bad).expect("send bad body");
    match client.receive().expect("answer to a bad body") {
        Response::Error {
            code: ErrorCode::BadRequest,
            ..
        } => {}
        other => panic!("expected BadRequest, got {other:?}"),
    }
    assert!(matches!(
        client.call(&Request::Status { timeline }).expect("status"),
        Response::Status { .. }
    ));

    // Garbage: an error response, then the connection closes; the server stays up.
    let mut garbage = PageserverClient::connect(addr, CLIENT_TIMEOUT).expect("connect");
    garbage
        .send_raw(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("send garbage");
    match garbage.receive().expect("answer to garbage") {
        Response::Error {
            code: ErrorCode::BadRequest,
            message,
        } => assert!(message.contains("magic"), "{message}"),
        other => panic!("expected BadRequest, got {other:?}"),
    }
    let mut fresh = PageserverClient::connect(addr, CLIENT_TIMEOUT).expect("reconnect");
    assert!(matches!(
        fresh.call(&Request::Status { timeline }).expect("status"),
        Response::Status { .. }
    ));

    let status = up.stop();
    assert!(status.success(), "tarn up exited with {status}");
}
