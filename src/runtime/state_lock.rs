//! One server per state directory: an exclusive `flock` on `<state dir>/instance.lock`, taken
//! before anything in the directory is touched. The start-up cleanup deletes every container
//! under the directory's runsc root, so a second server on the same directory would destroy
//! the first one's sandboxes; with the lock it exits at start instead, naming the holder.
//!
//! The lock belongs to the open file, so it lasts until this process exits, however it exits
//! (the kernel drops it on SIGKILL too). The file is opened close-on-exec (std's default): the
//! runsc processes we spawn, which can outlive a killed server, never hold it, so a restart on
//! the same directory after `kill -9` gets the lock and cleans up.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

pub const LOCK_FILE: &str = "instance.lock";

/// A removed lock file can be re-created and locked by someone else between our open and our
/// lock; we then retry on the new file. More than a few such races in a row means something
/// keeps removing the file.
const ATTEMPTS: usize = 5;

/// The held lock; dropping it (or exiting) releases it.
#[derive(Debug)]
pub struct StateLock {
    _file: File,
    path: PathBuf,
}

impl StateLock {
    /// Take the lock of `state_dir` (created if missing), or say who holds it.
    pub fn acquire(state_dir: &Path) -> io::Result<StateLock> {
        std::fs::create_dir_all(state_dir).map_err(|error| {
            io::Error::new(
                error.kind(),
                format!(
                    "cannot create the state directory {}: {error}",
                    state_dir.display()
                ),
            )
        })?;
        let path = state_dir.join(LOCK_FILE);
        for _ in 0..ATTEMPTS {
            let mut file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(|error| {
                    io::Error::new(
                        error.kind(),
                        format!("cannot open {}: {error}", path.display()),
                    )
                })?;
            match file.try_lock() {
                Ok(()) => {}
                Err(TryLockError::WouldBlock) => {
                    let holder = holder_pid(&mut file)
                        .map(|pid| format!("PID {pid}"))
                        .unwrap_or_else(|| "PID unknown".to_string());
                    return Err(io::Error::new(
                        io::ErrorKind::AddrInUse,
                        format!(
                            "another sandbox-server ({holder}) is using the state directory {} \
                             (it holds {}); give each instance its own SANDBOX_STATE_DIR",
                            state_dir.display(),
                            path.display()
                        ),
                    ));
                }
                Err(TryLockError::Error(error)) => {
                    return Err(io::Error::new(
                        error.kind(),
                        format!("cannot lock {}: {error}", path.display()),
                    ))
                }
            }
            // The previous holder removes the file when it exits cleanly: if it did so between
            // our open and our lock, we hold a lock on a file nobody else will ever open.
            if !is_still_at(&file, &path) {
                continue;
            }
            file.set_len(0)?;
            file.seek(SeekFrom::Start(0))?;
            writeln!(file, "{}", std::process::id())?;
            return Ok(StateLock { _file: file, path });
        }
        Err(io::Error::other(format!(
            "cannot lock {}: the file keeps being removed",
            path.display()
        )))
    }

    /// Remove the lock file at a clean exit, while still holding the lock (see `acquire` for
    /// why a waiting instance cannot be fooled by this).
    pub fn remove_file(&self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn holder_pid(file: &mut File) -> Option<u32> {
    let mut text = String::new();
    file.read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

/// Whether `path` still names the file we opened.
fn is_still_at(file: &File, path: &Path) -> bool {
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(ours), Ok(named)) => ours.dev() == named.dev() && ours.ino() == named.ino(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let mut nonce = [0u8; 4];
        crate::ids::random_bytes(&mut nonce).unwrap();
        std::env::temp_dir().join(format!(
            "crs-lock-{name}-{}",
            nonce.iter().map(|b| format!("{b:02x}")).collect::<String>()
        ))
    }

    #[test]
    fn a_second_holder_is_refused_with_the_directory_and_pid() {
        let dir = temp_dir("second");
        let held = StateLock::acquire(&dir).unwrap();
        // flock locks belong to the open file: a second open in the same process conflicts
        // exactly like another process would.
        let error = StateLock::acquire(&dir).unwrap_err();
        let message = error.to_string();
        assert!(
            message.contains(&dir.display().to_string()),
            "names the directory: {message}"
        );
        assert!(
            message.contains(&format!("PID {}", std::process::id())),
            "names the holder: {message}"
        );
        drop(held);
        let again = StateLock::acquire(&dir).expect("free once the holder is gone");
        again.remove_file();
        assert!(!dir.join(LOCK_FILE).exists());
        drop(again);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_lock_on_a_removed_file_is_not_trusted() {
        let dir = temp_dir("removed");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(LOCK_FILE);
        let stale = File::create(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(!is_still_at(&stale, &path));
        let lock = StateLock::acquire(&dir).unwrap();
        assert!(is_still_at(&lock._file, &path));
        let pid: u32 = std::fs::read_to_string(&path)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_eq!(pid, std::process::id());
        drop(lock);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
