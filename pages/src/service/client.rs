//! A blocking client of the GetPage@LSN service (the `tarn getpage` CLI, `tarn status`
//! and tests). Requests may be pipelined with [`PageserverClient::send`] and
//! [`PageserverClient::receive`]; [`PageserverClient::call`] does one round trip.

use std::io::{self, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use tarn_wal::TimelineId;

use super::protocol::{
    Request, Response, ServiceProtocolError, TimelineInfo, encode_request, read_response,
};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to the pageserver at {addr}: {source}")]
    Connect { addr: SocketAddr, source: io::Error },
    #[error("sending to the pageserver failed: {0}")]
    Send(io::Error),
    #[error("the pageserver's answer is bad: {0}")]
    Receive(#[from] ServiceProtocolError),
    #[error("the pageserver answered {request} with {answer}")]
    Unexpected {
        request: &'static str,
        answer: String,
    },
    #[error("{0}")]
    NoDefaultTimeline(String),
    #[error("writing what the pageserver sent failed: {0}")]
    Output(io::Error),
}

pub struct PageserverClient {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl PageserverClient {
    /// Connects; every later read and write fails after `timeout` without progress.
    pub fn connect(addr: SocketAddr, timeout: Duration) -> Result<PageserverClient, ClientError> {
        let connect = |source| ClientError::Connect { addr, source };
        let stream = TcpStream::connect_timeout(&addr, timeout).map_err(connect)?;
        stream.set_read_timeout(Some(timeout)).map_err(connect)?;
        stream.set_write_timeout(Some(timeout)).map_err(connect)?;
        let _ = stream.set_nodelay(true);
        let writer = stream.try_clone().map_err(connect)?;
        Ok(PageserverClient {
            reader: BufReader::new(stream),
            writer,
        })
    }

    pub fn send(&mut self, request: &Request) -> Result<(), ClientError> {
        self.writer
            .write_all(&encode_request(request))
            .map_err(ClientError::Send)
    }

    /// Sends raw bytes (for tests of malformed input).
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.writer.write_all(bytes).map_err(ClientError::Send)
    }

    pub fn receive(&mut self) -> Result<Response, ClientError> {
        Ok(read_response(&mut self.reader)?)
    }

    pub fn call(&mut self, request: &Request) -> Result<Response, ClientError> {
        self.send(request)?;
        self.receive()
    }

    /// Streams the basebackup of `timeline` at `lsn` (`Lsn::INVALID`: the newest
    /// ingested) into `out`. Returns the final answer: `BasebackupDone` with the
    /// backup's LSN, or the error the pageserver gave.
    pub fn basebackup(
        &mut self,
        timeline: TimelineId,
        lsn: tarn_wal::Lsn,
        out: &mut dyn Write,
    ) -> Result<Response, ClientError> {
        self.send(&Request::Basebackup { timeline, lsn })?;
        loop {
            match self.receive()? {
                Response::BasebackupChunk(bytes) => {
                    out.write_all(&bytes).map_err(ClientError::Output)?
                }
                last => return Ok(last),
            }
        }
    }

    /// Every timeline the pageserver serves.
    pub fn list_timelines(&mut self) -> Result<Vec<TimelineInfo>, ClientError> {
        match self.call(&Request::ListTimelines)? {
            Response::Timelines(timelines) => Ok(timelines),
            other => Err(ClientError::Unexpected {
                request: "ListTimelines",
                answer: format!("{other:?}"),
            }),
        }
    }

    /// `timeline` if given, else the pageserver's only timeline that is not a branch
    /// (what debugging tools read when not told otherwise).
    pub fn timeline_or_default(
        &mut self,
        timeline: Option<TimelineId>,
    ) -> Result<TimelineId, ClientError> {
        if let Some(timeline) = timeline {
            return Ok(timeline);
        }
        let roots: Vec<TimelineId> = self
            .list_timelines()?
            .into_iter()
            .filter(|t| t.ancestor.is_none())
            .map(|t| t.id)
            .collect();
        match roots[..] {
            [only] => Ok(only),
            [] => Err(ClientError::NoDefaultTimeline(
                "the pageserver serves no timeline".into(),
            )),
            _ => Err(ClientError::NoDefaultTimeline(format!(
                "the pageserver serves {} root timelines; name one with --timeline",
                roots.len()
            ))),
        }
    }
}
