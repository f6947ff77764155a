//! Worker threads for blocking filesystem work (hashing and publishing images, leases on a
//! possibly remote mount), so the event loop never waits on storage. A finished job wakes the
//! loop through a `mio::Waker` and its result is collected with `drain`.

use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;

use mio::{Registry, Waker};

use crate::io_token::{token, Tag};

pub struct Jobs<T> {
    sender: Sender<T>,
    receiver: Receiver<T>,
    waker: Arc<Waker>,
    running: usize,
}

impl<T: Send + 'static> Jobs<T> {
    pub fn new(registry: &Registry) -> std::io::Result<Self> {
        let (sender, receiver) = channel();
        let waker = Arc::new(Waker::new(registry, token(Tag::Jobs, 0))?);
        Ok(Jobs {
            sender,
            receiver,
            waker,
            running: 0,
        })
    }

    /// Run `work` on its own thread; its result comes back through `drain`.
    pub fn spawn(&mut self, work: impl FnOnce() -> T + Send + 'static) {
        let sender = self.sender.clone();
        let waker = Arc::clone(&self.waker);
        self.running += 1;
        std::thread::spawn(move || {
            let result = work();
            let _ = sender.send(result);
            let _ = waker.wake();
        });
    }

    pub fn drain(&mut self) -> Vec<T> {
        let results: Vec<T> = self.receiver.try_iter().collect();
        self.running -= results.len().min(self.running);
        results
    }

    pub fn running(&self) -> usize {
        self.running
    }
}
