//! Free loopback ports, for programs that cannot report the port the OS gave them.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};

/// A TCP port on 127.0.0.1 that was free a moment ago.
///
/// Prefer binding `127.0.0.1:0` and reading the address back wherever the program under test allows
/// it; this probe is for external programs (Prometheus, nginx) that must be given a port. Another
/// process may take the port before the program binds it, so callers that can retry should.
pub fn free_port() -> std::io::Result<u16> {
    let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?;
    Ok(listener.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_port_can_be_bound_on_loopback() {
        let port = free_port().unwrap();
        assert_ne!(port, 0);
        TcpListener::bind(("127.0.0.1", port)).expect("the probed port should still be free");
    }
}
