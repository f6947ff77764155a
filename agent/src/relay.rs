//! One port relay (issue 20): a TCP connection the agent opened to `127.0.0.1:PORT` inside
//! the sandbox on the server's behalf, carried over the agent's pipes like an execution.
//!
//! The server sees it as an execution without a process: the socket's bytes come back as
//! `Output(Stdout)` frames under the execution's output window (so a slow HTTP client stops the
//! agent reading the socket, and the application then blocks in `send`), bytes for the
//! application arrive as `Stdin` frames and are acknowledged by `StdinWritten` as the socket
//! takes them (so the server bounds what is in flight), `CloseStdin` half-closes the socket and
//! a signal closes it. It ends (`Exited` with code 0, or the signal) once the application
//! closed its side, or the socket failed.
//!
//! The connection goes to loopback only, which exists in every sandbox (`--network=none`
//! included): nothing here opens a route out of the sandbox.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, Shutdown, SocketAddrV4, SocketAddrV6, TcpStream};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{
    connect, getsockopt, socket, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn,
    SockaddrIn6,
};

use crate::protocol::{
    ExecId, ExitStatus, FromAgent, Stream, MAX_OUTPUT_CHUNK_BYTES, OUTPUT_WINDOW_BYTES,
};

/// How long a connection may take to be accepted. The connect does not block the agent's
/// loop: a listener whose backlog is full (50 browsers at once on `python3 -m http.server`,
/// whose backlog is 5) drops the SYN, which is sent again after 1, 2, 4, 8 and 16 s, so the
/// connection is accepted when it catches up (as a browser's would be).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(32);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    /// The connect is under way, since then.
    Connecting {
        since: Instant,
    },
    Open,
    /// The connection could not be made (`SpawnFailed` was sent): to be forgotten.
    Failed,
}

/// A send this small goes out in one segment (loopback's MTU is 64 KiB, in gVisor as in Linux).
const ONE_SEGMENT_BYTES: usize = 8 * 1024;

/// Written bytes leave the buffer in batches (as an execution's stdin).
const COMPACT_AFTER: usize = 1024 * 1024;

/// What a relay starts from (see [`crate::warm`]).
pub enum Ahead {
    /// A connection opened to the port ahead of the relay (whether its connect is done, and
    /// whether it is over IPv6).
    Warm {
        socket: TcpStream,
        connected: bool,
        v6: bool,
    },
    /// A socket made ahead, to connect.
    Spare(OwnedFd),
    Nothing,
}

pub struct Relay {
    id: ExecId,
    port: u16,
    /// Connected (or connecting) over IPv6: nothing listened on 127.0.0.1.
    v6: bool,
    link: Link,
    /// `None` once closed (by a signal from the server: reset at once).
    socket: Option<TcpStream>,
    /// Bytes for the application, from `written` on.
    pending: Vec<u8>,
    written: usize,
    /// Some bytes went to the application already, and whether `TCP_NODELAY` is set (see
    /// `write`).
    sent_any: bool,
    nodelay: bool,
    /// The server closed its direction: shut the socket's write side once `pending` is out.
    shutdown_when_flushed: bool,
    write_closed: bool,
    read_closed: bool,
    /// Closed by a signal from the server.
    killed: Option<i32>,
    window: u64,
}

impl Relay {
    /// Start a relay to `port` on loopback from what was made ahead for it: a warm connection
    /// (see [`crate::warm`]), else a connect through the spare socket, then IPv6 for an
    /// application bound to `::1` only. `Started` or `SpawnFailed` goes to `outbox` once the
    /// connection is accepted or refused (at once, or when the socket polls writable:
    /// `on_writable`).
    pub fn connect(
        id: ExecId,
        port: u16,
        ahead: Ahead,
        outbox: &mut Vec<u8>,
    ) -> Result<Self, String> {
        let refused = |error: &io::Error| error.raw_os_error() == Some(libc::ECONNREFUSED);
        let spare = match ahead {
            Ahead::Warm {
                socket,
                connected,
                v6,
            } => return Ok(Relay::new(id, port, socket, connected, v6, outbox)),
            Ahead::Spare(spare) => Some(spare),
            Ahead::Nothing => None,
        };
        let (socket, connected, v6) = match start_connect(port, false, spare) {
            Ok((socket, connected)) => (socket, connected, false),
            // Nothing on 127.0.0.1: perhaps an application bound to ::1 only.
            Err(error) if refused(&error) => start_connect(port, true, None)
                .map(|(socket, connected)| (socket, connected, true))
                .map_err(|_| error)
                .map_err(|error| {
                    format!("cannot connect to port {port} inside the sandbox: {error}")
                })?,
            Err(error) => {
                return Err(format!(
                    "cannot connect to port {port} inside the sandbox: {error}"
                ))
            }
        };
        Ok(Relay::new(id, port, socket, connected, v6, outbox))
    }

    fn new(
        id: ExecId,
        port: u16,
        socket: TcpStream,
        connected: bool,
        v6: bool,
        outbox: &mut Vec<u8>,
    ) -> Self {
        let mut relay = Relay {
            id,
            port,
            v6,
            link: Link::Connecting {
                since: Instant::now(),
            },
            socket: Some(socket),
            pending: Vec::new(),
            written: 0,
            sent_any: false,
            nodelay: false,
            shutdown_when_flushed: false,
            write_closed: false,
            read_closed: false,
            killed: None,
            window: u64::from(OUTPUT_WINDOW_BYTES),
        };
        if connected {
            relay.opened(outbox);
        }
        relay
    }

    fn opened(&mut self, outbox: &mut Vec<u8>) {
        self.link = Link::Open;
        FromAgent::Started(self.id).encode(outbox);
        self.write(outbox);
    }

    fn fail(&mut self, why: &str, outbox: &mut Vec<u8>) {
        self.link = Link::Failed;
        let message = format!(
            "cannot connect to port {} inside the sandbox: {why}",
            self.port
        );
        FromAgent::SpawnFailed(self.id, message).encode(outbox);
    }

    /// Where a warm connection may go after this relay (see [`crate::warm`]): its port, and
    /// whether over IPv6. None when the server closed it (a client gone, a timeout, a
    /// checkpoint coming): only a connection the application ended is followed by another.
    pub fn warm_destination(&self) -> Option<(u16, bool)> {
        self.killed.is_none().then_some((self.port, self.v6))
    }

    /// Whether `SpawnFailed` was sent: the relay is to be forgotten without `Exited`.
    pub fn failed(&self) -> bool {
        self.link == Link::Failed
    }

    fn connecting_since(&self) -> Option<Instant> {
        match self.link {
            Link::Connecting { since } => Some(since),
            _ => None,
        }
    }

    /// The socket polled writable (`error_reported`: with `POLLERR` or `POLLHUP`): a connect
    /// under way is done (accepted or refused), or bytes can go out.
    pub fn on_writable(&mut self, error_reported: bool, outbox: &mut Vec<u8>) {
        if self.connecting_since().is_none() {
            return self.write(outbox);
        }
        let v6 = self.v6;
        let Some(socket) = &self.socket else {
            return;
        };
        // Writable without an error is a connection made: asking for `SO_ERROR` then would
        // cost a system call (~50-100 us under gVisor's ptrace platform) to hear 0.
        if !error_reported {
            return self.opened(outbox);
        }
        match getsockopt(socket, sockopt::SocketError) {
            Ok(0) => self.opened(outbox),
            Ok(code) if !v6 && code == Errno::ECONNREFUSED as i32 => {
                // Nothing on 127.0.0.1: perhaps an application bound to ::1 only.
                match start_connect(self.port, true, None) {
                    Ok((socket, connected)) => {
                        self.socket = Some(socket);
                        self.v6 = true;
                        self.link = Link::Connecting {
                            since: Instant::now(),
                        };
                        if connected {
                            self.opened(outbox);
                        }
                    }
                    Err(_) => self.fail(&Errno::from_raw(code).desc().to_lowercase(), outbox),
                }
            }
            Ok(code) => {
                let why = if v6 && code == Errno::ECONNREFUSED as i32 {
                    "connection refused (nothing listens on 127.0.0.1 or ::1)".to_string()
                } else {
                    Errno::from_raw(code).desc().to_lowercase()
                };
                self.fail(&why, outbox)
            }
            Err(error) => self.fail(&error.desc().to_lowercase(), outbox),
        }
    }

    /// A connect that takes longer than [`CONNECT_TIMEOUT`] fails. Whether one is still under
    /// way (the agent's loop then wakes up to check again).
    pub fn check_connect_timeout(&mut self, outbox: &mut Vec<u8>) -> bool {
        match self.connecting_since() {
            Some(since) if since.elapsed() > CONNECT_TIMEOUT => {
                let why = format!("not accepted within {} s", CONNECT_TIMEOUT.as_secs());
                self.fail(&why, outbox);
                false
            }
            Some(_) => true,
            None => false,
        }
    }

    /// The socket, to poll for reading while the window is open and the read side is not done.
    pub fn read_fd(&self) -> Option<BorrowedFd<'_>> {
        (self.link == Link::Open && !self.read_closed && self.window > 0)
            .then_some(())
            .and(self.socket.as_ref())
            .map(|socket| socket.as_fd())
    }

    /// The socket, to poll for writing while connecting, or while bytes wait for it.
    pub fn write_fd(&self) -> Option<BorrowedFd<'_>> {
        let waiting =
            self.link == Link::Open && !self.write_closed && self.written < self.pending.len();
        (waiting || self.connecting_since().is_some())
            .then_some(())
            .and(self.socket.as_ref())
            .map(|socket| socket.as_fd())
    }

    pub fn add_credit(&mut self, bytes: u32) {
        self.window = self.window.saturating_add(u64::from(bytes));
    }

    pub fn reset_window(&mut self) {
        self.window = u64::from(OUTPUT_WINDOW_BYTES);
    }

    /// Bytes for the application. Once its side is closed they are acknowledged at once
    /// (nobody will read them; the server must not wait for them).
    pub fn queue(&mut self, data: Vec<u8>, outbox: &mut Vec<u8>) {
        if self.write_closed || self.shutdown_when_flushed {
            let discarded = u32::try_from(data.len()).unwrap_or(u32::MAX);
            if discarded > 0 {
                FromAgent::StdinWritten(self.id, discarded).encode(outbox);
            }
            return;
        }
        self.pending.extend_from_slice(&data);
        self.write(outbox);
    }

    pub fn shutdown_write_when_flushed(&mut self) {
        self.shutdown_when_flushed = true;
        self.finish_write_side();
    }

    fn finish_write_side(&mut self) {
        if self.link == Link::Open
            && self.shutdown_when_flushed
            && self.written >= self.pending.len()
            && !self.write_closed
        {
            if let Some(socket) = &self.socket {
                let _ = socket.shutdown(Shutdown::Write);
            }
            self.write_closed = true;
        }
    }

    /// Write what the socket takes; acknowledge it.
    ///
    /// Requests and their bodies go out as they come, not held for the application's ACK
    /// (Nagle's algorithm, which with a delayed ACK can hold a request body back for 40 ms):
    /// `TCP_NODELAY`. Nagle holds a segment back only while earlier data is unacknowledged, so
    /// a first send that fits in one segment needs none: it is set before any other send, and
    /// a connection that carries one small request (most do) saves the system call (~50-100 us
    /// under gVisor's ptrace platform).
    pub fn write(&mut self, outbox: &mut Vec<u8>) {
        if self.link != Link::Open {
            return;
        }
        let before = self.written;
        while !self.write_closed && self.written < self.pending.len() {
            let Some(mut socket) = self.socket.as_ref() else {
                break;
            };
            let one_segment = self.pending.len() - self.written <= ONE_SEGMENT_BYTES;
            if !self.nodelay && (self.sent_any || !one_segment) {
                let _ = socket.set_nodelay(true);
                self.nodelay = true;
            }
            match socket.write(&self.pending[self.written..]) {
                Ok(0) => break,
                Ok(n) => {
                    self.written += n;
                    self.sent_any = true;
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    // The application is gone: what waits is acknowledged as discarded.
                    self.written = self.pending.len();
                    self.write_closed = true;
                }
            }
        }
        let done = self.written - before;
        if done > 0 {
            let count = u32::try_from(done).unwrap_or(u32::MAX);
            FromAgent::StdinWritten(self.id, count).encode(outbox);
        }
        if self.written == self.pending.len() {
            self.pending.clear();
            self.written = 0;
        } else if self.written >= COMPACT_AFTER {
            self.pending.drain(..self.written);
            self.written = 0;
        }
        self.finish_write_side();
    }

    /// Read what the socket holds while the window and the outbox allow, one frame per read
    /// (as an execution's pipes: one read per wake-up would be slow under gVisor), through
    /// `buffer` (the agent's one read buffer, so that no read allocates).
    ///
    /// A short read is followed by another: it finds the application's end when that came
    /// right after its last bytes (for about half of the small answers measured), and then
    /// both go out in one write and the end costs no wake-up of its own; else it hears `EAGAIN`.
    /// (`POLLRDHUP` would tell without the read, but the network stack of runsc 0.0~20221219
    /// does not report it.)
    pub fn read(&mut self, outbox: &mut Vec<u8>, buffer: &mut [u8]) {
        while !self.read_closed
            && self.window > 0
            && outbox.len() < crate::agent_loop::OUTBOX_HIGH_WATER
        {
            let room = usize::try_from(self.window)
                .unwrap_or(usize::MAX)
                .min(MAX_OUTPUT_CHUNK_BYTES)
                .min(buffer.len());
            let Some(mut socket) = self.socket.as_ref() else {
                return;
            };
            match socket.read(&mut buffer[..room]) {
                Ok(0) => self.read_closed = true,
                Ok(n) => {
                    self.window = self.window.saturating_sub(n as u64);
                    FromAgent::Output(self.id, Stream::Stdout, buffer[..n].to_vec()).encode(outbox);
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => self.read_closed = true,
            }
        }
    }

    /// The server closes the connection (a client gone, a kill, a checkpoint coming): closed
    /// with a reset at once, so that it leaves the sandbox's TCP table before the agent answers
    /// an `Inspect` that follows.
    pub fn close(&mut self, signal: i32) {
        if let Some(socket) = self.socket.take() {
            reset_on_close(&socket);
        }
        self.read_closed = true;
        self.write_closed = true;
        self.killed.get_or_insert(signal);
    }

    /// How it ended, once the application's side is closed.
    pub fn finished_status(&self) -> Option<ExitStatus> {
        if self.link != Link::Open && self.killed.is_none() {
            return None;
        }
        if !self.read_closed {
            return None;
        }
        Some(match self.killed {
            Some(signal) => ExitStatus::Signal(signal),
            None => ExitStatus::Code(0),
        })
    }
}

/// A non-blocking IPv4 socket for the next connection to loopback, made while the agent has
/// nothing else to do: `socket` costs ~100 us under gVisor's ptrace platform, which a
/// connection then does not wait for. The agent drops it before an inspection (a checkpoint
/// follows one), so that no socket of its own is in a checkpoint.
pub fn spare_socket() -> io::Result<OwnedFd> {
    new_socket(AddressFamily::Inet)
}

fn new_socket(family: AddressFamily) -> io::Result<OwnedFd> {
    let flags = SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC;
    Ok(socket(family, SockType::Stream, flags, None)?)
}

/// A non-blocking socket connecting to `port` on loopback (IPv4 through `spare` if given);
/// whether it is connected already.
pub(crate) fn start_connect(
    port: u16,
    v6: bool,
    spare: Option<OwnedFd>,
) -> io::Result<(TcpStream, bool)> {
    let fd = match (v6, spare) {
        (false, Some(spare)) => spare,
        (false, None) => new_socket(AddressFamily::Inet)?,
        (true, _) => new_socket(AddressFamily::Inet6)?,
    };
    let result = if v6 {
        let address = SockaddrIn6::from(SocketAddrV6::new(Ipv6Addr::LOCALHOST, port, 0, 0));
        connect(fd.as_raw_fd(), &address)
    } else {
        let address = SockaddrIn::from(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port));
        connect(fd.as_raw_fd(), &address)
    };
    let connected = match result {
        Ok(()) => true,
        Err(Errno::EINPROGRESS) | Err(Errno::EINTR) => false,
        Err(error) => return Err(error.into()),
    };
    Ok((TcpStream::from(fd), connected))
}

/// Make closing `socket` send a reset rather than the usual handshake: a connection that passes
/// through TIME_WAIT stays in the sandbox's TCP table for a minute, and runsc refuses to
/// checkpoint a sandbox with any connection there.
pub(crate) fn reset_on_close(socket: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    let _ = nix::sys::socket::setsockopt(socket, sockopt::Linger, &linger);
}

impl Drop for Relay {
    /// Both sides are done by now (see `reset_on_close`).
    fn drop(&mut self) {
        if let Some(socket) = &self.socket {
            reset_on_close(socket);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::FrameDecoder;
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::net::TcpListener;

    /// What `poll` reports for `fd` within 100 ms (empty: nothing).
    fn poll_one(fd: BorrowedFd<'_>, events: PollFlags) -> PollFlags {
        let mut fds = [PollFd::new(fd, events)];
        poll(&mut fds, PollTimeout::from(100u16)).unwrap();
        fds[0].revents().unwrap_or(PollFlags::empty())
    }

    /// Connect as the agent's loop would (through a spare socket or not): until `Started` or
    /// `SpawnFailed`.
    fn connected(port: u16, through_spare: bool) -> Result<Relay, String> {
        let mut outbox = Vec::new();
        let ahead = match through_spare {
            true => Ahead::Spare(spare_socket().unwrap()),
            false => Ahead::Nothing,
        };
        let mut relay = Relay::connect(ExecId(3), port, ahead, &mut outbox)?;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while outbox.is_empty() && std::time::Instant::now() < deadline {
            let Some(fd) = relay.write_fd() else {
                break;
            };
            let revents = poll_one(fd, PollFlags::POLLOUT);
            if !revents.is_empty() {
                let error = revents.intersects(PollFlags::POLLERR | PollFlags::POLLHUP);
                relay.on_writable(error, &mut outbox);
            }
        }
        match frames(&outbox).as_slice() {
            [FromAgent::Started(ExecId(3))] => Ok(relay),
            [FromAgent::SpawnFailed(ExecId(3), message)] => Err(message.clone()),
            other => panic!("{other:?}"),
        }
    }

    fn frames(outbox: &[u8]) -> Vec<FromAgent> {
        let mut decoder = FrameDecoder::new();
        decoder.push(outbox);
        let mut frames = Vec::new();
        while let Some(frame) = decoder.next_from_agent().unwrap() {
            frames.push(frame);
        }
        frames
    }

    /// Bytes go both ways, the server's half-close reaches the application, and the relay
    /// ends once the application closed (a real loopback socket, outside any sandbox).
    #[test]
    fn bytes_cross_both_ways_and_the_end_is_reported() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut relay = connected(port, true).unwrap();
        let (mut app, _) = listener.accept().unwrap();
        let mut outbox = Vec::new();
        relay.queue(b"GET / HTTP/1.1\r\n\r\n".to_vec(), &mut outbox);
        relay.shutdown_write_when_flushed();
        assert_eq!(frames(&outbox), [FromAgent::StdinWritten(ExecId(3), 18)]);
        let mut request = Vec::new();
        app.read_to_end(&mut request).unwrap();
        assert_eq!(request, b"GET / HTTP/1.1\r\n\r\n");
        app.write_all(b"HTTP/1.1 200 OK\r\n\r\nhi").unwrap();
        drop(app);
        let mut received = Vec::new();
        while relay.finished_status().is_none() {
            let mut outbox = Vec::new();
            relay.read(&mut outbox, &mut vec![0; MAX_OUTPUT_CHUNK_BYTES]);
            for frame in frames(&outbox) {
                let FromAgent::Output(ExecId(3), Stream::Stdout, data) = frame else {
                    panic!("{frame:?}");
                };
                received.extend(data);
            }
        }
        assert_eq!(received, b"HTTP/1.1 200 OK\r\n\r\nhi");
        assert_eq!(relay.finished_status(), Some(ExitStatus::Code(0)));
        // Bytes after the end are acknowledged, not kept.
        let mut outbox = Vec::new();
        relay.queue(vec![1; 10], &mut outbox);
        assert_eq!(frames(&outbox), [FromAgent::StdinWritten(ExecId(3), 10)]);
    }

    /// A warm connection whose connect is still under way (the agent took it at once) opens
    /// the relay when it polls writable, as a connect of its own would.
    #[test]
    fn a_warm_connection_still_connecting_opens_the_relay_once_accepted() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (socket, connected) = start_connect(port, false, None).unwrap();
        let mut outbox = Vec::new();
        let ahead = Ahead::Warm {
            socket,
            connected,
            v6: false,
        };
        let mut relay = Relay::connect(ExecId(4), port, ahead, &mut outbox).unwrap();
        if !connected {
            assert!(outbox.is_empty());
            let fd = relay.write_fd().expect("polled while connecting");
            let revents = poll_one(fd, PollFlags::POLLOUT);
            assert!(revents.contains(PollFlags::POLLOUT), "{revents:?}");
            relay.on_writable(false, &mut outbox);
        }
        assert_eq!(frames(&outbox), [FromAgent::Started(ExecId(4))]);
        assert_eq!(relay.warm_destination(), Some((port, false)));
        relay.close(libc::SIGKILL);
        assert_eq!(relay.warm_destination(), None, "closed by the server");
    }

    #[test]
    fn nobody_listening_is_an_error_naming_the_port() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        for through_spare in [false, true] {
            let error = connected(port, through_spare).err().unwrap();
            assert!(error.contains(&format!("port {port}")), "{error}");
        }
    }

    /// The socket is read only while the window is open.
    #[test]
    fn the_window_bounds_what_is_read() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut relay = connected(port, false).unwrap();
        let (mut app, _) = listener.accept().unwrap();
        let writer = std::thread::spawn(move || {
            let _ = app.write_all(&vec![7u8; 2 * OUTPUT_WINDOW_BYTES as usize]);
        });
        let mut total = 0;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while total < OUTPUT_WINDOW_BYTES as usize && std::time::Instant::now() < deadline {
            let mut outbox = Vec::new();
            relay.read(&mut outbox, &mut vec![0; MAX_OUTPUT_CHUNK_BYTES]);
            total += frames(&outbox)
                .iter()
                .map(|frame| match frame {
                    FromAgent::Output(_, _, data) => data.len(),
                    _ => 0,
                })
                .sum::<usize>();
        }
        assert_eq!(total, OUTPUT_WINDOW_BYTES as usize);
        assert!(relay.read_fd().is_none(), "window closed: not polled");
        relay.close(libc::SIGKILL);
        assert_eq!(
            relay.finished_status(),
            Some(ExitStatus::Signal(libc::SIGKILL))
        );
        writer.join().unwrap();
    }
}
