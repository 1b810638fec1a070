//! The per-core listeners: one `SO_REUSEPORT` socket per core on one
//! concrete port, so the kernel spreads connections over the cores.

use std::io;
use std::net::SocketAddr;

/// Resolves port 0 to one concrete port, and refuses an address another
/// process already listens on (`io::ErrorKind::AddrInUse`): `SO_REUSEPORT`
/// would otherwise let us bind beside it and silently split its traffic.
/// The probe socket has no `SO_REUSEPORT`, so any listener on the port
/// makes it fail.
pub fn resolve(listen: SocketAddr) -> io::Result<SocketAddr> {
    std::net::TcpListener::bind(listen)?.local_addr()
}

/// Binds one core's listener on `address`.
pub fn bind_reuseport(address: SocketAddr, backlog: i32, nonblocking: bool) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(address), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&address.into())?;
    socket.listen(backlog)?;
    // The epoll driver needs non-blocking sockets; io_uring arms its own wait.
    socket.set_nonblocking(nonblocking)?;
    Ok(socket.into())
}
