//! A blocking client for PostgreSQL's physical streaming replication protocol: the
//! proposer's connection to the primary it is synchronous standby of (DESIGN.md,
//! decision 1).
//!
//! This module owns everything between a libpq connection string and a stream of
//! WAL events: parsing the connection string, the startup handshake (cleartext, MD5
//! and SCRAM-SHA-256 authentication), `IDENTIFY_SYSTEM`, `START_REPLICATION PHYSICAL`,
//! the framing of the CopyBoth stream ('w' XLogData and 'k' keepalive in, 'r' standby
//! status updates out) and the errors of each step. It knows nothing about Paxos or
//! safekeepers: the proposer decides what flush position to report.
//!
//! I/O is blocking std I/O on purpose: the proposer is a sidecar with a receiving
//! thread and an acknowledging thread, which [`ReplicationClient::into_stream`] serves
//! by splitting the connection into a [`ReplicationReader`] and a
//! [`ReplicationWriter`]. Every wait is bounded by a timeout the caller passes.
//!
//! Frontend messages are encoded by `postgres-protocol`; backend messages are decoded
//! here because its decoder knows neither CopyBothResponse nor our bounds on frame
//! sizes.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Buf, Bytes, BytesMut};
use postgres_protocol::authentication::{md5_hash, sasl};
use postgres_protocol::message::frontend;

use crate::{Lsn, SystemId};

/// Port Postgres listens on when the connection string names none.
pub const DEFAULT_PORT: u16 = 5432;

/// Largest backend message body we accept. The walsender cuts WAL into messages of
/// at most 128 KiB (MAX_SEND_SIZE in walprotocol.h) and every other message we expect
/// is small, so anything this large is a corrupt stream or not Postgres at all; the
/// bound keeps a bad length field from making us buffer gigabytes.
pub const MAX_FRAME_BYTES: usize = 16 << 20;

/// How much room each socket read asks for. Two walsender messages' worth, so that a
/// busy stream is drained in few syscalls.
const READ_CHUNK_BYTES: usize = 256 << 10;

/// Upper bound on any single wait, so that deadline arithmetic cannot overflow and no
/// caller can ask for an effectively unbounded block.
const MAX_WAIT: Duration = Duration::from_secs(24 * 60 * 60);

/// Seconds from the Unix epoch to the Postgres epoch, 2000-01-01 00:00:00 UTC.
const POSTGRES_EPOCH_UNIX_SECS: u64 = 946_684_800;

/// Header of an XLogData ('w') message: kind, dataStart, walEnd, sendTime.
const XLOG_DATA_HEADER_BYTES: usize = 1 + 8 + 8 + 8;

/// A primary keepalive ('k') message: kind, walEnd, sendTime, replyRequested.
const KEEPALIVE_BYTES: usize = 1 + 8 + 8 + 1;

/// A standby status update ('r'): kind, write, flush, apply, clock, replyRequested.
const STATUS_UPDATE_BODY_BYTES: usize = 1 + 8 + 8 + 8 + 8 + 1;

/// The status update on the wire: CopyData tag, CopyData length, body.
const STATUS_UPDATE_FRAME_BYTES: usize = 1 + 4 + STATUS_UPDATE_BODY_BYTES;

/// Bound on ParameterStatus messages at startup: Postgres 15 sends fewer than 20.
const MAX_STARTUP_PARAMETERS: usize = 256;

/// Bound on the rows a replication command may return: IDENTIFY_SYSTEM and the
/// timeline answer of START_REPLICATION return one.
const MAX_RESULT_ROWS: usize = 16;

/// Backend message header: tag byte and a length that counts itself.
const FRAME_HEADER_BYTES: usize = 5;

/// Where and as whom to connect, with what `application_name` (the name that
/// `synchronous_standby_names` must list for Postgres to wait for us).
#[derive(Clone, PartialEq, Eq)]
pub struct ReplicationConfig {
    /// A host name or IP address, or a unix socket directory when it starts with '/'.
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<String>,
    /// Only used to match pg_hba.conf lines: a physical replication connection is not
    /// bound to a database.
    pub dbname: Option<String>,
    pub application_name: String,
}

impl fmt::Debug for ReplicationConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The password must not end up in logs.
        f.debug_struct("ReplicationConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("dbname", &self.dbname)
            .field("application_name", &self.application_name)
            .finish()
    }
}

impl ReplicationConfig {
    /// Parses a libpq key=value connection string, e.g.
    /// `host=127.0.0.1 port=5432 user=postgres password='a b' application_name=tarn`.
    ///
    /// Values may be single-quoted; a backslash escapes the next character, as in
    /// libpq. Keys other than host, port, user, password, dbname and application_name
    /// are refused, and so are repeated keys: an option tarn would silently ignore
    /// (sslmode, say) is a misconfiguration to report, not to guess about.
    /// `host`, `user` and `application_name` are required; `port` defaults to 5432.
    pub fn parse(connstr: &str) -> Result<ReplicationConfig, ReplicationError> {
        let invalid = |detail: String| ReplicationError::InvalidConnString { detail };
        if connstr.contains("://") {
            return Err(invalid(
                "connection URIs are not supported; use key=value pairs".to_string(),
            ));
        }
        let mut host = None;
        let mut port = None;
        let mut user = None;
        let mut password = None;
        let mut dbname = None;
        let mut application_name = None;
        for pair in ConnStrPairs::new(connstr) {
            let (key, value) = pair.map_err(invalid)?;
            let slot = match key.as_str() {
                "host" => &mut host,
                "port" => &mut port,
                "user" => &mut user,
                "password" => &mut password,
                "dbname" => &mut dbname,
                "application_name" => &mut application_name,
                _ => {
                    return Err(invalid(format!(
                        "unknown key {key:?} (supported: host, port, user, password, dbname, \
                         application_name)"
                    )));
                }
            };
            if slot.is_some() {
                return Err(invalid(format!("key {key:?} is given more than once")));
            }
            if value.contains('\0') {
                return Err(invalid(format!("the value of {key:?} contains a NUL byte")));
            }
            *slot = Some(value);
        }
        let required = |value: Option<String>, key: &str| match value {
            Some(value) if !value.is_empty() => Ok(value),
            _ => Err(invalid(format!("missing required key {key:?}"))),
        };
        let port = match port {
            None => DEFAULT_PORT,
            Some(text) => match text.parse::<u16>() {
                Ok(port) if port != 0 => port,
                _ => {
                    return Err(invalid(format!(
                        "port {text:?} is not a number in 1..=65535"
                    )));
                }
            },
        };
        Ok(ReplicationConfig {
            host: required(host, "host")?,
            port,
            user: required(user, "user")?,
            password,
            dbname,
            application_name: required(application_name, "application_name")?,
        })
    }

    /// The unix socket path when `host` is a directory, as libpq derives it.
    fn unix_socket_path(&self) -> Option<String> {
        self.host
            .starts_with('/')
            .then(|| format!("{}/.s.PGSQL.{}", self.host.trim_end_matches('/'), self.port))
    }

    /// Where we connect, for error messages.
    fn address(&self) -> String {
        self.unix_socket_path()
            .unwrap_or_else(|| format!("{}:{}", self.host, self.port))
    }
}

/// Iterates over the key=value pairs of a libpq connection string, following the
/// tokenizing of conninfo_parse (fe-connect.c): whitespace around '=' is allowed, a
/// value is either single-quoted or runs to the next whitespace, and a backslash
/// escapes the next character in both forms.
struct ConnStrPairs<'a> {
    rest: std::iter::Peekable<std::str::Chars<'a>>,
}

impl<'a> ConnStrPairs<'a> {
    fn new(connstr: &'a str) -> Self {
        ConnStrPairs {
            rest: connstr.chars().peekable(),
        }
    }

    fn skip_whitespace(&mut self) {
        while self.rest.next_if(|c| c.is_whitespace()).is_some() {}
    }

    fn next_pair(&mut self) -> Result<Option<(String, String)>, String> {
        self.skip_whitespace();
        if self.rest.peek().is_none() {
            return Ok(None);
        }
        let mut key = String::new();
        while let Some(c) = self.rest.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        self.skip_whitespace();
        if self.rest.next() != Some('=') {
            return Err(format!("missing \"=\" after {key:?}"));
        }
        if key.is_empty() {
            return Err("a \"=\" has no key before it".to_string());
        }
        self.skip_whitespace();
        let mut value = String::new();
        if self.rest.next_if_eq(&'\'').is_some() {
            loop {
                match self.rest.next() {
                    None => return Err(format!("unterminated quoted value for {key:?}")),
                    Some('\'') => break,
                    Some('\\') => match self.rest.next() {
                        Some(c) => value.push(c),
                        None => return Err(format!("unterminated quoted value for {key:?}")),
                    },
                    Some(c) => value.push(c),
                }
            }
            // libpq reads the next key right after the closing quote; requiring a
            // separator catches `a='x'b=y`, which is almost certainly a typo.
            if self.rest.peek().is_some_and(|c| !c.is_whitespace()) {
                return Err(format!(
                    "missing whitespace after the quoted value of {key:?}"
                ));
            }
        } else {
            while let Some(c) = self.rest.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    match self.rest.next() {
                        Some(escaped) => value.push(escaped),
                        None => return Err(format!("trailing backslash in the value of {key:?}")),
                    }
                } else {
                    value.push(c);
                }
            }
        }
        Ok(Some((key, value)))
    }
}

impl Iterator for ConnStrPairs<'_> {
    type Item = Result<(String, String), String>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_pair().transpose()
    }
}

/// An ErrorResponse (or NoticeResponse) from Postgres.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerError {
    /// ERROR, FATAL or PANIC (the non-localized severity when the server sends it).
    pub severity: String,
    /// The SQLSTATE code, e.g. 28000 for a pg_hba.conf refusal.
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.severity, self.code, self.message)?;
        if let Some(detail) = &self.detail {
            write!(f, " (detail: {detail})")?;
        }
        if let Some(hint) = &self.hint {
            write!(f, " (hint: {hint})")?;
        }
        Ok(())
    }
}

/// What went wrong, and where.
#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    #[error("invalid connection string: {detail}")]
    InvalidConnString { detail: String },

    #[error("{context}: {error}")]
    Io { context: String, error: io::Error },

    #[error("timed out after {timeout:?} while {phase}")]
    Timeout {
        phase: &'static str,
        timeout: Duration,
    },

    #[error("postgres closed the connection while {phase}")]
    ConnectionClosed { phase: &'static str },

    /// The server sent something the protocol does not allow at this point.
    #[error("protocol violation while {phase}: {detail}")]
    Protocol { phase: &'static str, detail: String },

    /// Authentication cannot proceed on our side: no password configured, a method we
    /// do not implement, or a SCRAM server signature that does not verify.
    #[error("authentication as {user:?} failed: {detail}")]
    Auth { user: String, detail: String },

    /// Postgres answered with an ErrorResponse. `context` says what it refused, e.g.
    /// "postgres refused the connection".
    #[error("{context}: {error}")]
    Server {
        context: String,
        error: Box<ServerError>,
    },

    /// A call the client's state does not allow, e.g. `into_stream` before
    /// `start_replication`.
    #[error("misuse of the replication client: {0}")]
    Usage(&'static str),

    /// An earlier error left this half of the stream in an unknown state (a frame half
    /// read or half written); the connection must be dropped and reopened.
    #[error("the replication {half} failed earlier and cannot be used: reconnect")]
    Broken { half: &'static str },
}

impl ReplicationError {
    /// The SQLSTATE of a server error, e.g. "28000" or "28P01".
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            ReplicationError::Server { error, .. } => Some(&error.code),
            _ => None,
        }
    }

    fn io(context: impl Into<String>, error: io::Error) -> Self {
        ReplicationError::Io {
            context: context.into(),
            error,
        }
    }

    fn protocol(phase: &'static str, detail: impl Into<String>) -> Self {
        ReplicationError::Protocol {
            phase,
            detail: detail.into(),
        }
    }

    /// Whether this error leaves the connection's byte stream in an unknown state.
    fn breaks_stream(&self) -> bool {
        !matches!(self, ReplicationError::Usage(_))
    }
}

/// The answer to `IDENTIFY_SYSTEM`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentifySystem {
    pub system_id: SystemId,
    /// The server's current timeline.
    pub timeline: u32,
    /// The server's current WAL flush position.
    pub xlogpos: Lsn,
    /// Always None on a physical replication connection.
    pub dbname: Option<String>,
}

/// Why the server stopped streaming.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamEnd {
    /// The server sent CopyDone: it has sent all WAL of the requested timeline,
    /// which has ended (a standby was promoted). A primary streaming its own current
    /// timeline does not do this. The client does not complete the hand-shake to
    /// learn the next timeline: reconnect and ask IDENTIFY_SYSTEM.
    CopyDone,
    /// The server completed START_REPLICATION without CopyDone; a walsender does
    /// this when Postgres shuts down after all WAL was sent and acknowledged.
    CommandComplete { tag: String },
}

/// One message of the replication stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplicationEvent {
    /// WAL bytes starting at `wal_start`. `wal_end` is the server's WAL flush
    /// position when it sent them, at or beyond the end of `data`.
    XLogData {
        wal_start: Lsn,
        wal_end: Lsn,
        send_time_us: i64,
        data: Bytes,
    },
    /// The server is alive; `reply_requested` asks for a status update now (the
    /// walsender disconnects standbys that stay silent for wal_sender_timeout).
    Keepalive {
        wal_end: Lsn,
        send_time_us: i64,
        reply_requested: bool,
    },
    /// Nothing arrived within the timeout passed to `recv`.
    Timeout,
    /// The server ended the stream; further `recv` calls return this again.
    EndOfStream { reason: StreamEnd },
}

impl ReplicationEvent {
    /// For XLogData, the LSN right after its last byte: what a standby that has
    /// stored the message can report as written.
    pub fn wal_data_end(&self) -> Option<Lsn> {
        match self {
            ReplicationEvent::XLogData {
                wal_start, data, ..
            } => Some(wal_start.plus(data.len() as u64)),
            _ => None,
        }
    }
}

/// A connection in replication mode, before streaming starts.
pub struct ReplicationClient {
    conn: Connection,
    /// Bounds each command (IDENTIFY_SYSTEM, START_REPLICATION) and each status
    /// update write once streaming: the timeout `connect` was given.
    timeout: Duration,
    streaming: bool,
    backend_pid: Option<i32>,
    parameters: Vec<(String, String)>,
}

impl fmt::Debug for ReplicationClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplicationClient")
            .field("backend_pid", &self.backend_pid)
            .field("streaming", &self.streaming)
            .finish_non_exhaustive()
    }
}

impl ReplicationClient {
    /// Connects, authenticates and waits for the server to be ready for commands,
    /// all within `timeout`.
    pub fn connect(
        cfg: &ReplicationConfig,
        timeout: Duration,
    ) -> Result<ReplicationClient, ReplicationError> {
        let timeout = timeout.min(MAX_WAIT);
        let deadline = Deadline::after(timeout);
        let socket = Socket::connect(cfg, deadline)?;
        let mut conn = Connection::new(socket);

        let mut params = vec![
            ("user", cfg.user.as_str()),
            ("replication", "true"),
            ("application_name", cfg.application_name.as_str()),
        ];
        if let Some(dbname) = &cfg.dbname {
            params.push(("database", dbname.as_str()));
        }
        frontend::startup_message(params, &mut conn.out)
            .map_err(|e| ReplicationError::io("encoding the startup message", e))?;
        conn.flush("sending the startup message", deadline)?;

        authenticate(&mut conn, cfg, deadline)?;

        let phase = "waiting for the server to become ready";
        let mut client = ReplicationClient {
            conn,
            timeout,
            streaming: false,
            backend_pid: None,
            parameters: Vec::new(),
        };
        loop {
            let frame = client.conn.next_frame(phase, deadline)?;
            let mut body = Fields::new(&frame.body, phase);
            match frame.tag {
                b'S' => {
                    let name = body.cstr("parameter name")?;
                    let value = body.cstr("parameter value")?;
                    if client.parameters.len() == MAX_STARTUP_PARAMETERS {
                        return Err(ReplicationError::protocol(
                            phase,
                            format!("more than {MAX_STARTUP_PARAMETERS} ParameterStatus messages"),
                        ));
                    }
                    client.parameters.push((name, value));
                }
                b'K' => {
                    client.backend_pid = Some(body.i32("backend pid")?);
                    body.i32("cancel key")?;
                }
                b'Z' => {
                    body.u8("transaction status")?;
                    body.end()?;
                    break;
                }
                b'N' => log_notice(&frame.body),
                b'E' => {
                    return Err(server_error(&frame.body, "postgres refused the connection"));
                }
                tag => return Err(unexpected(phase, tag)),
            }
        }
        tracing::debug!(
            address = %cfg.address(),
            application_name = %cfg.application_name,
            backend_pid = ?client.backend_pid,
            "replication connection ready"
        );
        Ok(client)
    }

    /// A parameter the server reported at startup (ParameterStatus), e.g.
    /// "server_version".
    pub fn server_parameter(&self, name: &str) -> Option<&str> {
        self.parameters
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    /// The pid of the walsender serving us (pg_stat_replication.pid).
    pub fn backend_pid(&self) -> Option<i32> {
        self.backend_pid
    }

    /// Asks the server who it is and where its WAL ends.
    pub fn identify_system(&mut self) -> Result<IdentifySystem, ReplicationError> {
        self.ensure_idle()?;
        let phase = "running IDENTIFY_SYSTEM";
        let outcome = self.simple_query("IDENTIFY_SYSTEM", phase)?;
        let rows = match outcome {
            QueryOutcome::Rows(rows) => rows,
            QueryOutcome::CopyBoth => {
                return Err(ReplicationError::protocol(
                    phase,
                    "the server entered COPY mode",
                ));
            }
        };
        let [row] = rows.as_slice() else {
            return Err(ReplicationError::protocol(
                phase,
                format!("expected 1 row, got {}", rows.len()),
            ));
        };
        if row.len() < 4 {
            return Err(ReplicationError::protocol(
                phase,
                format!("expected 4 columns, got {}", row.len()),
            ));
        }
        let column = |index: usize, name: &str| {
            row[index]
                .as_deref()
                .ok_or_else(|| ReplicationError::protocol(phase, format!("column {name} is NULL")))
        };
        let bad = |name: &str, value: &str| {
            ReplicationError::protocol(phase, format!("column {name} has invalid value {value:?}"))
        };
        let system_id = column(0, "systemid")?;
        let timeline = column(1, "timeline")?;
        let xlogpos = column(2, "xlogpos")?;
        Ok(IdentifySystem {
            system_id: SystemId(system_id.parse().map_err(|_| bad("systemid", system_id))?),
            timeline: timeline.parse().map_err(|_| bad("timeline", timeline))?,
            xlogpos: xlogpos.parse().map_err(|_| bad("xlogpos", xlogpos))?,
            dbname: row[3].clone(),
        })
    }

    /// Starts physical streaming from `start` on `timeline`. On success the
    /// connection is in COPY mode and [`Self::into_stream`] hands it out; if Postgres
    /// refuses (e.g. `start` is ahead of its flush position) the error carries its
    /// message and the client can still run commands. To tell the two apart this
    /// sends one status update claiming no positions (all zero) with a reply
    /// requested, and waits for the answer.
    pub fn start_replication(&mut self, start: Lsn, timeline: u32) -> Result<(), ReplicationError> {
        self.ensure_idle()?;
        let command = format!("START_REPLICATION PHYSICAL {start} TIMELINE {timeline}");
        let phase = "running START_REPLICATION";
        match self.simple_query(&command, phase)? {
            QueryOutcome::CopyBoth => {
                self.confirm_streaming(&command, phase)?;
                self.streaming = true;
                tracing::info!(%start, timeline, "physical replication started");
                Ok(())
            }
            // The requested timeline is a historic one that ends at `start`: the
            // server answers with the next timeline instead of streaming.
            QueryOutcome::Rows(rows) => Err(ReplicationError::protocol(
                phase,
                format!(
                    "the server did not start streaming; it answered {rows:?} (next timeline \
                     and switch point): timeline {timeline} ends at or before {start}"
                ),
            )),
        }
    }

    /// Waits for the first message after CopyBothResponse. Postgres sends
    /// CopyBothResponse before it checks the start point (StartReplication,
    /// walsender.c), so a refusal such as "requested starting point … is ahead of
    /// the WAL flush position" arrives as an ErrorResponse right after it, followed
    /// by ReadyForQuery. To learn which way it went without guessing a delay, ask for
    /// a reply: a status update that claims no positions and requests a keepalive.
    /// A walsender that is streaming answers it (or sends WAL first); one that has
    /// refused is back in command mode, where CopyData is ignored by protocol.
    /// Anything but an ErrorResponse stays buffered for the reader.
    fn confirm_streaming(
        &mut self,
        command: &str,
        phase: &'static str,
    ) -> Result<(), ReplicationError> {
        let deadline = Deadline::after(self.timeout);
        let mut probe = [0; STATUS_UPDATE_FRAME_BYTES];
        encode_status_update(
            &mut probe,
            Lsn::INVALID,
            Lsn::INVALID,
            Lsn::INVALID,
            postgres_epoch_now_us(),
            true,
        );
        self.conn.out.extend_from_slice(&probe);
        self.conn.flush(phase, deadline)?;
        loop {
            match self.conn.frames.peek_tag() {
                Some(b'E') => break,
                Some(b'N') => {
                    let notice = self.conn.next_frame(phase, deadline)?;
                    log_notice(&notice.body);
                }
                Some(_) => return Ok(()),
                None => {
                    if !self
                        .conn
                        .frames
                        .read_more(&mut self.conn.socket, phase, deadline)?
                    {
                        return Err(deadline.timeout(phase));
                    }
                }
            }
        }
        let refusal = self.conn.next_frame(phase, deadline)?;
        let error = server_error(&refusal.body, format!("postgres refused {command}"));
        // Drain to ReadyForQuery so the client can run commands again.
        loop {
            let frame = self.conn.next_frame(phase, deadline)?;
            match frame.tag {
                b'Z' => return Err(error),
                b'N' => log_notice(&frame.body),
                b'S' | b'C' => {}
                tag => return Err(unexpected(phase, tag)),
            }
        }
    }

    /// Splits a streaming connection into a reader and a writer for two threads.
    /// The writer's sends are bounded by the timeout given to `connect`.
    pub fn into_stream(self) -> Result<(ReplicationReader, ReplicationWriter), ReplicationError> {
        if !self.streaming {
            return Err(ReplicationError::Usage(
                "into_stream called before start_replication succeeded",
            ));
        }
        let write_socket = self
            .conn
            .socket
            .try_clone()
            .map_err(|e| ReplicationError::io("cloning the replication socket", e))?;
        // Set once: the timeout never changes, and the acknowledgement path should
        // cost one syscall per status update. A zero timeout would mean "block
        // forever", so it becomes the smallest one instead.
        write_socket
            .set_write_timeout(Some(self.timeout.max(Duration::from_millis(1))))
            .map_err(|e| ReplicationError::io("setting the socket write timeout", e))?;
        let reader = ReplicationReader {
            socket: self.conn.socket,
            frames: self.conn.frames,
            ended: None,
            broken: false,
        };
        let writer = ReplicationWriter {
            socket: write_socket,
            timeout: self.timeout,
            frame: [0; STATUS_UPDATE_FRAME_BYTES],
            broken: false,
        };
        Ok((reader, writer))
    }

    fn ensure_idle(&self) -> Result<(), ReplicationError> {
        if self.streaming {
            return Err(ReplicationError::Usage(
                "the connection is streaming; commands are no longer possible",
            ));
        }
        Ok(())
    }

    /// Runs one simple-protocol command. An ErrorResponse is returned after draining
    /// to ReadyForQuery, so the connection stays usable.
    fn simple_query(
        &mut self,
        sql: &str,
        phase: &'static str,
    ) -> Result<QueryOutcome, ReplicationError> {
        let deadline = Deadline::after(self.timeout);
        frontend::query(sql, &mut self.conn.out)
            .map_err(|e| ReplicationError::io(format!("encoding {sql}"), e))?;
        self.conn.flush(phase, deadline)?;
        let mut rows = Vec::new();
        let mut refused = None;
        loop {
            let frame = self.conn.next_frame(phase, deadline)?;
            let mut body = Fields::new(&frame.body, phase);
            match frame.tag {
                b'T' | b'C' | b'I' | b'S' => {}
                b'D' if rows.len() == MAX_RESULT_ROWS => {
                    return Err(ReplicationError::protocol(
                        phase,
                        format!("more than {MAX_RESULT_ROWS} result rows"),
                    ));
                }
                b'D' => rows.push(body.data_row()?),
                b'W' => {
                    let format = body.u8("copy format")?;
                    if format != 0 {
                        return Err(ReplicationError::protocol(
                            phase,
                            format!("CopyBothResponse has format {format}, expected 0 (text)"),
                        ));
                    }
                    return Ok(QueryOutcome::CopyBoth);
                }
                b'N' => log_notice(&frame.body),
                b'E' => {
                    refused = Some(server_error(&frame.body, format!("postgres refused {sql}")));
                }
                b'Z' => {
                    body.u8("transaction status")?;
                    body.end()?;
                    return match refused {
                        Some(error) => Err(error),
                        None => Ok(QueryOutcome::Rows(rows)),
                    };
                }
                tag => return Err(unexpected(phase, tag)),
            }
        }
    }
}

enum QueryOutcome {
    Rows(Vec<Vec<Option<String>>>),
    CopyBoth,
}

/// Runs the authentication exchange up to AuthenticationOk.
fn authenticate(
    conn: &mut Connection,
    cfg: &ReplicationConfig,
    deadline: Deadline,
) -> Result<(), ReplicationError> {
    let phase = "authenticating";
    let auth_error = |detail: String| ReplicationError::Auth {
        user: cfg.user.clone(),
        detail,
    };
    let password = || {
        cfg.password.as_deref().ok_or_else(|| {
            auth_error("the server asks for a password and none is configured".into())
        })
    };
    let mut scram: Option<sasl::ScramSha256> = None;
    loop {
        let frame = conn.next_frame(phase, deadline)?;
        match frame.tag {
            b'R' => {}
            b'E' => return Err(server_error(&frame.body, "postgres refused the connection")),
            b'N' => {
                log_notice(&frame.body);
                continue;
            }
            tag => return Err(unexpected(phase, tag)),
        }
        let mut body = Fields::new(&frame.body, phase);
        let encode_error = |e| ReplicationError::io("encoding an authentication message", e);
        match body.i32("authentication request")? {
            0 => {
                body.end()?;
                if scram.is_some() {
                    return Err(auth_error(
                        "the server accepted SCRAM without sending its final message".into(),
                    ));
                }
                return Ok(());
            }
            3 => {
                body.end()?;
                frontend::password_message(password()?.as_bytes(), &mut conn.out)
                    .map_err(encode_error)?;
            }
            5 => {
                let salt: [u8; 4] = body
                    .take(4, "MD5 salt")?
                    .try_into()
                    .map_err(|_| ReplicationError::protocol(phase, "MD5 salt is not 4 bytes"))?;
                body.end()?;
                let hash = md5_hash(cfg.user.as_bytes(), password()?.as_bytes(), salt);
                frontend::password_message(hash.as_bytes(), &mut conn.out).map_err(encode_error)?;
            }
            10 => {
                let mut offers_scram = false;
                let mut mechanisms = Vec::new();
                loop {
                    let mechanism = body.cstr("SASL mechanism")?;
                    if mechanism.is_empty() {
                        break;
                    }
                    offers_scram |= mechanism == sasl::SCRAM_SHA_256;
                    mechanisms.push(mechanism);
                }
                body.end()?;
                if !offers_scram {
                    return Err(auth_error(format!(
                        "the server offers SASL mechanisms {mechanisms:?}; only {} is supported",
                        sasl::SCRAM_SHA_256
                    )));
                }
                // No TLS, hence no channel binding to offer.
                let state = sasl::ScramSha256::new(
                    password()?.as_bytes(),
                    sasl::ChannelBinding::unsupported(),
                );
                frontend::sasl_initial_response(
                    sasl::SCRAM_SHA_256,
                    state.message(),
                    &mut conn.out,
                )
                .map_err(encode_error)?;
                scram = Some(state);
            }
            11 => {
                let state = scram.as_mut().ok_or_else(|| {
                    ReplicationError::protocol(phase, "SASLContinue before SASL started")
                })?;
                state
                    .update(body.rest())
                    .map_err(|e| auth_error(format!("SCRAM server-first message: {e}")))?;
                frontend::sasl_response(state.message(), &mut conn.out).map_err(encode_error)?;
            }
            12 => {
                let mut state = scram.take().ok_or_else(|| {
                    ReplicationError::protocol(phase, "SASLFinal before SASL started")
                })?;
                // finish() verifies the server's signature: a server that does not
                // know the password cannot complete this step.
                state
                    .finish(body.rest())
                    .map_err(|e| auth_error(format!("SCRAM server-final message: {e}")))?;
                continue;
            }
            2 | 6 | 7 | 8 | 9 => {
                return Err(auth_error(
                    "the server requires Kerberos, GSSAPI, SSPI or SCM credentials; only \
                     trust, password, md5 and scram-sha-256 are supported"
                        .into(),
                ));
            }
            other => {
                return Err(ReplicationError::protocol(
                    phase,
                    format!("unknown authentication request {other}"),
                ));
            }
        }
        conn.flush(phase, deadline)?;
    }
}

/// The socket with the buffers of the command phase.
struct Connection {
    socket: Socket,
    frames: FrameBuffer,
    out: BytesMut,
}

impl Connection {
    fn new(socket: Socket) -> Self {
        Connection {
            socket,
            frames: FrameBuffer::new(),
            out: BytesMut::with_capacity(1024),
        }
    }

    fn flush(&mut self, phase: &'static str, deadline: Deadline) -> Result<(), ReplicationError> {
        let remaining = deadline
            .remaining()
            .ok_or_else(|| deadline.timeout(phase))?;
        self.socket
            .set_write_timeout(Some(remaining))
            .map_err(|e| ReplicationError::io("setting the socket write timeout", e))?;
        let result = self.socket.write_all(&self.out);
        self.out.clear();
        result.map_err(|e| match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => deadline.timeout(phase),
            _ => ReplicationError::io(format!("{phase}: writing to postgres"), e),
        })
    }

    fn next_frame(
        &mut self,
        phase: &'static str,
        deadline: Deadline,
    ) -> Result<Frame, ReplicationError> {
        loop {
            if let Some(frame) = self.frames.take_frame(phase)? {
                return Ok(frame);
            }
            if !self.frames.read_more(&mut self.socket, phase, deadline)? {
                return Err(deadline.timeout(phase));
            }
        }
    }
}

/// The receiving half of a streaming connection.
pub struct ReplicationReader {
    socket: Socket,
    frames: FrameBuffer,
    ended: Option<StreamEnd>,
    broken: bool,
}

impl fmt::Debug for ReplicationReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplicationReader")
            .field("ended", &self.ended)
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

impl ReplicationReader {
    /// Waits up to `timeout` for the next message; a zero timeout only returns what
    /// is already buffered. XLogData payloads share the reader's receive buffer,
    /// which is reused once they are dropped. After an error the reader refuses
    /// further calls ([`ReplicationError::Broken`]): the stream position is lost.
    pub fn recv(&mut self, timeout: Duration) -> Result<ReplicationEvent, ReplicationError> {
        if self.broken {
            return Err(ReplicationError::Broken { half: "reader" });
        }
        if let Some(reason) = &self.ended {
            return Ok(ReplicationEvent::EndOfStream {
                reason: reason.clone(),
            });
        }
        let result = self.recv_inner(Deadline::after(timeout.min(MAX_WAIT)));
        if let Err(error) = &result {
            self.broken = error.breaks_stream();
        }
        result
    }

    fn recv_inner(&mut self, deadline: Deadline) -> Result<ReplicationEvent, ReplicationError> {
        let phase = "receiving WAL";
        loop {
            let Some(frame) = self.frames.take_frame(phase)? else {
                if self.frames.read_more(&mut self.socket, phase, deadline)? {
                    continue;
                }
                return Ok(ReplicationEvent::Timeout);
            };
            match frame.tag {
                b'd' => return parse_copy_data(frame.body),
                b'c' => {
                    Fields::new(&frame.body, phase).end()?;
                    return Ok(self.end(StreamEnd::CopyDone));
                }
                b'C' => {
                    let mut body = Fields::new(&frame.body, phase);
                    let tag = body.cstr("command tag")?;
                    body.end()?;
                    return Ok(self.end(StreamEnd::CommandComplete { tag }));
                }
                b'E' => {
                    return Err(server_error(
                        &frame.body,
                        "postgres ended the replication stream",
                    ));
                }
                b'N' => log_notice(&frame.body),
                // A reload can change a reported setting at any time.
                b'S' => {}
                tag => return Err(unexpected(phase, tag)),
            }
        }
    }

    fn end(&mut self, reason: StreamEnd) -> ReplicationEvent {
        tracing::info!(?reason, "postgres ended the replication stream");
        self.ended = Some(reason.clone());
        ReplicationEvent::EndOfStream { reason }
    }
}

/// The sending half of a streaming connection.
pub struct ReplicationWriter {
    socket: Socket,
    timeout: Duration,
    /// Reused for every status update: the acknowledgement path allocates nothing.
    frame: [u8; STATUS_UPDATE_FRAME_BYTES],
    broken: bool,
}

impl fmt::Debug for ReplicationWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplicationWriter")
            .field("timeout", &self.timeout)
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

impl ReplicationWriter {
    /// Sends a Standby Status Update: WAL up to `write` is received, up to `flush` is
    /// durable (this is what releases commits waiting for us as synchronous standby),
    /// up to `apply` is replayed. `reply_requested` asks for an immediate keepalive.
    pub fn send_status(
        &mut self,
        write: Lsn,
        flush: Lsn,
        apply: Lsn,
        reply_requested: bool,
    ) -> Result<(), ReplicationError> {
        if self.broken {
            return Err(ReplicationError::Broken { half: "writer" });
        }
        let phase = "sending a standby status update";
        encode_status_update(
            &mut self.frame,
            write,
            flush,
            apply,
            postgres_epoch_now_us(),
            reply_requested,
        );
        self.socket.write_all(&self.frame).map_err(|e| {
            // A write that failed part-way leaves half a message on the wire.
            self.broken = true;
            match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ReplicationError::Timeout {
                    phase,
                    timeout: self.timeout,
                },
                _ => ReplicationError::io(format!("{phase}: writing to postgres"), e),
            }
        })
    }
}

/// Writes a Standby Status Update wrapped in CopyData; mirrors XLogWalRcvSendReply
/// (walreceiver.c).
fn encode_status_update(
    frame: &mut [u8; STATUS_UPDATE_FRAME_BYTES],
    write: Lsn,
    flush: Lsn,
    apply: Lsn,
    now_us: i64,
    reply_requested: bool,
) {
    frame[0] = b'd';
    // The length counts itself: 4 + the 34-byte body, well inside u32.
    frame[1..5].copy_from_slice(&((4 + STATUS_UPDATE_BODY_BYTES) as u32).to_be_bytes());
    frame[5] = b'r';
    frame[6..14].copy_from_slice(&write.0.to_be_bytes());
    frame[14..22].copy_from_slice(&flush.0.to_be_bytes());
    frame[22..30].copy_from_slice(&apply.0.to_be_bytes());
    frame[30..38].copy_from_slice(&now_us.to_be_bytes());
    frame[38] = u8::from(reply_requested);
}

/// Microseconds since 2000-01-01 UTC, Postgres's TimestampTz. A clock set before
/// 2000 yields negative values, as in Postgres.
fn postgres_epoch_now_us() -> i64 {
    let epoch = UNIX_EPOCH + Duration::from_secs(POSTGRES_EPOCH_UNIX_SECS);
    match SystemTime::now().duration_since(epoch) {
        Ok(since) => i64::try_from(since.as_micros()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_micros()).map_or(i64::MIN, |us| -us),
    }
}

/// Decodes the payload of one CopyData message of the replication stream.
fn parse_copy_data(mut body: Bytes) -> Result<ReplicationEvent, ReplicationError> {
    let phase = "parsing a replication message";
    let Some(&kind) = body.first() else {
        return Err(ReplicationError::protocol(phase, "empty CopyData message"));
    };
    match kind {
        b'w' => {
            if body.len() < XLOG_DATA_HEADER_BYTES {
                return Err(ReplicationError::protocol(
                    phase,
                    format!(
                        "XLogData message of {} bytes is shorter than its \
                         {XLOG_DATA_HEADER_BYTES}-byte header",
                        body.len()
                    ),
                ));
            }
            body.advance(1);
            let wal_start = Lsn(body.get_u64());
            let wal_end = Lsn(body.get_u64());
            let send_time_us = body.get_i64();
            let data_end = wal_start.0.checked_add(body.len() as u64).ok_or_else(|| {
                ReplicationError::protocol(
                    phase,
                    format!(
                        "XLogData at {wal_start} with {} bytes runs past the end of the WAL \
                         address space",
                        body.len()
                    ),
                )
            })?;
            // The walsender never sends past its flush position, which is what it
            // reports as walEnd (XLogSendPhysical, walsender.c).
            if wal_end.0 < data_end {
                return Err(ReplicationError::protocol(
                    phase,
                    format!(
                        "XLogData covers {wal_start}..{} but the server's WAL end is {wal_end}",
                        Lsn(data_end)
                    ),
                ));
            }
            Ok(ReplicationEvent::XLogData {
                wal_start,
                wal_end,
                send_time_us,
                data: body,
            })
        }
        b'k' => {
            if body.len() != KEEPALIVE_BYTES {
                return Err(ReplicationError::protocol(
                    phase,
                    format!(
                        "keepalive message has {} bytes, expected {KEEPALIVE_BYTES}",
                        body.len()
                    ),
                ));
            }
            body.advance(1);
            let wal_end = Lsn(body.get_u64());
            let send_time_us = body.get_i64();
            let reply_requested = match body.get_u8() {
                0 => false,
                1 => true,
                other => {
                    return Err(ReplicationError::protocol(
                        phase,
                        format!("keepalive reply-requested flag is {other}, expected 0 or 1"),
                    ));
                }
            };
            Ok(ReplicationEvent::Keepalive {
                wal_end,
                send_time_us,
                reply_requested,
            })
        }
        other => Err(ReplicationError::protocol(
            phase,
            format!("unknown replication message kind {}", describe_tag(other)),
        )),
    }
}

/// One backend message: its tag and its body without the 5-byte header.
struct Frame {
    tag: u8,
    body: Bytes,
}

/// Receive buffer that cuts the byte stream into backend messages.
///
/// `buf[..filled]` holds received bytes not yet handed out; `buf[filled..]` is
/// initialised scratch space that reads land in. Keeping the scratch space
/// initialised lets reads go straight into the buffer without unsafe code, and each
/// byte is zeroed once per trip through the allocation rather than once per read.
/// Frames are split off the front as `Bytes` sharing the allocation; once the
/// caller has dropped them, `reserve` reclaims the space instead of allocating.
struct FrameBuffer {
    buf: BytesMut,
    filled: usize,
}

impl FrameBuffer {
    fn new() -> Self {
        FrameBuffer {
            buf: BytesMut::new(),
            filled: 0,
        }
    }

    /// Bytes received and buffered (for tests and debugging).
    #[cfg(test)]
    fn push(&mut self, bytes: &[u8]) {
        self.buf.truncate(self.filled);
        self.buf.extend_from_slice(bytes);
        self.filled = self.buf.len();
    }

    /// Length of the whole frame starting at the front of the buffer (header
    /// included), once its header is in; refuses impossible lengths.
    fn frame_len(&self, phase: &'static str) -> Result<Option<usize>, ReplicationError> {
        if self.filled < FRAME_HEADER_BYTES {
            return Ok(None);
        }
        // In bounds: `filled` never exceeds `buf.len()`.
        let header = &self.buf[..FRAME_HEADER_BYTES];
        let tag = header[0];
        let length = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        if length < 4 {
            return Err(ReplicationError::protocol(
                phase,
                format!(
                    "message {} has length {length}, below the minimum of 4",
                    describe_tag(tag)
                ),
            ));
        }
        let body_len = length - 4;
        if body_len > MAX_FRAME_BYTES {
            return Err(ReplicationError::protocol(
                phase,
                format!(
                    "message {} of {body_len} bytes exceeds the limit of {MAX_FRAME_BYTES} bytes",
                    describe_tag(tag)
                ),
            ));
        }
        Ok(Some(1 + length))
    }

    /// The tag of the next message once its header has arrived, without any I/O.
    fn peek_tag(&self) -> Option<u8> {
        (self.filled >= FRAME_HEADER_BYTES).then(|| self.buf[0])
    }

    /// The next complete frame, without any I/O.
    fn take_frame(&mut self, phase: &'static str) -> Result<Option<Frame>, ReplicationError> {
        let Some(total) = self.frame_len(phase)? else {
            return Ok(None);
        };
        if self.filled < total {
            return Ok(None);
        }
        let mut frame = self.buf.split_to(total);
        self.filled -= total;
        let tag = frame[0];
        frame.advance(FRAME_HEADER_BYTES);
        Ok(Some(Frame {
            tag,
            body: frame.freeze(),
        }))
    }

    /// Reads once from the socket. Returns false when the deadline passed first.
    fn read_more(
        &mut self,
        socket: &mut Socket,
        phase: &'static str,
        deadline: Deadline,
    ) -> Result<bool, ReplicationError> {
        // Room for the rest of the frame being assembled, and at least a chunk.
        let frame_rest = self
            .frame_len(phase)?
            .map_or(0, |total| total.saturating_sub(self.filled));
        let room = frame_rest.max(READ_CHUNK_BYTES);
        if self.buf.len() - self.filled < room {
            self.buf.truncate(self.filled);
            self.buf.reserve(room);
            let capacity = self.buf.capacity();
            self.buf.resize(capacity, 0);
        }
        loop {
            let Some(remaining) = deadline.remaining() else {
                return Ok(false);
            };
            socket
                .set_read_timeout(Some(remaining))
                .map_err(|e| ReplicationError::io("setting the socket read timeout", e))?;
            match socket.read(&mut self.buf[self.filled..]) {
                Ok(0) => return Err(ReplicationError::ConnectionClosed { phase }),
                Ok(n) => {
                    self.filled += n;
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(false);
                }
                Err(e) => {
                    return Err(ReplicationError::io(
                        format!("{phase}: reading from postgres"),
                        e,
                    ));
                }
            }
        }
    }
}

/// A point in time a phase must finish by, and the timeout it came from (for
/// error messages).
#[derive(Clone, Copy)]
struct Deadline {
    at: Instant,
    timeout: Duration,
}

impl Deadline {
    fn after(timeout: Duration) -> Self {
        let timeout = timeout.min(MAX_WAIT);
        Deadline {
            at: Instant::now() + timeout,
            timeout,
        }
    }

    /// Time left, or None once the deadline has passed (a zero socket timeout would
    /// mean "block forever").
    fn remaining(&self) -> Option<Duration> {
        Some(self.at.saturating_duration_since(Instant::now())).filter(|d| !d.is_zero())
    }

    fn timeout(&self, phase: &'static str) -> ReplicationError {
        ReplicationError::Timeout {
            phase,
            timeout: self.timeout,
        }
    }
}

/// A TCP or unix-domain socket.
enum Socket {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Socket {
    fn connect(cfg: &ReplicationConfig, deadline: Deadline) -> Result<Socket, ReplicationError> {
        let phase = "connecting";
        if let Some(path) = cfg.unix_socket_path() {
            // connect(2) on a unix socket does not wait for the server to accept,
            // so it needs no timeout of its own.
            return UnixStream::connect(&path)
                .map(Socket::Unix)
                .map_err(|e| ReplicationError::io(format!("connecting to {path}"), e));
        }
        let address = cfg.address();
        let candidates = (cfg.host.as_str(), cfg.port)
            .to_socket_addrs()
            .map_err(|e| ReplicationError::io(format!("resolving {address}"), e))?;
        let mut last_error = None;
        for candidate in candidates {
            let remaining = deadline
                .remaining()
                .ok_or_else(|| deadline.timeout(phase))?;
            match TcpStream::connect_timeout(&candidate, remaining) {
                Ok(stream) => {
                    // Status updates are tiny and commit latency waits on them.
                    stream
                        .set_nodelay(true)
                        .map_err(|e| ReplicationError::io("setting TCP_NODELAY", e))?;
                    return Ok(Socket::Tcp(stream));
                }
                Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                    return Err(deadline.timeout(phase));
                }
                Err(e) => last_error = Some(e),
            }
        }
        Err(ReplicationError::io(
            format!("connecting to {address}"),
            last_error.unwrap_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    "the host name resolves to no address",
                )
            }),
        ))
    }

    fn try_clone(&self) -> io::Result<Socket> {
        match self {
            Socket::Tcp(s) => s.try_clone().map(Socket::Tcp),
            Socket::Unix(s) => s.try_clone().map(Socket::Unix),
        }
    }

    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        match self {
            Socket::Tcp(s) => s.set_read_timeout(timeout),
            Socket::Unix(s) => s.set_read_timeout(timeout),
        }
    }

    fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        match self {
            Socket::Tcp(s) => s.set_write_timeout(timeout),
            Socket::Unix(s) => s.set_write_timeout(timeout),
        }
    }
}

impl Read for Socket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Socket::Tcp(s) => s.read(buf),
            Socket::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Socket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Socket::Tcp(s) => s.write(buf),
            Socket::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Socket::Tcp(s) => s.flush(),
            Socket::Unix(s) => s.flush(),
        }
    }
}

/// A bounds-checked reader over a message body, whose errors name the field.
struct Fields<'a> {
    rest: &'a [u8],
    phase: &'static str,
}

impl<'a> Fields<'a> {
    fn new(body: &'a [u8], phase: &'static str) -> Self {
        Fields { rest: body, phase }
    }

    fn take(&mut self, len: usize, what: &str) -> Result<&'a [u8], ReplicationError> {
        if self.rest.len() < len {
            return Err(ReplicationError::protocol(
                self.phase,
                format!(
                    "message truncated in {what}: needs {len} bytes, {} left",
                    self.rest.len()
                ),
            ));
        }
        let (head, tail) = self.rest.split_at(len);
        self.rest = tail;
        Ok(head)
    }

    fn u8(&mut self, what: &str) -> Result<u8, ReplicationError> {
        Ok(self.take(1, what)?[0])
    }

    fn i16(&mut self, what: &str) -> Result<i16, ReplicationError> {
        let b = self.take(2, what)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    fn i32(&mut self, what: &str) -> Result<i32, ReplicationError> {
        let b = self.take(4, what)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn cstr(&mut self, what: &str) -> Result<String, ReplicationError> {
        let Some(nul) = self.rest.iter().position(|&b| b == 0) else {
            return Err(ReplicationError::protocol(
                self.phase,
                format!("{what} is not NUL-terminated"),
            ));
        };
        let text = self.take(nul, what)?;
        self.take(1, what)?;
        Ok(String::from_utf8_lossy(text).into_owned())
    }

    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.rest)
    }

    fn end(&self) -> Result<(), ReplicationError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(ReplicationError::protocol(
                self.phase,
                format!(
                    "{} unexpected bytes at the end of a message",
                    self.rest.len()
                ),
            ))
        }
    }

    /// A DataRow body: column count, then each column as length (-1 for NULL) and
    /// text.
    fn data_row(&mut self) -> Result<Vec<Option<String>>, ReplicationError> {
        let columns = self.i16("column count")?;
        let columns = usize::try_from(columns).map_err(|_| {
            ReplicationError::protocol(self.phase, format!("negative column count {columns}"))
        })?;
        let mut row = Vec::with_capacity(columns);
        for _ in 0..columns {
            let len = self.i32("column length")?;
            if len < 0 {
                row.push(None);
            } else {
                let value = self.take(len as usize, "column value")?;
                row.push(Some(String::from_utf8_lossy(value).into_owned()));
            }
        }
        self.end()?;
        Ok(row)
    }
}

/// Decodes the fields of an ErrorResponse or NoticeResponse body: pairs of a type
/// byte and a string, ended by a zero byte. A malformed body still yields what could
/// be read, because losing the server's explanation is worse than a partial one.
fn parse_server_error(body: &[u8]) -> ServerError {
    let mut error = ServerError {
        severity: String::new(),
        code: String::new(),
        message: String::new(),
        detail: None,
        hint: None,
    };
    let mut localized_severity = String::new();
    let mut fields = Fields::new(body, "decoding an error response");
    while let Ok(kind) = fields.u8("field type") {
        if kind == 0 {
            break;
        }
        let Ok(value) = fields.cstr("field value") else {
            break;
        };
        match kind {
            b'S' => localized_severity = value,
            b'V' => error.severity = value,
            b'C' => error.code = value,
            b'M' => error.message = value,
            b'D' => error.detail = Some(value),
            b'H' => error.hint = Some(value),
            _ => {}
        }
    }
    if error.severity.is_empty() {
        error.severity = localized_severity;
    }
    error
}

fn server_error(body: &[u8], context: impl Into<String>) -> ReplicationError {
    ReplicationError::Server {
        context: context.into(),
        error: Box::new(parse_server_error(body)),
    }
}

fn log_notice(body: &[u8]) {
    let notice = parse_server_error(body);
    tracing::info!(%notice, "notice from postgres");
}

fn unexpected(phase: &'static str, tag: u8) -> ReplicationError {
    ReplicationError::protocol(phase, format!("unexpected message {}", describe_tag(tag)))
}

/// A message tag as a printable character when it is one.
fn describe_tag(tag: u8) -> String {
    if tag.is_ascii_graphic() {
        format!("'{}'", tag as char)
    } else {
        format!("0x{tag:02x}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xlog_data(wal_start: u64, wal_end: u64, data: &[u8]) -> Vec<u8> {
        let mut body = vec![b'w'];
        body.extend_from_slice(&wal_start.to_be_bytes());
        body.extend_from_slice(&wal_end.to_be_bytes());
        body.extend_from_slice(&42i64.to_be_bytes());
        body.extend_from_slice(data);
        body
    }

    fn keepalive(wal_end: u64, reply: u8) -> Vec<u8> {
        let mut body = vec![b'k'];
        body.extend_from_slice(&wal_end.to_be_bytes());
        body.extend_from_slice(&7i64.to_be_bytes());
        body.push(reply);
        body
    }

    fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        out.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    fn protocol_detail(result: Result<ReplicationEvent, ReplicationError>) -> String {
        match result {
            Err(ReplicationError::Protocol { detail, .. }) => detail,
            other => panic!("expected a protocol error, got {other:?}"),
        }
    }

    #[test]
    fn parses_xlog_data_without_copying_the_payload() {
        let body = Bytes::from(xlog_data(0x1_0000_0000, 0x1_0000_0010, b"walbytes"));
        let payload_ptr = body[XLOG_DATA_HEADER_BYTES..].as_ptr();
        let event = parse_copy_data(body).expect("valid XLogData");
        assert_eq!(event.wal_data_end(), Some(Lsn(0x1_0000_0008)));
        let ReplicationEvent::XLogData {
            wal_start,
            wal_end,
            send_time_us,
            data,
        } = event
        else {
            panic!("expected XLogData, got {event:?}");
        };
        assert_eq!(
            (wal_start, wal_end, send_time_us),
            (Lsn(0x1_0000_0000), Lsn(0x1_0000_0010), 42)
        );
        assert_eq!(&data[..], b"walbytes");
        assert_eq!(data.as_ptr(), payload_ptr);
    }

    #[test]
    fn parses_keepalive() {
        let event = parse_copy_data(Bytes::from(keepalive(0x5000, 1))).expect("valid keepalive");
        assert_eq!(
            event,
            ReplicationEvent::Keepalive {
                wal_end: Lsn(0x5000),
                send_time_us: 7,
                reply_requested: true
            }
        );
        assert_eq!(event.wal_data_end(), None);
    }

    #[test]
    fn refuses_malformed_copy_data() {
        assert!(protocol_detail(parse_copy_data(Bytes::new())).contains("empty"));
        let short = xlog_data(0, 0, b"")[..XLOG_DATA_HEADER_BYTES - 1].to_vec();
        assert!(
            protocol_detail(parse_copy_data(Bytes::from(short)))
                .contains("shorter than its 25-byte header")
        );
        let past_end = xlog_data(0x100, 0x101, b"ab");
        assert!(
            protocol_detail(parse_copy_data(Bytes::from(past_end))).contains("WAL end is 0/101")
        );
        let overflow = xlog_data(u64::MAX - 1, u64::MAX, b"abc");
        assert!(
            protocol_detail(parse_copy_data(Bytes::from(overflow))).contains("WAL address space")
        );
        let mut long_keepalive = keepalive(0, 0);
        long_keepalive.push(0);
        assert!(
            protocol_detail(parse_copy_data(Bytes::from(long_keepalive)))
                .contains("has 19 bytes, expected 18")
        );
        let short_keepalive = keepalive(0, 0)[..10].to_vec();
        assert!(
            protocol_detail(parse_copy_data(Bytes::from(short_keepalive))).contains("has 10 bytes")
        );
        assert!(
            protocol_detail(parse_copy_data(Bytes::from(keepalive(0, 2)))).contains("flag is 2")
        );
        assert!(protocol_detail(parse_copy_data(Bytes::from_static(b"q123"))).contains("kind 'q'"));
        assert!(
            protocol_detail(parse_copy_data(Bytes::from_static(b"\x01"))).contains("kind 0x01")
        );
    }

    #[test]
    fn frames_split_across_reads_and_batched_in_one_read() {
        let mut frames = FrameBuffer::new();
        let first = frame(b'd', &xlog_data(0x10, 0x20, b"0123456789abcdef"));
        let second = frame(b'd', &keepalive(0x20, 0));
        assert!(frames.take_frame("test").expect("no error").is_none());
        frames.push(&first[..3]);
        assert!(frames.take_frame("test").expect("no error").is_none());
        frames.push(&first[3..first.len() - 1]);
        assert!(frames.take_frame("test").expect("no error").is_none());
        let mut rest = first[first.len() - 1..].to_vec();
        rest.extend_from_slice(&second);
        frames.push(&rest);
        let a = frames
            .take_frame("test")
            .expect("no error")
            .expect("complete frame");
        let b = frames
            .take_frame("test")
            .expect("no error")
            .expect("complete frame");
        assert!(frames.take_frame("test").expect("no error").is_none());
        assert_eq!((a.tag, b.tag), (b'd', b'd'));
        assert_eq!(
            parse_copy_data(a.body).expect("valid").wal_data_end(),
            Some(Lsn(0x20))
        );
        assert!(matches!(
            parse_copy_data(b.body),
            Ok(ReplicationEvent::Keepalive { .. })
        ));
        assert_eq!(frames.filled, 0);
    }

    #[test]
    fn refuses_impossible_frame_lengths() {
        let mut frames = FrameBuffer::new();
        frames.push(&[b'd', 0, 0, 0, 3]);
        let Err(ReplicationError::Protocol { detail, .. }) = frames.take_frame("test") else {
            panic!("a length below 4 must be refused");
        };
        assert!(detail.contains("below the minimum of 4"), "{detail}");

        let mut frames = FrameBuffer::new();
        let too_long = (MAX_FRAME_BYTES as u32 + 5).to_be_bytes();
        frames.push(&[b'd', too_long[0], too_long[1], too_long[2], too_long[3]]);
        let Err(ReplicationError::Protocol { detail, .. }) = frames.take_frame("test") else {
            panic!("an oversized frame must be refused before it is buffered");
        };
        assert!(detail.contains("exceeds the limit"), "{detail}");

        // Exactly at the limit is allowed (and merely incomplete here).
        let mut frames = FrameBuffer::new();
        let at_limit = (MAX_FRAME_BYTES as u32 + 4).to_be_bytes();
        frames.push(&[b'd', at_limit[0], at_limit[1], at_limit[2], at_limit[3]]);
        assert!(
            frames
                .take_frame("test")
                .expect("within the limit")
                .is_none()
        );
    }

    #[test]
    fn encodes_standby_status_update() {
        let mut out = [0u8; STATUS_UPDATE_FRAME_BYTES];
        encode_status_update(&mut out, Lsn(0x1_0000_0030), Lsn(0x20), Lsn(0x10), -5, true);
        let mut expected = vec![b'd', 0, 0, 0, 38, b'r'];
        for value in [0x1_0000_0030u64, 0x20, 0x10] {
            expected.extend_from_slice(&value.to_be_bytes());
        }
        expected.extend_from_slice(&(-5i64).to_be_bytes());
        expected.push(1);
        assert_eq!(out.to_vec(), expected);
    }

    #[test]
    fn postgres_clock_counts_from_2000() {
        let now = postgres_epoch_now_us();
        // 2024-01-01 is 24 years after the Postgres epoch; 2100 is a century.
        assert!(now > 24 * 365 * 86_400 * 1_000_000, "{now}");
        assert!(now < 100 * 366 * 86_400 * 1_000_000, "{now}");
    }

    #[test]
    fn decodes_error_response_fields() {
        let mut body = Vec::new();
        for (kind, value) in [
            (b'S', "FATAL"),
            (b'V', "FATAL"),
            (b'C', "28000"),
            (b'M', "no pg_hba.conf entry"),
            (b'D', "why"),
        ] {
            body.push(kind);
            body.extend_from_slice(value.as_bytes());
            body.push(0);
        }
        body.push(0);
        let error = server_error(&body, "postgres refused the connection");
        assert_eq!(error.sqlstate(), Some("28000"));
        assert_eq!(
            error.to_string(),
            "postgres refused the connection: FATAL 28000 no pg_hba.conf entry (detail: why)"
        );
        // A truncated body keeps what was readable.
        let truncated = parse_server_error(&body[..body.len() - 8]);
        assert_eq!(truncated.code, "28000");
    }

    #[test]
    fn decodes_data_rows_and_refuses_truncated_ones() {
        let mut body = 3i16.to_be_bytes().to_vec();
        body.extend_from_slice(&2i32.to_be_bytes());
        body.extend_from_slice(b"ab");
        body.extend_from_slice(&(-1i32).to_be_bytes());
        body.extend_from_slice(&0i32.to_be_bytes());
        let row = Fields::new(&body, "test").data_row().expect("valid row");
        assert_eq!(row, vec![Some("ab".to_string()), None, Some(String::new())]);
        let err = Fields::new(&body[..5], "test")
            .data_row()
            .expect_err("truncated");
        assert!(
            err.to_string().contains("truncated in column length"),
            "{err}"
        );
    }

    #[test]
    fn parses_connection_strings() {
        let cfg = ReplicationConfig::parse(
            "host=127.0.0.1 port = 5433 user=postgres password='it''s' application_name=tarn_test",
        );
        // libpq has no '' escape: the quoted value ends at the second quote.
        assert!(cfg.is_err());

        let cfg = ReplicationConfig::parse(
            "  host=127.0.0.1 port = 5433 user=postgres password='a \\'b\\' c\\\\' \
             dbname=replication application_name=tarn_test  ",
        )
        .expect("valid connection string");
        assert_eq!(
            cfg,
            ReplicationConfig {
                host: "127.0.0.1".into(),
                port: 5433,
                user: "postgres".into(),
                password: Some("a 'b' c\\".into()),
                dbname: Some("replication".into()),
                application_name: "tarn_test".into(),
            }
        );
        assert!(
            !format!("{cfg:?}").contains("a 'b'"),
            "Debug must redact the password"
        );
        assert_eq!(cfg.address(), "127.0.0.1:5433");

        let cfg = ReplicationConfig::parse(
            "host=/var/run/postgresql/ user=u application_name=a password=''",
        )
        .expect("valid connection string");
        assert_eq!(cfg.port, DEFAULT_PORT);
        assert_eq!(cfg.password.as_deref(), Some(""));
        assert_eq!(
            cfg.unix_socket_path().as_deref(),
            Some("/var/run/postgresql/.s.PGSQL.5432")
        );

        let cfg = ReplicationConfig::parse("host=h user=a\\ b application_name=x")
            .expect("escaped space");
        assert_eq!(cfg.user, "a b");
    }

    #[test]
    fn refuses_bad_connection_strings() {
        let detail = |connstr: &str| match ReplicationConfig::parse(connstr) {
            Err(ReplicationError::InvalidConnString { detail }) => detail,
            other => panic!("{connstr:?} should be refused, got {other:?}"),
        };
        let base = "host=h user=u application_name=a";
        assert!(detail(&format!("{base} sslmode=require")).contains("unknown key \"sslmode\""));
        assert!(detail(&format!("{base} user=v")).contains("more than once"));
        assert!(detail("user=u application_name=a").contains("missing required key \"host\""));
        assert!(detail("host=h application_name=a").contains("\"user\""));
        assert!(detail("host=h user=u").contains("\"application_name\""));
        assert!(detail(&format!("{base} port=0")).contains("port \"0\""));
        assert!(detail(&format!("{base} port=70000")).contains("port \"70000\""));
        assert!(detail(&format!("{base} port")).contains("missing \"=\""));
        assert!(detail(&format!("{base} =x")).contains("no key"));
        assert!(detail(&format!("{base} password='abc")).contains("unterminated"));
        assert!(detail(&format!("{base} password=abc\\")).contains("trailing backslash"));
        assert!(detail(&format!("{base} password='a'dbname=x")).contains("whitespace after"));
        assert!(detail("postgresql://u@h/db").contains("URIs"));
    }

    #[test]
    fn reader_and_writer_refuse_use_after_failure() {
        let (ours, theirs) = UnixStream::pair().expect("socketpair");
        let mut reader = ReplicationReader {
            socket: Socket::Unix(ours),
            frames: FrameBuffer::new(),
            ended: None,
            broken: false,
        };
        let mut theirs = theirs;
        theirs.write_all(&frame(b'd', b"")).expect("write");
        assert!(matches!(
            reader.recv(Duration::from_secs(5)),
            Err(ReplicationError::Protocol { .. })
        ));
        assert!(matches!(
            reader.recv(Duration::from_secs(5)),
            Err(ReplicationError::Broken { half: "reader" })
        ));
    }

    #[test]
    fn reader_times_out_then_receives_then_ends() {
        let (ours, mut theirs) = UnixStream::pair().expect("socketpair");
        let mut reader = ReplicationReader {
            socket: Socket::Unix(ours),
            frames: FrameBuffer::new(),
            ended: None,
            broken: false,
        };
        assert_eq!(
            reader
                .recv(Duration::from_millis(20))
                .expect("timeout is not an error"),
            ReplicationEvent::Timeout
        );
        let mut wire = frame(b'd', &xlog_data(0x100, 0x104, b"abcd"));
        wire.extend_from_slice(&frame(b'N', b"SNOTICE\0Mhello\0\0"));
        wire.extend_from_slice(&frame(b'c', b""));
        // Half a frame first: the reader must keep it across a timeout.
        theirs.write_all(&wire[..7]).expect("write");
        assert_eq!(
            reader
                .recv(Duration::from_millis(20))
                .expect("partial frame"),
            ReplicationEvent::Timeout
        );
        theirs.write_all(&wire[7..]).expect("write");
        let event = reader.recv(Duration::from_secs(5)).expect("XLogData");
        assert_eq!(event.wal_data_end(), Some(Lsn(0x104)));
        for _ in 0..2 {
            assert_eq!(
                reader.recv(Duration::from_secs(5)).expect("end of stream"),
                ReplicationEvent::EndOfStream {
                    reason: StreamEnd::CopyDone
                }
            );
        }
    }

    #[test]
    fn reader_reports_server_errors_and_closed_connections() {
        let (ours, mut theirs) = UnixStream::pair().expect("socketpair");
        let mut reader = ReplicationReader {
            socket: Socket::Unix(ours),
            frames: FrameBuffer::new(),
            ended: None,
            broken: false,
        };
        theirs
            .write_all(&frame(
                b'E',
                b"SFATAL\0VFATAL\0C57P01\0Mterminating connection\0\0",
            ))
            .expect("write");
        let err = reader
            .recv(Duration::from_secs(5))
            .expect_err("server error");
        assert_eq!(err.sqlstate(), Some("57P01"));

        let (ours, theirs) = UnixStream::pair().expect("socketpair");
        let mut reader = ReplicationReader {
            socket: Socket::Unix(ours),
            frames: FrameBuffer::new(),
            ended: None,
            broken: false,
        };
        drop(theirs);
        assert!(matches!(
            reader.recv(Duration::from_secs(5)),
            Err(ReplicationError::ConnectionClosed { .. })
        ));
    }

    #[test]
    fn writer_sends_status_updates() {
        let (ours, mut theirs) = UnixStream::pair().expect("socketpair");
        let mut writer = ReplicationWriter {
            socket: Socket::Unix(ours),
            timeout: Duration::from_secs(5),
            frame: [0; STATUS_UPDATE_FRAME_BYTES],
            broken: false,
        };
        writer
            .send_status(Lsn(3), Lsn(2), Lsn(1), false)
            .expect("send");
        let mut wire = [0u8; STATUS_UPDATE_FRAME_BYTES];
        theirs.read_exact(&mut wire).expect("read");
        assert_eq!(&wire[..6], &[b'd', 0, 0, 0, 38, b'r']);
        assert_eq!(&wire[6..14], &3u64.to_be_bytes());
        assert_eq!(&wire[14..22], &2u64.to_be_bytes());
        assert_eq!(&wire[22..30], &1u64.to_be_bytes());
        assert_eq!(wire[38], 0);
    }

    #[test]
    fn writer_times_out_when_postgres_stops_reading_and_then_refuses() {
        let (ours, _theirs) = UnixStream::pair().expect("socketpair");
        let timeout = Duration::from_millis(20);
        ours.set_write_timeout(Some(timeout)).expect("timeout");
        let mut writer = ReplicationWriter {
            socket: Socket::Unix(ours),
            timeout,
            frame: [0; STATUS_UPDATE_FRAME_BYTES],
            broken: false,
        };
        // The peer never reads, so the socket buffer fills within this many sends.
        let max_sends = 1_000_000;
        let error = (0..max_sends)
            .find_map(|_| writer.send_status(Lsn(1), Lsn(1), Lsn(1), false).err())
            .expect("the socket buffer must fill up");
        assert!(matches!(error, ReplicationError::Timeout { .. }), "{error}");
        assert!(matches!(
            writer.send_status(Lsn(1), Lsn(1), Lsn(1), false),
            Err(ReplicationError::Broken { half: "writer" })
        ));
    }
}
