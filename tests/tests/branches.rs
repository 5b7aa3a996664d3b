//! Branches and endpoints through `tarn up`: a branch created at an LSN of main shows
//! exactly what was committed before it (its `pg_dump` equals main's, taken at that
//! moment), boots a fresh vanilla Postgres from a pageserver basebackup with no WAL
//! replay, takes writes that never show on main (and main's later writes never show on
//! it), and keeps them across a stop and a fresh start of its endpoint. A branch at a
//! time brings back rows deleted after it.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use tarn_server::postgres::PgBinaries;
use tarn_tests::{TarnUp, TempDir, free_port, free_port_range, pg, psql_at, run_tarn};

const SQL_TIMEOUT: Duration = Duration::from_secs(60);

/// Stops the endpoints a test started, even when it fails: their proposers and
/// Postgres run detached from the test process.
struct Endpoints<'a> {
    cluster: &'a str,
    names: Vec<String>,
}

impl Endpoints<'_> {
    fn start(&mut self, branch: &str, port: u16) -> String {
        self.names.push(branch.to_string());
        let out = run_tarn(&[
            "endpoint",
            "start",
            branch,
            "--port",
            &port.to_string(),
            "--dir",
            self.cluster,
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "endpoint start {branch}: {stderr}");
        stderr.into_owned()
    }

    fn stop(&mut self, branch: &str) {
        let out = run_tarn(&["endpoint", "stop", branch, "--dir", self.cluster]);
        assert!(
            out.status.success(),
            "endpoint stop {branch}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Endpoints<'_> {
    fn drop(&mut self) {
        for name in &self.names {
            let _ = run_tarn(&["endpoint", "stop", name, "--dir", self.cluster]);
        }
    }
}

fn pg_dump(bins: &PgBinaries, port: u16) -> String {
    let out = Command::new(bins.tool("pg_dump"))
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"])
        // A fixed key: pg_dump otherwise draws a random one for its \restrict lines.
        .args(["--no-sync", "--restrict-key", "tarn", "postgres"])
        .output()
        .unwrap_or_else(|e| panic!("pg_dump: {e}"));
    assert!(
        out.status.success(),
        "pg_dump on port {port}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn endpoint_log(cluster: &Path, branch: &str) -> String {
    let path = cluster
        .join("endpoints")
        .join(branch)
        .join("pgdata")
        .join("log")
        .join("postgres.log");
    std::fs::read_to_string(&path).unwrap_or_default()
}

#[test]
fn branch_at_an_lsn_boots_an_isolated_endpoint() {
    let dir = TempDir::new("branches");
    let port = free_port_range(5);
    let cluster_dir = dir.join("cluster");
    let cluster = cluster_dir.to_string_lossy().into_owned();
    let up = TarnUp::start(&cluster_dir, &["--port", &port.to_string()])
        .unwrap_or_else(|e| panic!("tarn up: {e}"));
    let mut endpoints = Endpoints {
        cluster: &cluster,
        names: Vec::new(),
    };
    let bins = pg();
    let main = up.postgres();

    // Before the branch point: a table with 100 rows, an index, a second table.
    main.psql("CREATE TABLE t (id int PRIMARY KEY, v text)")
        .expect("create");
    main.psql("INSERT INTO t SELECT g, repeat('x', g % 50) FROM generate_series(1, 100) g")
        .expect("insert");
    main.psql("CREATE TABLE notes AS SELECT 'before the branch' AS note")
        .expect("notes");
    let branch_lsn = main
        .psql_with_timeout("postgres", "SELECT pg_current_wal_lsn()", SQL_TIMEOUT)
        .expect("lsn");
    let dump_at_branch_point = pg_dump(&bins, port);

    // After it: more rows, a delete, a new table.
    main.psql("INSERT INTO t SELECT g, 'later' FROM generate_series(101, 200) g")
        .expect("insert more");
    main.psql("DELETE FROM t WHERE id = 5").expect("delete");
    main.psql("CREATE TABLE later (x int)")
        .expect("later table");

    // A branch point outside main's history is refused with a clear message.
    let refused = run_tarn(&[
        "branch", "create", "nope", "--lsn", "FF/0", "--dir", &cluster,
    ]);
    assert!(!refused.status.success());
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(why.contains("FF/0"), "{why}");

    let created = run_tarn(&[
        "branch",
        "create",
        "dev",
        "--lsn",
        branch_lsn.trim(),
        "--dir",
        &cluster,
    ]);
    let said = String::from_utf8_lossy(&created.stdout);
    assert!(
        created.status.success(),
        "branch create: {}",
        String::from_utf8_lossy(&created.stderr)
    );
    assert!(said.contains("created branch dev"), "{said}");
    let list = run_tarn(&["branch", "list", "--dir", &cluster]);
    let tree = String::from_utf8_lossy(&list.stdout);
    assert!(
        tree.lines().next().is_some_and(|l| l.starts_with("main ")),
        "{tree}"
    );
    assert!(tree.contains("  dev (timeline"), "{tree}");
    assert!(
        tree.contains(&format!("from main at {}", branch_lsn.trim())),
        "{tree}"
    );

    // The endpoint boots from the basebackup without replaying WAL.
    let dev_port = free_port();
    endpoints.start("dev", dev_port);
    let log = endpoint_log(&cluster_dir, "dev");
    assert!(log.contains("database system was shut down at"), "{log}");
    assert!(!log.contains("redo starts at"), "{log}");

    // Exactly the state at the branch point.
    assert_eq!(
        psql_at(dev_port, "SELECT count(*), sum(id) FROM t"),
        "100|5050"
    );
    assert_eq!(
        psql_at(dev_port, "SELECT count(*) FROM t WHERE id = 5"),
        "1"
    );
    assert_eq!(
        psql_at(dev_port, "SELECT to_regclass('later') IS NULL"),
        "t"
    );
    assert_eq!(pg_dump(&bins, dev_port), dump_at_branch_point);

    // Writes on the branch stay there; writes on main stay on main.
    psql_at(dev_port, "INSERT INTO t VALUES (1000, 'on dev')");
    psql_at(dev_port, "UPDATE notes SET note = 'changed on dev'");
    main.psql("INSERT INTO t VALUES (2000, 'on main')")
        .expect("main insert");
    assert_eq!(
        main.psql("SELECT count(*) FROM t WHERE id = 1000")
            .expect("main"),
        "0"
    );
    assert_eq!(
        main.psql("SELECT note FROM notes").expect("main notes"),
        "before the branch"
    );
    assert_eq!(
        psql_at(dev_port, "SELECT count(*) FROM t WHERE id = 2000"),
        "0"
    );
    let bulk = "INSERT INTO t SELECT g, 'bulk' FROM generate_series(3000, 5000) g";
    psql_at(dev_port, bulk);
    psql_at(dev_port, "CHECKPOINT");

    // A fresh start of the endpoint (a new data directory from the pageserver, at the
    // branch's newest committed LSN) keeps the branch's writes.
    endpoints.stop("dev");
    endpoints.start("dev", dev_port);
    assert_eq!(
        psql_at(dev_port, "SELECT count(*), sum(id) FROM t"),
        format!(
            "{}|{}",
            100 + 1 + 2001,
            5050 + 1000 + (3000..=5000).sum::<i64>()
        )
    );
    assert_eq!(
        psql_at(dev_port, "SELECT note FROM notes"),
        "changed on dev"
    );
    let check = "SELECT count(*) FROM t WHERE id BETWEEN 3000 AND 5000 AND v = 'bulk'";
    assert_eq!(psql_at(dev_port, check), "2001");
    let listed = run_tarn(&["endpoint", "list", "--dir", &cluster]);
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(listed.contains("dev\tport"), "{listed}");
    assert!(listed.contains("running"), "{listed}");
    endpoints.stop("dev");

    // Point-in-time recovery: rows deleted by mistake after time T are back on a
    // branch created at T.
    let rows_before = main.psql("SELECT count(*) FROM t").expect("count");
    let before_mistake = main
        .psql("SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US')")
        .expect("time");
    main.psql("DELETE FROM t WHERE id <= 10")
        .expect("the mistake");
    main.psql("INSERT INTO t VALUES (3001, 'after the mistake')")
        .expect("later write");
    let created = run_tarn(&[
        "branch",
        "create",
        "restore",
        "--time",
        before_mistake.trim(),
        "--dir",
        &cluster,
    ]);
    assert!(
        created.status.success(),
        "branch create --time: {}",
        String::from_utf8_lossy(&created.stderr)
    );
    let restore_port = free_port();
    endpoints.start("restore", restore_port);
    assert_eq!(psql_at(restore_port, "SELECT count(*) FROM t"), rows_before);
    assert_eq!(
        psql_at(restore_port, "SELECT count(*) FROM t WHERE id <= 10"),
        "9"
    );
    assert_eq!(
        psql_at(restore_port, "SELECT count(*) FROM t WHERE id = 3001"),
        "0"
    );
    endpoints.stop("restore");
    let bad_time = run_tarn(&[
        "branch",
        "create",
        "x",
        "--time",
        "yesterday",
        "--dir",
        &cluster,
    ]);
    assert!(!bad_time.status.success());
    assert!(String::from_utf8_lossy(&bad_time.stderr).contains("is not a time"));
    drop(endpoints);
    up.stop();
}
