//! A minimal PostgreSQL client for tests: one connection speaking the simple-query
//! protocol over TCP with trust authentication (what `initdb -A trust` sets up), with
//! a bound on every wait.
//!
//! Tests need what `psql` cannot give cheaply: many commits per second from one
//! process, a commit whose wait can time out and then be resumed on the same
//! connection (to watch a commit block in `SyncRep` and later complete), and the
//! backend's pid. A query is [`SqlConnection::send_query`] then
//! [`SqlConnection::finish_query`]; a timed-out `finish_query` keeps what it has read,
//! so calling it again continues the same query.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::time::{Duration, Instant};

/// Protocol version 3.0, as sent in the startup message.
const PROTOCOL_VERSION_3: i32 = 196_608;
/// Largest backend message accepted; test queries return small results.
const MAX_MESSAGE_BYTES: usize = 64 << 20;
/// Bytes asked of the socket per read.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// One row: each column as text, `None` for NULL.
pub type Row = Vec<Option<String>>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SqlError {
    /// The wait passed its bound; the query (if any) is still running and
    /// [`SqlConnection::finish_query`] may be called again.
    Timeout,
    /// The server reported an error (`SQLSTATE: message`); the connection is usable.
    Server(String),
    /// The connection failed or the server broke the protocol; it is unusable.
    Connection(String),
}

impl std::fmt::Display for SqlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SqlError::Timeout => write!(f, "timed out"),
            SqlError::Server(message) => write!(f, "server error: {message}"),
            SqlError::Connection(message) => write!(f, "connection error: {message}"),
        }
    }
}

impl std::error::Error for SqlError {}

/// A query sent and not yet answered with ReadyForQuery.
#[derive(Debug, Default)]
struct PendingQuery {
    rows: Vec<Row>,
    error: Option<String>,
}

pub struct SqlConnection {
    stream: TcpStream,
    /// Bytes received and not yet parsed into messages.
    received: Vec<u8>,
    backend_pid: i32,
    pending: Option<PendingQuery>,
}

impl SqlConnection {
    /// Connects to `127.0.0.1:port` as `postgres` to database `postgres`.
    pub fn connect(
        port: u16,
        application_name: &str,
        timeout: Duration,
    ) -> Result<SqlConnection, SqlError> {
        let deadline = Instant::now() + timeout;
        let addr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port));
        let stream = TcpStream::connect_timeout(&addr, timeout)
            .map_err(|error| SqlError::Connection(format!("cannot connect to {addr}: {error}")))?;
        stream
            .set_nodelay(true)
            .map_err(|error| SqlError::Connection(error.to_string()))?;
        let mut connection = SqlConnection {
            stream,
            received: Vec::new(),
            backend_pid: 0,
            pending: None,
        };
        let mut body = Vec::new();
        body.extend_from_slice(&PROTOCOL_VERSION_3.to_be_bytes());
        for (key, value) in [
            ("user", "postgres"),
            ("database", "postgres"),
            ("application_name", application_name),
        ] {
            body.extend_from_slice(key.as_bytes());
            body.push(0);
            body.extend_from_slice(value.as_bytes());
            body.push(0);
        }
        body.push(0);
        let mut startup = ((body.len() + 4) as i32).to_be_bytes().to_vec();
        startup.extend_from_slice(&body);
        connection.write(&startup)?;
        loop {
            let (tag, payload) = connection.next_message(deadline)?;
            match tag {
                b'R' => {
                    let code = be_i32(&payload, 0)?;
                    if code != 0 {
                        return Err(SqlError::Connection(format!(
                            "authentication method {code} is not supported (trust only)"
                        )));
                    }
                }
                b'K' => connection.backend_pid = be_i32(&payload, 0)?,
                b'E' => return Err(SqlError::Connection(error_text(&payload))),
                b'Z' => return Ok(connection),
                _ => {}
            }
        }
    }

    /// The pid of the server process serving this connection (`pg_backend_pid()`).
    pub fn backend_pid(&self) -> i32 {
        self.backend_pid
    }

    /// Runs `sql` (one or more statements) and returns the rows of its results.
    pub fn query(&mut self, sql: &str, timeout: Duration) -> Result<Vec<Row>, SqlError> {
        self.send_query(sql)?;
        self.finish_query(timeout)
    }

    /// Runs `sql` and returns its only value (first column of the first row).
    pub fn query_value(&mut self, sql: &str, timeout: Duration) -> Result<String, SqlError> {
        let rows = self.query(sql, timeout)?;
        rows.into_iter()
            .next()
            .and_then(|row| row.into_iter().next().flatten())
            .ok_or_else(|| SqlError::Server(format!("{sql:?} returned no value")))
    }

    /// Sends `sql` without waiting for its result.
    pub fn send_query(&mut self, sql: &str) -> Result<(), SqlError> {
        assert!(
            self.pending.is_none(),
            "a query is already in flight on this connection"
        );
        assert!(!sql.contains('\0'), "SQL text cannot contain NUL");
        let mut message = vec![b'Q'];
        message.extend_from_slice(&((sql.len() + 5) as i32).to_be_bytes());
        message.extend_from_slice(sql.as_bytes());
        message.push(0);
        self.write(&message)?;
        self.pending = Some(PendingQuery::default());
        Ok(())
    }

    /// Waits up to `timeout` for the query in flight to finish. On
    /// [`SqlError::Timeout`] the query stays in flight.
    pub fn finish_query(&mut self, timeout: Duration) -> Result<Vec<Row>, SqlError> {
        let deadline = Instant::now() + timeout;
        assert!(
            self.pending.is_some(),
            "finish_query needs a query in flight (send_query)"
        );
        loop {
            let (tag, payload) = self.next_message(deadline)?;
            let pending = self.pending.get_or_insert_with(PendingQuery::default);
            match tag {
                b'D' => pending.rows.push(parse_data_row(&payload)?),
                b'E' => pending.error = Some(error_text(&payload)),
                b'Z' => {
                    let done = self.pending.take().unwrap_or_default();
                    return match done.error {
                        Some(error) => Err(SqlError::Server(error)),
                        None => Ok(done.rows),
                    };
                }
                // RowDescription, CommandComplete, EmptyQueryResponse, notices,
                // parameter status and notifications carry nothing tests use.
                _ => {}
            }
        }
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), SqlError> {
        self.stream
            .write_all(bytes)
            .map_err(|error| SqlError::Connection(format!("cannot send: {error}")))
    }

    /// The next complete backend message, reading until `deadline`.
    fn next_message(&mut self, deadline: Instant) -> Result<(u8, Vec<u8>), SqlError> {
        let mut chunk = vec![0u8; READ_CHUNK_BYTES];
        loop {
            if self.received.len() >= 5 {
                let length = be_i32(&self.received, 1)?;
                let length = usize::try_from(length)
                    .ok()
                    .filter(|length| (4..=MAX_MESSAGE_BYTES).contains(length))
                    .ok_or_else(|| {
                        SqlError::Connection(format!("backend message length {length}"))
                    })?;
                if self.received.len() > length {
                    let tag = self.received[0];
                    let payload = self.received[5..1 + length].to_vec();
                    self.received.drain(..1 + length);
                    return Ok((tag, payload));
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(SqlError::Timeout);
            }
            self.stream
                .set_read_timeout(Some(left))
                .map_err(|error| SqlError::Connection(error.to_string()))?;
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(SqlError::Connection("closed by the server".into())),
                Ok(n) => self.received.extend_from_slice(&chunk[..n]),
                Err(error)
                    if matches!(
                        error.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(SqlError::Connection(format!("cannot read: {error}"))),
            }
        }
    }
}

fn be_i32(bytes: &[u8], at: usize) -> Result<i32, SqlError> {
    bytes
        .get(at..at + 4)
        .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or_else(|| SqlError::Connection("truncated backend message".into()))
}

fn parse_data_row(payload: &[u8]) -> Result<Row, SqlError> {
    let truncated = || SqlError::Connection("truncated DataRow".into());
    let columns = payload
        .get(..2)
        .map(|b| u16::from_be_bytes([b[0], b[1]]))
        .ok_or_else(truncated)?;
    let mut at = 2;
    let mut row = Vec::with_capacity(usize::from(columns));
    for _ in 0..columns {
        let length = be_i32(payload, at)?;
        at += 4;
        if length < 0 {
            row.push(None);
            continue;
        }
        let end = at + length as usize;
        let value = payload.get(at..end).ok_or_else(truncated)?;
        row.push(Some(String::from_utf8_lossy(value).into_owned()));
        at = end;
    }
    Ok(row)
}

/// `SQLSTATE: message` from an ErrorResponse's fields.
fn error_text(payload: &[u8]) -> String {
    let mut code = "";
    let mut message = "";
    for field in payload.split(|byte| *byte == 0) {
        let Some((&kind, text)) = field.split_first() else {
            continue;
        };
        let text = std::str::from_utf8(text).unwrap_or("?");
        match kind {
            b'C' => code = text,
            b'M' => message = text,
            _ => {}
        }
    }
    format!("{code}: {message}")
}
