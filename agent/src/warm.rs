//! Sockets made ahead of the next port relay (issue 20), so that a request through a port does
//! not wait for work that can be done before it comes:
//! - a spare socket: `socket` costs ~100 us under gVisor's ptrace platform;
//! - a warm connection: after a relay to a port ended, the next connection to that port is
//!   opened at once, so that the next request finds it connected and accepted by the
//!   application (its connect, the handshake and the application's accept and thread start are
//!   out of the request's way). Envoy does the same for its upstreams ("preconnecting").
//!
//! What an application sees of a warm connection: one connection opened and left idle, for at
//! most [`WARM_FOR`], after each connection it ended (not after one the server closed), and
//! only to a port requests came through. It is the next one used, so even a server that serves
//! one connection at a time (it blocks reading the warm one) serves the next request. One that
//! is not used within [`WARM_FOR`] is closed, and the application reads an end of file
//! (`close_unused`). One that dies (the application closed it, refused it, restarted, or spoke
//! first) is dropped as soon as the agent sees it, and that port gets none for [`COLD_FOR`].
//!
//! Nothing of this may be in a checkpoint: `drop_all` closes everything before an inspection.

use std::net::{Shutdown, TcpStream};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::poll::PollFlags;

use crate::relay::{self, Ahead};

/// How long a warm connection is kept unused. Shorter than the idle timeouts servers commonly
/// apply (5 s for uvicorn's keep-alive, 30 s before gunicorn's arbiter replaces a sync worker
/// that waits), and long enough for the requests of a page and its resources.
pub const WARM_FOR: Duration = Duration::from_secs(3);

/// At most this many ports have a warm connection at a time (the most recently used).
const MAX_WARM: usize = 4;

/// A port whose application closed a warm connection, or spoke first on it, gets none for this
/// long: an application that drops idle connections, or a protocol where the server speaks
/// first, would see one opened and dropped for every request.
const COLD_FOR: Duration = Duration::from_secs(60);

struct Warm {
    port: u16,
    v6: bool,
    socket: TcpStream,
    /// The connect is done: the socket polled writable without an error.
    connected: bool,
    since: Instant,
}

pub struct Sockets {
    /// Open warm connections after relays end (the server's setting).
    warm_enabled: bool,
    /// A relay was asked for since the last inspection: sandboxes whose ports are used keep
    /// a spare socket, the others none.
    wanted: bool,
    spare: Option<OwnedFd>,
    warm: Vec<Warm>,
    /// Ports that get no warm connection until then (see [`COLD_FOR`]).
    cold: Vec<(u16, Instant)>,
}

impl Sockets {
    pub fn new(warm_enabled: bool) -> Self {
        Sockets {
            warm_enabled,
            wanted: false,
            spare: None,
            warm: Vec::new(),
            cold: Vec::new(),
        }
    }

    /// What the next relay to `port` starts from: its warm connection, else the spare socket.
    pub fn take_for(&mut self, port: u16) -> Ahead {
        self.wanted = true;
        if let Some(index) = self.warm.iter().position(|warm| warm.port == port) {
            let warm = self.warm.remove(index);
            return Ahead::Warm {
                socket: warm.socket,
                connected: warm.connected,
                v6: warm.v6,
            };
        }
        match self.spare.take() {
            Some(spare) => Ahead::Spare(spare),
            None => Ahead::Nothing,
        }
    }

    /// After relays ended (their `Exited` written): a warm connection to each of their ports,
    /// then a spare socket.
    /// (`destinations`: each port, and whether the application listens on IPv6 only).
    pub fn after_relays_ended(&mut self, destinations: impl IntoIterator<Item = (u16, bool)>) {
        if !self.wanted {
            return;
        }
        if self.warm_enabled {
            for (port, v6) in destinations {
                self.open_warm(port, v6);
            }
        }
        if self.spare.is_none() {
            self.spare = relay::spare_socket().ok();
        }
    }

    fn open_warm(&mut self, port: u16, v6: bool) {
        let now = Instant::now();
        self.cold.retain(|(_, until)| *until > now);
        if self.warm.iter().any(|warm| warm.port == port)
            || self.cold.iter().any(|(cold, _)| *cold == port)
        {
            return;
        }
        if self.warm.len() >= MAX_WARM {
            let oldest = self.warm.remove(0);
            close_unused(&oldest.socket);
        }
        // A failed connect (nothing listens any more) leaves none: the next relay to this port
        // connects as usual and reports why.
        let spare = if v6 { None } else { self.spare.take() };
        if let Ok((socket, connected)) = relay::start_connect(port, v6, spare) {
            self.warm.push(Warm {
                port,
                v6,
                socket,
                connected,
                since: Instant::now(),
            });
        }
    }

    /// The warm connections to poll: for writable while connecting, for readable once
    /// connected (an end or bytes the application sent unasked: either way it is not used).
    pub fn poll_fds(&self) -> impl Iterator<Item = (u16, BorrowedFd<'_>, PollFlags)> {
        self.warm.iter().map(|warm| {
            let events = if warm.connected {
                PollFlags::POLLIN
            } else {
                PollFlags::POLLOUT
            };
            (warm.port, warm.socket.as_fd(), events)
        })
    }

    /// What `poll` reported for the warm connection to `port`.
    pub fn on_event(&mut self, port: u16, flags: PollFlags) {
        let Some(index) = self.warm.iter().position(|warm| warm.port == port) else {
            return;
        };
        let warm = &mut self.warm[index];
        let failed = flags.intersects(PollFlags::POLLERR | PollFlags::POLLHUP | PollFlags::POLLIN);
        if !warm.connected && !failed && flags.contains(PollFlags::POLLOUT) {
            warm.connected = true;
        } else if failed {
            let warm = self.warm.remove(index);
            close_unused(&warm.socket);
            self.cold.push((port, Instant::now() + COLD_FOR));
        }
    }

    /// Close the warm connections kept unused for [`WARM_FOR`]; when the next one is due.
    pub fn expire(&mut self, now: Instant) -> Option<Instant> {
        self.warm.retain(|warm| {
            let keep = now < warm.since + WARM_FOR;
            if !keep {
                close_unused(&warm.socket);
            }
            keep
        });
        self.warm.iter().map(|warm| warm.since + WARM_FOR).min()
    }

    /// Before an inspection (a checkpoint may follow): close everything, want nothing until
    /// the next relay. Whether connections were closed (they leave the TCP table on the network
    /// stack's own time).
    pub fn drop_all(&mut self) -> bool {
        self.wanted = false;
        self.spare = None;
        let had_connections = !self.warm.is_empty();
        for warm in self.warm.drain(..) {
            close_unused(&warm.socket);
        }
        had_connections
    }

    #[cfg(test)]
    pub fn warm_ports(&self) -> Vec<u16> {
        self.warm.iter().map(|warm| warm.port).collect()
    }
}

/// Close a warm connection that no request used, so that the application reads an end of file
/// (a reset would make Python's `http.server` print a traceback for a connection it never saw a
/// request on) and nothing is left in the sandbox's TCP table (a connection in TIME_WAIT would
/// stop a checkpoint for a minute): `shutdown(SHUT_WR)`, then the close sends a reset. Under
/// runsc 0.0~20221219 the application reads the end of file, not the reset (checked in a
/// sandbox: a reset alone gives it ECONNRESET).
fn close_unused(socket: &TcpStream) {
    let _ = socket.shutdown(Shutdown::Write);
    relay::reset_on_close(socket);
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::poll::{poll, PollFd, PollTimeout};
    use std::io::Write;
    use std::net::TcpListener;

    /// Poll the warm connections once (100 ms at most) and pass on what was reported.
    fn poll_once(sockets: &mut Sockets) {
        let reported: Vec<(u16, PollFlags)> = {
            let ports: Vec<u16> = sockets.poll_fds().map(|(port, _, _)| port).collect();
            let mut fds: Vec<PollFd<'_>> = sockets
                .poll_fds()
                .map(|(_, fd, events)| PollFd::new(fd, events))
                .collect();
            poll(&mut fds, PollTimeout::from(100u16)).unwrap();
            ports
                .into_iter()
                .zip(
                    fds.iter()
                        .map(|fd| fd.revents().unwrap_or(PollFlags::empty())),
                )
                .filter(|(_, flags)| !flags.is_empty())
                .collect()
        };
        for (port, flags) in reported {
            sockets.on_event(port, flags);
        }
    }

    fn listener() -> (TcpListener, u16) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        (listener, port)
    }

    #[test]
    fn a_port_used_gets_a_warm_connection_that_the_next_relay_takes() {
        let (listener, port) = listener();
        let mut sockets = Sockets::new(true);
        // Nothing is made ahead for a sandbox whose ports were never used.
        sockets.after_relays_ended([(port, false)]);
        assert!(sockets.warm_ports().is_empty());
        assert!(matches!(sockets.take_for(port), Ahead::Nothing));

        sockets.after_relays_ended([(port, false)]);
        assert_eq!(sockets.warm_ports(), [port]);
        let (mut accepted, _) = listener.accept().unwrap();
        poll_once(&mut sockets);
        let Ahead::Warm {
            socket, connected, ..
        } = sockets.take_for(port)
        else {
            panic!("no warm connection");
        };
        assert!(connected);
        (&socket).write_all(b"GET /").unwrap();
        let mut request = [0u8; 5];
        std::io::Read::read_exact(&mut accepted, &mut request).unwrap();
        assert_eq!(&request, b"GET /");
        // Another port has none: the spare socket.
        assert!(matches!(sockets.take_for(port + 1), Ahead::Spare(_)));
    }

    #[test]
    fn a_warm_connection_the_application_closed_is_not_used() {
        let (listener, port) = listener();
        let mut sockets = Sockets::new(true);
        sockets.take_for(port);
        sockets.after_relays_ended([(port, false)]);
        let (accepted, _) = listener.accept().unwrap();
        poll_once(&mut sockets);
        drop(accepted);
        poll_once(&mut sockets);
        assert!(sockets.warm_ports().is_empty());
        assert!(matches!(sockets.take_for(port), Ahead::Spare(_)));
        // Nor is another one opened to that port for a while.
        sockets.after_relays_ended([(port, false)]);
        assert!(sockets.warm_ports().is_empty());
    }

    #[test]
    fn warm_connections_expire_and_go_before_an_inspection() {
        let (_listener, port) = listener();
        let mut sockets = Sockets::new(true);
        sockets.take_for(port);
        sockets.after_relays_ended([(port, false)]);
        let now = Instant::now();
        let due = sockets.expire(now).expect("a warm connection to expire");
        assert!(due <= now + WARM_FOR);
        assert_eq!(sockets.expire(due + Duration::from_millis(1)), None);
        assert!(sockets.warm_ports().is_empty());

        sockets.after_relays_ended([(port, false)]);
        assert_eq!(sockets.warm_ports(), [port]);
        assert!(sockets.drop_all());
        assert!(!sockets.drop_all());
        // Until the next relay, nothing is made ahead.
        sockets.after_relays_ended([(port, false)]);
        assert!(sockets.warm_ports().is_empty());
    }

    #[test]
    fn the_oldest_warm_connection_goes_past_four_ports() {
        let listeners: Vec<(TcpListener, u16)> = (0..=MAX_WARM).map(|_| listener()).collect();
        let mut sockets = Sockets::new(true);
        sockets.take_for(listeners[0].1);
        for (_, port) in &listeners {
            sockets.after_relays_ended([(*port, false)]);
        }
        let ports: Vec<u16> = listeners[1..].iter().map(|(_, port)| *port).collect();
        assert_eq!(sockets.warm_ports(), ports);
        // The one closed unused reads an end of file at the application, not a reset.
        let (mut first, _) = listeners[0].0.accept().unwrap();
        let mut byte = [0u8; 1];
        assert_eq!(std::io::Read::read(&mut first, &mut byte).unwrap(), 0);
    }

    #[test]
    fn turned_off_only_the_spare_socket_is_made() {
        let (_listener, port) = listener();
        let mut sockets = Sockets::new(false);
        sockets.take_for(port);
        sockets.after_relays_ended([(port, false)]);
        assert!(sockets.warm_ports().is_empty());
        assert!(matches!(sockets.take_for(port), Ahead::Spare(_)));
    }
}
