//! `tarn_wal::replication` against a real PostgreSQL 15: the client must be accepted as
//! the synchronous standby, hold commits until it acknowledges them, receive WAL
//! byte-identical to pg_wal, and report Postgres's refusals with their SQLSTATE.

use std::fs;
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, TryRecvError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use tarn_tests::{PgCluster, StopMode, TempDir, free_port, pg};
use tarn_wal::replication::{
    ReplicationClient, ReplicationConfig, ReplicationError, ReplicationEvent, ReplicationWriter,
    StreamEnd,
};
use tarn_wal::{Lsn, SystemId};

const APP_NAME: &str = "tarn_test";
/// Bound on every wait for Postgres to do something observable.
const WAIT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the reader thread blocks per `recv` before checking for shutdown.
const RECV_SLICE: Duration = Duration::from_millis(50);

#[test]
fn sync_standby_holds_commits_until_flush_ack_and_receives_exact_wal() -> Result<()> {
    let pg = TestPg::start(
        "repl-sync",
        &[
            ("synchronous_standby_names", APP_NAME),
            ("synchronous_commit", "on"),
        ],
        &[],
    )?;
    let cfg = ReplicationConfig::parse(&format!(
        "host=127.0.0.1 port={} user=postgres application_name={APP_NAME}",
        pg.cluster.port()
    ))?;
    let mut client = ReplicationClient::connect(&cfg, CONNECT_TIMEOUT)?;
    let version = client.server_parameter("server_version").unwrap_or("none");
    assert!(version.starts_with("15."), "server_version {version}");
    let ident = client.identify_system()?;
    assert_eq!(ident.system_id, pg.control_system_id()?);
    assert_eq!(ident.dbname, None);
    let segment_bytes = pg.wal_segment_bytes()?;
    let start = Lsn(ident.xlogpos.0 - ident.xlogpos.segment_offset(segment_bytes));
    client.start_replication(start, ident.timeline)?;
    let (reader, mut writer) = client.into_stream()?;
    let mut stream = StreamThread::spawn(reader);
    let mut wal = ReceivedWal::new(start);

    // Claim nothing beyond the start point yet; this gives the walsender a valid
    // flush position, which pg_stat_replication needs to call us 'sync'.
    writer.send_status(start, start, Lsn::INVALID, false)?;
    wal.pump_until(&mut stream, &mut writer, |wal| wal.end >= ident.xlogpos)?;

    let sql = "create table t(x int); insert into t select generate_series(1,1000)";
    let psql_done = pg.psql_in_background(sql)?;

    // The commit must now wait for us: bounded poll until Postgres says so.
    let waiting = "select count(*) from pg_stat_activity \
                   where wait_event = 'SyncRep' and query like 'create table t%'";
    let deadline = Instant::now() + WAIT;
    loop {
        wal.pump_for(&mut stream, &mut writer, Duration::from_millis(100))?;
        if pg.psql(waiting)? == "1" {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the commit never waited on SyncRep"
        );
    }
    match psql_done.try_recv() {
        Err(TryRecvError::Empty) => {}
        other => bail!("the commit returned before we acknowledged it: {other:?}"),
    }
    ensure!(
        wal.flush_acked == start,
        "nothing beyond the start was acknowledged"
    );

    // Everything Postgres has flushed, the commit record included, must reach us
    // before we acknowledge it.
    let flushed: Lsn = pg
        .psql("select pg_current_wal_flush_lsn()")?
        .parse()
        .context("pg_current_wal_flush_lsn")?;
    wal.pump_until(&mut stream, &mut writer, |wal| wal.end >= flushed)?;
    ensure!(wal.wal_end_seen >= flushed);
    wal.ack_flush(&mut writer, wal.end)?;

    let deadline = Instant::now() + WAIT;
    let output = loop {
        // The ack above covers the commit; keep acknowledging whatever else
        // arrives, as the proposer would.
        wal.pump_for(&mut stream, &mut writer, Duration::from_millis(50))?;
        let end = wal.end;
        wal.ack_flush(&mut writer, end)?;
        match psql_done.try_recv() {
            Ok(output) => break output,
            Err(TryRecvError::Empty) => {}
            Err(TryRecvError::Disconnected) => bail!("the psql thread died"),
        }
        ensure!(
            Instant::now() < deadline,
            "the commit never returned after our flush ack"
        );
    };
    output.context("the held commit failed")?;
    assert_eq!(pg.psql("select count(*) from t")?, "1000");

    let replication =
        pg.psql("select application_name, sync_state, state from pg_stat_replication")?;
    assert_eq!(replication, "tarn_test|sync|streaming");

    // Byte-for-byte against the segment files over everything we received.
    let mut lsn = start;
    while lsn < wal.end {
        let segment_no = lsn.segment_number(segment_bytes);
        let segment_start = segment_no * segment_bytes;
        let until = wal.end.0.min(segment_start + segment_bytes);
        let file = pg.wal_segment_path(ident.timeline, segment_no, segment_bytes);
        let on_disk = fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
        let from_offset = (lsn.0 - segment_start) as usize;
        let to_offset = (until - segment_start) as usize;
        let received = &wal.bytes[(lsn.0 - start.0) as usize..(until - start.0) as usize];
        ensure!(
            &on_disk[from_offset..to_offset] == received,
            "received WAL differs from {} over {lsn}..{}",
            file.display(),
            Lsn(until)
        );
        lsn = Lsn(until);
    }
    assert!(wal.xlog_messages > 0 && wal.bytes.len() as u64 == wal.end.0 - start.0);

    stream.stop()?;
    drop(writer);
    Ok(())
}

#[test]
fn authentication_refusals_unix_sockets_and_shutdown() -> Result<()> {
    let pg = TestPg::start(
        "repl-auth",
        &[],
        &[
            "host replication tarn_md5 127.0.0.1/32 md5",
            "host replication tarn_scram 127.0.0.1/32 scram-sha-256",
            "host replication tarn_cleartext 127.0.0.1/32 password",
            "host replication tarn_reject 127.0.0.1/32 reject",
        ],
    )?;
    pg.psql(
        "set password_encryption = 'md5'; \
         create role tarn_md5 login replication password 'md5 secret'; \
         set password_encryption = 'scram-sha-256'; \
         create role tarn_scram login replication password 'scram secret'; \
         create role tarn_cleartext login replication password 'plain secret'; \
         create role tarn_reject login replication",
    )?;
    let connstr = |rest: &str| {
        ReplicationConfig::parse(&format!(
            "host=127.0.0.1 port={} application_name=tarn_auth {rest}",
            pg.cluster.port()
        ))
    };
    let connect = |rest: &str| -> Result<ReplicationClient, ReplicationError> {
        ReplicationClient::connect(&connstr(rest)?, CONNECT_TIMEOUT)
    };

    for rest in [
        "user=tarn_md5 password='md5 secret'",
        "user=tarn_scram password='scram secret'",
        "user=tarn_cleartext password='plain secret'",
    ] {
        let mut client = connect(rest).with_context(|| rest.to_string())?;
        let ident = client.identify_system()?;
        assert_eq!(ident.system_id, pg.control_system_id()?);
    }

    let err = connect("user=tarn_scram password=wrong").expect_err("wrong password");
    assert_eq!(err.sqlstate(), Some("28P01"), "{err}");
    assert!(
        err.to_string().contains("password authentication failed"),
        "{err}"
    );
    let err = connect("user=tarn_md5 password=wrong").expect_err("wrong password");
    assert_eq!(err.sqlstate(), Some("28P01"), "{err}");
    let err = connect("user=tarn_scram").expect_err("no password");
    assert!(matches!(err, ReplicationError::Auth { .. }), "{err}");
    let err = connect("user=tarn_reject").expect_err("rejected by pg_hba.conf");
    assert_eq!(err.sqlstate(), Some("28000"), "{err}");
    assert!(
        err.to_string()
            .starts_with("postgres refused the connection: FATAL 28000 pg_hba.conf rejects"),
        "{err}"
    );
    let err = connect("user=nobody_here").expect_err("unknown role");
    assert_eq!(err.sqlstate(), Some("28000"), "{err}");

    // A unix socket directory as host, as libpq does it.
    let cfg = ReplicationConfig::parse(&format!(
        "host={} port={} user=postgres application_name=tarn_auth",
        pg.cluster.data_dir().display(),
        pg.cluster.port()
    ))?;
    let mut client = ReplicationClient::connect(&cfg, CONNECT_TIMEOUT)?;
    let ident = client.identify_system()?;

    // A start beyond the server's flush position is refused with Postgres's own
    // words, and the connection stays usable.
    let segment_bytes = pg.wal_segment_bytes()?;
    let ahead = Lsn((ident.xlogpos.segment_number(segment_bytes) + 2) * segment_bytes);
    let err = client
        .start_replication(ahead, ident.timeline)
        .expect_err("start ahead of flush");
    assert!(
        err.to_string()
            .starts_with("postgres refused START_REPLICATION PHYSICAL")
            && err.to_string().contains("ahead of the WAL flush position"),
        "{err}"
    );
    let ident = client.identify_system()?;
    let start = Lsn(ident.xlogpos.0 - ident.xlogpos.segment_offset(segment_bytes));
    client.start_replication(start, ident.timeline)?;
    assert!(matches!(
        client.identify_system(),
        Err(ReplicationError::Usage(_))
    ));
    let (mut reader, writer) = client.into_stream()?;
    let mut writer = Some(writer);

    // A fast shutdown sends the shutdown checkpoint, waits for us to confirm it and
    // then ends the command: the stream must end cleanly, not with an error.
    let mut other_handle = PgCluster::open(&tarn_tests::pg(), pg.cluster.data_dir())?;
    let stopper = thread::spawn(move || other_handle.stop_within(StopMode::Fast, WAIT));
    let deadline = Instant::now() + WAIT;
    let mut end = start;
    let reason = loop {
        ensure!(
            Instant::now() < deadline,
            "the stream did not end at shutdown"
        );
        let event = reader.recv(Duration::from_millis(200))?;
        match &event {
            ReplicationEvent::EndOfStream { reason } => break reason.clone(),
            ReplicationEvent::XLogData { wal_start, .. } => {
                ensure!(
                    *wal_start == end,
                    "gap: got WAL at {wal_start}, expected {end}"
                );
                end = event.wal_data_end().context("XLogData has an end")?;
            }
            ReplicationEvent::Keepalive { .. } | ReplicationEvent::Timeout => {}
        }
        let Some(open_writer) = writer.as_mut() else {
            continue;
        };
        if let Err(error) = open_writer.send_status(end, end, Lsn::INVALID, false) {
            // The walsender exits right after CommandComplete. An update racing
            // with that lands on a closed socket, whose unread bytes turn the close
            // into a reset: the write fails, but what Postgres sent before is still
            // ours to read.
            ensure!(matches!(error, ReplicationError::Io { .. }), "{error}");
            writer = None;
        }
    };
    assert_eq!(
        reason,
        StreamEnd::CommandComplete {
            tag: "COPY 0".to_string()
        }
    );
    stopper
        .join()
        .map_err(|_| anyhow::anyhow!("the pg_ctl thread panicked"))?
        .context("fast shutdown")?;
    Ok(())
}

#[test]
fn connect_times_out_against_a_silent_server() -> Result<()> {
    // Accepts TCP connections (the kernel does, from the backlog) but never answers.
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let cfg = ReplicationConfig::parse(&format!(
        "host=127.0.0.1 port={port} user=postgres application_name={APP_NAME}"
    ))?;
    let started = Instant::now();
    let err = ReplicationClient::connect(&cfg, Duration::from_millis(300)).expect_err("silent");
    assert!(
        matches!(
            err,
            ReplicationError::Timeout {
                phase: "authenticating",
                ..
            }
        ),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    Ok(())
}

/// The WAL received so far, checked for continuity, and what we acknowledged.
struct ReceivedWal {
    start: Lsn,
    end: Lsn,
    bytes: Vec<u8>,
    wal_end_seen: Lsn,
    flush_acked: Lsn,
    xlog_messages: u64,
}

impl ReceivedWal {
    fn new(start: Lsn) -> Self {
        ReceivedWal {
            start,
            end: start,
            bytes: Vec::new(),
            wal_end_seen: start,
            flush_acked: start,
            xlog_messages: 0,
        }
    }

    /// Handles one event: appends WAL, reports write progress (as a walreceiver
    /// does) and answers keepalives that ask for a reply. Flush stays where
    /// `ack_flush` put it.
    fn handle(&mut self, event: ReplicationEvent, writer: &mut ReplicationWriter) -> Result<()> {
        match event {
            ReplicationEvent::XLogData {
                wal_start,
                wal_end,
                data,
                ..
            } => {
                ensure!(
                    wal_start == self.end,
                    "gap: got WAL at {wal_start}, expected {}",
                    self.end
                );
                self.bytes.extend_from_slice(&data);
                self.end = wal_start.plus(data.len() as u64);
                self.wal_end_seen = self.wal_end_seen.max(wal_end);
                self.xlog_messages += 1;
                writer.send_status(self.end, self.flush_acked, Lsn::INVALID, false)?;
            }
            ReplicationEvent::Keepalive {
                wal_end,
                reply_requested,
                ..
            } => {
                self.wal_end_seen = self.wal_end_seen.max(wal_end);
                if reply_requested {
                    writer.send_status(self.end, self.flush_acked, Lsn::INVALID, false)?;
                }
            }
            ReplicationEvent::Timeout => {}
            ReplicationEvent::EndOfStream { reason } => bail!("stream ended: {reason:?}"),
        }
        Ok(())
    }

    fn ack_flush(&mut self, writer: &mut ReplicationWriter, flush: Lsn) -> Result<()> {
        ensure!(flush <= self.end, "would acknowledge WAL we do not have");
        self.flush_acked = flush;
        writer.send_status(self.end, flush, Lsn::INVALID, false)?;
        Ok(())
    }

    fn pump_for(
        &mut self,
        stream: &mut StreamThread,
        writer: &mut ReplicationWriter,
        duration: Duration,
    ) -> Result<()> {
        let deadline = Instant::now() + duration;
        while let Some(event) = stream.next_until(deadline)? {
            self.handle(event, writer)?;
        }
        Ok(())
    }

    fn pump_until(
        &mut self,
        stream: &mut StreamThread,
        writer: &mut ReplicationWriter,
        done: impl Fn(&ReceivedWal) -> bool,
    ) -> Result<()> {
        let deadline = Instant::now() + WAIT;
        while !done(self) {
            ensure!(
                Instant::now() < deadline,
                "WAL stopped at {} (start {})",
                self.end,
                self.start
            );
            self.pump_for(stream, writer, Duration::from_millis(100))?;
        }
        Ok(())
    }
}

/// Runs the reader half on its own thread, as the proposer does, and hands events
/// to the test thread (which owns the writer half).
struct StreamThread {
    events: Receiver<Result<ReplicationEvent, String>>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl StreamThread {
    fn spawn(mut reader: tarn_wal::replication::ReplicationReader) -> Self {
        let (tx, events) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stop_flag = Arc::clone(&stop);
        let handle = thread::spawn(move || {
            while !stop_flag.load(Ordering::Relaxed) {
                match reader.recv(RECV_SLICE) {
                    Ok(ReplicationEvent::Timeout) => {}
                    Ok(event) => {
                        let ended = matches!(event, ReplicationEvent::EndOfStream { .. });
                        if tx.send(Ok(event)).is_err() || ended {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                        return;
                    }
                }
            }
        });
        StreamThread {
            events,
            stop,
            handle: Some(handle),
        }
    }

    /// The next event, or None once `deadline` passes.
    fn next_until(&mut self, deadline: Instant) -> Result<Option<ReplicationEvent>> {
        let wait = deadline.saturating_duration_since(Instant::now());
        match self.events.recv_timeout(wait) {
            Ok(Ok(event)) => Ok(Some(event)),
            Ok(Err(e)) => bail!("replication stream failed: {e}"),
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => bail!("the reader thread exited"),
        }
    }

    fn stop(&mut self) -> Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(handle) = self.handle.take() {
            handle
                .join()
                .map_err(|_| anyhow::anyhow!("the reader thread panicked"))?;
        }
        Ok(())
    }
}

impl Drop for StreamThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A PostgreSQL 15 cluster for one test, in a directory of its own. Fields drop in
/// order: the server is stopped before its directory is removed.
struct TestPg {
    cluster: PgCluster,
    _dir: TempDir,
}

impl TestPg {
    /// Starts a cluster with WAL for replication plus `settings`, with `hba_lines`
    /// ahead of initdb's trust lines (the first matching line wins).
    fn start(name: &str, settings: &[(&str, &str)], hba_lines: &[&str]) -> Result<TestPg> {
        let dir = TempDir::new(name);
        let mut cluster = PgCluster::init(&pg(), &dir.join("data"))?;
        let mut all = vec![
            ("wal_level", "replica"),
            ("max_wal_senders", "4"),
            ("fsync", "off"),
        ];
        all.extend_from_slice(settings);
        cluster.set_settings(&all)?;
        if !hba_lines.is_empty() {
            let hba = cluster.data_dir().join("pg_hba.conf");
            let existing = fs::read_to_string(&hba)?;
            // Rewriting in place keeps the file's owner (postgres).
            fs::write(&hba, format!("{}\n{existing}", hba_lines.join("\n")))?;
        }
        cluster.start(free_port())?;
        Ok(TestPg { cluster, _dir: dir })
    }

    fn psql(&self, sql: &str) -> Result<String> {
        Ok(self.cluster.psql(sql)?)
    }

    /// Runs `sql` on another thread (through a second handle on the cluster, which
    /// does not stop the server when dropped); its outcome arrives on the channel.
    fn psql_in_background(&self, sql: &str) -> Result<Receiver<Result<String>>> {
        let handle = PgCluster::open(&pg(), self.cluster.data_dir())?;
        let sql = sql.to_string();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let outcome = handle.psql_with_timeout("postgres", &sql, 2 * WAIT);
            let _ = tx.send(outcome.map_err(anyhow::Error::from));
        });
        Ok(rx)
    }

    fn control_system_id(&self) -> Result<SystemId> {
        Ok(SystemId(self.cluster.system_id()?))
    }

    fn wal_segment_bytes(&self) -> Result<u64> {
        let text = self.psql("select setting from pg_settings where name = 'wal_segment_size'")?;
        text.parse()
            .with_context(|| format!("wal_segment_size {text:?}"))
    }

    /// pg_wal/<timeline><segment high><segment low>, as XLogFileName (xlog_internal.h).
    fn wal_segment_path(&self, timeline: u32, segment_no: u64, segment_bytes: u64) -> PathBuf {
        let per_id = 0x1_0000_0000 / segment_bytes;
        self.cluster.data_dir().join("pg_wal").join(format!(
            "{timeline:08X}{:08X}{:08X}",
            segment_no / per_id,
            segment_no % per_id
        ))
    }
}
