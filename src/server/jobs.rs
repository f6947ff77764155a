//! Worker threads for blocking work on the shared store (`store_work`: attach checks, finding
//! and verifying snapshots, image directories, publishing, listing and deleting snapshots,
//! leases, sweeps; the mount may be remote), so the event loop never waits on storage. A finished job wakes the
//! loop through a `mio::Waker` and its result is collected with `drain`.

use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;

use mio::{Registry, Waker};

use crate::io_token::{token, Tag};

pub struct Jobs<T> {
    /// `None`: a job that ended without a result (it panicked and had no stand-in).
    sender: Sender<Option<T>>,
    receiver: Receiver<Option<T>>,
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

    /// Run `work` on its own thread; its result comes back through `drain`. Should it panic
    /// (a bug: jobs read shared storage anything may have written), it is logged and counts as
    /// finished without a result.
    pub fn spawn(&mut self, work: impl FnOnce() -> T + Send + 'static) {
        self.start(move || crate::guard::catch(work).map_err(|message| (message, None)));
    }

    /// Like `spawn`, but a panic's message goes to `on_panic`, whose value is the result: for
    /// jobs someone waits on (a client's attach, a session's checkpoint).
    pub fn spawn_or(
        &mut self,
        work: impl FnOnce() -> T + Send + 'static,
        on_panic: impl FnOnce(String) -> T + Send + 'static,
    ) {
        self.start(move || {
            crate::guard::catch(work).map_err(|message| {
                let stand_in = on_panic(message.clone());
                (message, Some(stand_in))
            })
        });
    }

    fn start(&mut self, run: impl FnOnce() -> Result<T, (String, Option<T>)> + Send + 'static) {
        let sender = self.sender.clone();
        let waker = Arc::clone(&self.waker);
        self.running += 1;
        std::thread::spawn(move || {
            let result = match run() {
                Ok(result) => Some(result),
                Err((message, stand_in)) => {
                    eprintln!("server: internal error in a worker thread: {message}");
                    stand_in
                }
            };
            let _ = sender.send(result);
            let _ = waker.wake();
        });
    }

    pub fn drain(&mut self) -> Vec<T> {
        let finished: Vec<Option<T>> = self.receiver.try_iter().collect();
        self.running -= finished.len().min(self.running);
        finished.into_iter().flatten().collect()
    }

    pub fn running(&self) -> usize {
        self.running
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finished(jobs: &mut Jobs<u32>, count: usize) -> Vec<u32> {
        let mut results = Vec::new();
        for _ in 0..500 {
            results.extend(jobs.drain());
            if jobs.running() == 0 {
                return results;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("{count} jobs did not finish: {results:?}");
    }

    #[test]
    fn panicking_jobs_finish_with_their_stand_in_or_without_a_result() {
        let poll = mio::Poll::new().unwrap();
        let mut jobs = Jobs::new(poll.registry()).unwrap();
        jobs.spawn(|| 1);
        jobs.spawn(|| -> u32 { panic!("in a plain job") });
        jobs.spawn_or(
            || -> u32 { panic!("in a job someone waits on") },
            |message| u32::from(message == "in a job someone waits on") * 7,
        );
        let mut results = finished(&mut jobs, 3);
        results.sort();
        assert_eq!(results, [1, 7]);
    }
}
