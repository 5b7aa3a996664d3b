//! Reading and writing protocol frames over blocking `std::io` streams (the proposer,
//! operator queries and load generators use threads and blocking sockets).

use std::io::{self, Read, Write};

use bytes::{Bytes, BytesMut};

use super::{
    FRAME_HEADER_BYTES, ProposerMessage, ProtocolError, SafekeeperMessage, decode_frame_header,
    decode_proposer_message, decode_safekeeper_message, encode_proposer_message,
    encode_safekeeper_message,
};

#[derive(Debug, thiserror::Error)]
pub enum FrameReadError {
    #[error("connection closed by peer")]
    Closed,
    #[error("reading a frame failed: {0}")]
    Io(#[from] io::Error),
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
}

/// Reads one frame: `Ok(None)` if the stream ended cleanly before a frame began.
fn read_frame(r: &mut impl Read) -> Result<(u8, Bytes), FrameReadError> {
    let mut header = [0u8; FRAME_HEADER_BYTES];
    let mut got = 0;
    while got < header.len() {
        match r.read(&mut header[got..]) {
            Ok(0) if got == 0 => return Err(FrameReadError::Closed),
            Ok(0) => {
                return Err(FrameReadError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed inside a frame header",
                )));
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let h = decode_frame_header(&header)?;
    let mut body = BytesMut::zeroed(h.body_len);
    r.read_exact(&mut body).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("connection closed inside a {}-byte frame body", h.body_len),
            )
        } else {
            e
        }
    })?;
    Ok((h.kind, body.freeze()))
}

pub fn read_safekeeper_message(r: &mut impl Read) -> Result<SafekeeperMessage, FrameReadError> {
    let (kind, body) = read_frame(r)?;
    Ok(decode_safekeeper_message(kind, body)?)
}

pub fn read_proposer_message(r: &mut impl Read) -> Result<ProposerMessage, FrameReadError> {
    let (kind, body) = read_frame(r)?;
    Ok(decode_proposer_message(kind, body)?)
}

pub fn write_proposer_message(w: &mut impl Write, msg: &ProposerMessage) -> io::Result<()> {
    w.write_all(&encode_proposer_message(msg))
}

pub fn write_safekeeper_message(w: &mut impl Write, msg: &SafekeeperMessage) -> io::Result<()> {
    w.write_all(&encode_safekeeper_message(msg))
}
