//! A blocking client of the GetPage@LSN service (the `tarn getpage` CLI, `tarn status`
//! and tests). Requests may be pipelined with [`PageserverClient::send`] and
//! [`PageserverClient::receive`]; [`PageserverClient::call`] does one round trip.

use std::io::{self, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use super::protocol::{Request, Response, ServiceProtocolError, encode_request, read_response};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to the pageserver at {addr}: {source}")]
    Connect { addr: SocketAddr, source: io::Error },
    #[error("sending to the pageserver failed: {0}")]
    Send(io::Error),
    #[error("the pageserver's answer is bad: {0}")]
    Receive(#[from] ServiceProtocolError),
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
}
