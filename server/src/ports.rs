//! Checks on local TCP ports: is one free to listen on, has a component started
//! listening on its own.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::time::Duration;

use crate::os;

/// True if nothing listens on 127.0.0.1:`port` (or on the wildcard address with that
/// port): binding it succeeds. The probe socket is closed before returning.
pub fn port_is_free(port: u16) -> io::Result<bool> {
    match TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)) {
        Ok(_listener) => Ok(true),
        Err(error) if error.kind() == io::ErrorKind::AddrInUse => Ok(false),
        Err(error) => Err(error),
    }
}

/// Connect timeout for the active probe used when /proc cannot answer.
const PROBE_CONNECT_TIMEOUT: Duration = Duration::from_millis(200);

/// True once something listens on `addr`. Asks the kernel passively when it can (a
/// connection would be a protocol peer to the listener); otherwise tries to connect.
pub fn is_listening(addr: SocketAddrV4) -> bool {
    match os::tcp_listener_exists(addr) {
        Some(listening) => listening,
        None => TcpStream::connect_timeout(&addr.into(), PROBE_CONNECT_TIMEOUT).is_ok(),
    }
}
