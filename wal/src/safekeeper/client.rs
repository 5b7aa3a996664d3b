//! Operator queries against a running safekeeper (used by `tarn status`).

use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::protocol::blocking::{FrameReadError, read_safekeeper_message, write_proposer_message};
use crate::protocol::{ProposerMessage, SafekeeperMessage, StatusReply};

/// What a safekeeper reports about itself and its timelines.
pub type SafekeeperStatus = StatusReply;

#[derive(Debug, thiserror::Error)]
pub enum StatusQueryError {
    #[error("cannot connect to safekeeper at {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("safekeeper at {addr} did not answer: {source}")]
    Io {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("safekeeper at {addr} answered badly: {source}")]
    Frame {
        addr: SocketAddr,
        source: FrameReadError,
    },
    #[error("safekeeper at {addr} answered the status query with {answer}")]
    Unexpected { addr: SocketAddr, answer: String },
}

pub fn query_status(
    addr: SocketAddr,
    timeout: Duration,
) -> Result<SafekeeperStatus, StatusQueryError> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)
        .map_err(|source| StatusQueryError::Connect { addr, source })?;
    let io = |source| StatusQueryError::Io { addr, source };
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    write_proposer_message(&mut stream, &ProposerMessage::Status).map_err(io)?;
    match read_safekeeper_message(&mut stream)
        .map_err(|source| StatusQueryError::Frame { addr, source })?
    {
        SafekeeperMessage::Status(s) => Ok(s),
        other => Err(StatusQueryError::Unexpected {
            addr,
            answer: format!("{other:?}"),
        }),
    }
}
