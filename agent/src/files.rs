//! The files API inside the sandbox (issue 14): one helper process per operation.
//!
//! The agent does not touch files itself. Each operation is done by its own binary started
//! again as an ordinary process of the sandbox: uid 0 without capabilities, the sandbox's
//! rlimits, its own process group, pipes as stdio, `/root` as its directory. Either started for
//! the operation (`sandbox-agent --files '<json FileRequest>'`), or started ahead of it and
//! waiting for it (`sandbox-agent --files --standby`, see [`crate::file_helper`]): then the
//! request comes as JSON on its descriptor 3, which the agent closes once it is written. Both
//! are the same process with the same rights, used for one operation. So the operation has
//! exactly the rights user code has, and nothing more:
//! - it cannot open the agent's pipes (`/proc/1/fd/*`): they belong to the agent's own uid,
//!   which is why user code cannot either (see `identity`);
//! - `/proc/self/...` and `/dev/fd/...` name the helper's own descriptors, never the agent's;
//!   and the helper refuses every path that resolves into `/proc` anyway, as well as anything
//!   that is not a regular file or a directory (a FIFO, a device), with `invalid_path`;
//! - whatever it writes on stdout is data of this one operation, carried in the execution's
//!   output frames: it cannot forge a frame of the agent's protocol;
//! - a write larger than `RLIMIT_FSIZE` fails with `file_too_large` (SIGXFSZ is caught).
//!
//! The transfer protocol of each operation is documented on [`FileRequest`].

use std::fs::{self, File, Metadata, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::UNIX_EPOCH;

use serde_json::{json, Value};

use crate::protocol::{FileFailure, FileRequest, FILE_COMMIT_MAGIC, FILE_COMMIT_TRAILER_BYTES};

/// The first argument that makes the agent's binary this helper.
pub const HELPER_FLAG: &str = "--files";

/// The second argument of a helper started ahead of its request: the request comes on
/// [`REQUEST_FD`] (a JSON request never starts with `-`).
pub const STANDBY_ARGUMENT: &str = "--standby";

/// Where a pre-started helper reads its request (to the end of file).
pub const REQUEST_FD: i32 = 3;

/// Longest request a pre-started helper reads (two paths of `MAX_PATH_BYTES`, escaped, fit).
const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// Where relative paths start: the sessions' working directory.
pub const HOME: &str = "/root";

/// Longest path accepted (Linux's `PATH_MAX`).
const MAX_PATH_BYTES: usize = 4096;

/// Deepest listing, and most entries in one.
pub const MAX_LIST_DEPTH: u32 = 10;
pub const MAX_LIST_ENTRIES: usize = 10_000;

/// Bytes moved per read or write.
const CHUNK_BYTES: usize = 1024 * 1024;

/// The smallest buffer a read uses (below the allocator's mmap threshold).
const SMALL_READ_BYTES: usize = 64 * 1024;

/// The helper's `main`: do the operation of `argument` (the request's JSON, or
/// [`STANDBY_ARGUMENT`]: wait for it on [`REQUEST_FD`]); the process's exit status.
pub fn helper_main(argument: Option<&str>) -> i32 {
    // A write past RLIMIT_FSIZE must fail with EFBIG, not kill the helper with SIGXFSZ.
    // (Before the wait: a pre-started helper has done all it can before its request.)
    let _ = signal_hook::flag::register(
        signal_hook::consts::SIGXFSZ,
        std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false)),
    );
    let waited_for;
    let request_json = match argument {
        Some(STANDBY_ARGUMENT) => {
            match sandbox_ffi::read_inherited_to_end(REQUEST_FD, MAX_REQUEST_BYTES) {
                // Closed without a request: the agent dismissed it (or is gone).
                Ok(bytes) if bytes.is_empty() => return 0,
                Ok(bytes) => {
                    waited_for = String::from_utf8_lossy(&bytes).into_owned();
                    Some(waited_for.as_str())
                }
                Err(error) => {
                    return fail(Failure::new(
                        "invalid_path",
                        format!("bad request: {error}"),
                    ))
                }
            }
        }
        other => other,
    };
    let request: FileRequest = match request_json.map(serde_json::from_str) {
        Some(Ok(request)) => request,
        Some(Err(error)) => {
            return fail(Failure::new(
                "invalid_path",
                format!("bad request: {error}"),
            ))
        }
        None => return fail(Failure::new("invalid_path", "no request".into())),
    };
    match perform(request) {
        Ok(()) => 0,
        Err(failure) => fail(failure),
    }
}

fn fail(failure: Failure) -> i32 {
    let failure = FileFailure {
        code: failure.code.to_string(),
        message: failure.message,
    };
    let text = serde_json::to_string(&failure).unwrap_or_default();
    let _ = io::stderr().write_all(text.as_bytes());
    1
}

/// A failure with its protocol code.
#[derive(Debug)]
pub struct Failure {
    pub code: &'static str,
    pub message: String,
}

impl Failure {
    fn new(code: &'static str, message: String) -> Self {
        Failure { code, message }
    }

    /// An I/O error on `path`, with the code its errno stands for.
    fn io(path: &Path, what: &str, error: io::Error) -> Self {
        let code = match error.raw_os_error() {
            Some(libc::ENOENT) => "not_found",
            Some(libc::EISDIR) => "is_a_directory",
            Some(libc::ENOTDIR) => "not_a_directory",
            Some(libc::EACCES | libc::EPERM | libc::EROFS) => "permission_denied",
            Some(libc::ENOSPC | libc::EDQUOT) => "no_space",
            Some(libc::ENAMETOOLONG) => "path_too_long",
            Some(libc::EFBIG) => "file_too_large",
            Some(libc::EEXIST) => "already_exists",
            Some(libc::EINVAL | libc::ELOOP) => "invalid_path",
            _ => "io",
        };
        Failure::new(code, format!("cannot {what} {}: {error}", path.display()))
    }
}

fn perform(request: FileRequest) -> Result<(), Failure> {
    let stdout = File::from(
        io::stdout()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| Failure::io(Path::new("stdout"), "use", e))?,
    );
    match request {
        FileRequest::Read { path } => read(&resolve(&path)?, stdout),
        FileRequest::Write { path, mode, append } => {
            let stdin = File::from(
                io::stdin()
                    .as_fd()
                    .try_clone_to_owned()
                    .map_err(|e| Failure::io(Path::new("stdin"), "use", e))?,
            );
            let size = write(&resolve(&path)?, mode, append, stdin)?;
            reply(stdout, json!({ "size": size }))
        }
        FileRequest::List { path, depth } => {
            let depth = depth.clamp(1, MAX_LIST_DEPTH);
            reply(stdout, list(&resolve(&path)?, depth)?)
        }
        FileRequest::Stat { path } => {
            let path = resolve(&path)?;
            let meta = fs::symlink_metadata(&path).map_err(|e| Failure::io(&path, "stat", e))?;
            reply(stdout, json!({ "entry": entry(&path, &meta) }))
        }
        FileRequest::Exists { path } => {
            let exists = match resolve(&path) {
                Ok(path) => fs::symlink_metadata(&path).is_ok(),
                Err(failure) if failure.code == "not_found" => false,
                Err(failure) => return Err(failure),
            };
            reply(stdout, json!({ "exists": exists }))
        }
        FileRequest::MakeDir { path, parents } => {
            let path = resolve(&path)?;
            let made = if parents {
                fs::create_dir_all(&path)
            } else {
                fs::create_dir(&path)
            };
            made.map_err(|e| Failure::io(&path, "make directory", e))?;
            reply(stdout, json!({}))
        }
        FileRequest::Remove { path, recursive } => {
            let path = resolve(&path)?;
            if path == Path::new("/") {
                return Err(Failure::new("invalid_path", "cannot remove /".into()));
            }
            let meta = fs::symlink_metadata(&path).map_err(|e| Failure::io(&path, "remove", e))?;
            let removed = match (meta.is_dir(), recursive) {
                (true, true) => fs::remove_dir_all(&path),
                (true, false) => fs::remove_dir(&path),
                (false, _) => fs::remove_file(&path),
            };
            removed.map_err(|e| Failure::io(&path, "remove", e))?;
            reply(stdout, json!({}))
        }
        FileRequest::Rename { from, to } => {
            let (from, to) = (resolve(&from)?, resolve(&to)?);
            fs::rename(&from, &to)
                .map_err(|e| Failure::io(&from, &format!("rename to {} from", to.display()), e))?;
            reply(stdout, json!({}))
        }
    }
}

fn reply(mut stdout: File, value: Value) -> Result<(), Failure> {
    stdout
        .write_all(value.to_string().as_bytes())
        .map_err(|e| Failure::io(Path::new("stdout"), "write", e))
}

/// `path` made absolute (relative to [`HOME`]) and resolved: symbolic links followed in every
/// component but the last when it does not exist, `..` applied (at `/` it stays there: the
/// sandbox's root is the root). Paths into `/proc` are refused.
pub fn resolve(path: &str) -> Result<PathBuf, Failure> {
    if path.is_empty() {
        return Err(Failure::new("invalid_path", "the path is empty".into()));
    }
    if path.len() > MAX_PATH_BYTES {
        return Err(Failure::new(
            "path_too_long",
            format!(
                "the path is {} bytes long; at most {MAX_PATH_BYTES}",
                path.len()
            ),
        ));
    }
    if path.contains('\0') {
        return Err(Failure::new(
            "invalid_path",
            "the path contains a NUL byte".into(),
        ));
    }
    let absolute = Path::new(HOME).join(path);
    let lexical = normalize(&absolute);
    // Refused as written too, whatever they resolve to: these name descriptors of whoever
    // opens them.
    if is_process_path(&lexical) {
        return Err(outside_files(path, &lexical));
    }
    let resolved = match fs::canonicalize(&lexical) {
        Ok(resolved) => resolved,
        // The last component need not exist (a file to write, a directory to make): resolve
        // its parent.
        Err(error) if error.raw_os_error() == Some(libc::ENOENT) => {
            match (lexical.parent(), lexical.file_name()) {
                (Some(parent), Some(name)) => match fs::canonicalize(parent) {
                    Ok(parent) => parent.join(name),
                    // A missing parent: the operation fails where it should (not_found), or
                    // make_dir creates it; keep the lexical path.
                    Err(error) if error.raw_os_error() == Some(libc::ENOENT) => lexical.clone(),
                    Err(error) => return Err(Failure::io(&lexical, "resolve", error)),
                },
                _ => lexical.clone(),
            }
        }
        Err(error) => return Err(Failure::io(&lexical, "resolve", error)),
    };
    if is_process_path(&resolved) {
        return Err(outside_files(path, &resolved));
    }
    Ok(resolved)
}

/// Paths that name processes and their descriptors rather than files.
fn is_process_path(path: &Path) -> bool {
    path.starts_with("/proc")
        || path.starts_with("/dev/fd")
        || ["/dev/stdin", "/dev/stdout", "/dev/stderr"]
            .iter()
            .any(|name| path == Path::new(name))
}

fn outside_files(path: &str, resolved: &Path) -> Failure {
    Failure::new(
        "invalid_path",
        format!(
            "{path} is {}: the files API does not reach into /proc or descriptors",
            resolved.display()
        ),
    )
}

/// `.` and `..` applied without touching the filesystem; `..` at the root stays at the root.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for component in path.components() {
        match component {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(name) => out.push(name),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

/// Only regular files are read or written: a FIFO would block, a device never end.
fn require_regular(path: &Path, meta: &Metadata) -> Result<(), Failure> {
    if meta.is_dir() {
        return Err(Failure::new(
            "is_a_directory",
            format!("{} is a directory", path.display()),
        ));
    }
    if !meta.is_file() {
        return Err(Failure::new(
            "invalid_path",
            format!("{} is not a regular file", path.display()),
        ));
    }
    Ok(())
}

fn read(path: &Path, mut stdout: File) -> Result<(), Failure> {
    // O_NONBLOCK: opening a FIFO must not wait for a writer (it is refused just after).
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| Failure::io(path, "open", e))?;
    let meta = file.metadata().map_err(|e| Failure::io(path, "stat", e))?;
    require_regular(path, &meta)?;
    // Sized for the file (one byte more: the second read sees its end), at least 64 KiB (a file
    // that grows meanwhile is still read in large pieces): a small file's buffer comes from
    // the heap, not from an mmap and munmap of a whole chunk (two syscalls, each tens of
    // microseconds under gVisor's ptrace platform).
    let size = usize::try_from(meta.len()).unwrap_or(usize::MAX);
    let mut buffer = vec![0u8; size.saturating_add(1).clamp(SMALL_READ_BYTES, CHUNK_BYTES)];
    loop {
        let n = match file.read(&mut buffer) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(Failure::io(path, "read", error)),
        };
        stdout
            .write_all(&buffer[..n])
            .map_err(|e| Failure::io(Path::new("stdout"), "write", e))?;
    }
}

/// Writes stdin's bytes (all but the trailer) to `path`; its size. Replacing writes go to a
/// temporary file in the same directory, renamed onto `path` only when the trailer arrived;
/// otherwise (and on any error) the temporary is removed.
fn write(path: &Path, mode: u32, append: bool, stdin: File) -> Result<u64, Failure> {
    match fs::metadata(path) {
        Ok(meta) => require_regular(path, &meta)?,
        Err(error) if error.raw_os_error() == Some(libc::ENOENT) => {}
        Err(error) => return Err(Failure::io(path, "stat", error)),
    }
    if append {
        let mut file = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(mode)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .map_err(|e| Failure::io(path, "open", e))?;
        copy_until_trailer(stdin, &mut file, path)?;
        return file
            .metadata()
            .map(|meta| meta.len())
            .map_err(|e| Failure::io(path, "stat", e));
    }
    let (Some(directory), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(Failure::new(
            "is_a_directory",
            format!("{} is a directory", path.display()),
        ));
    };
    let temporary = directory.join(format!(
        ".{}.upload-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&temporary)
        .map_err(|e| Failure::io(path, "create", e))?;
    let written = copy_until_trailer(stdin, &mut file, path).and_then(|size| {
        // The mode asked for, whatever the umask took away.
        file.set_permissions(fs::Permissions::from_mode(mode))
            .and_then(|()| fs::rename(&temporary, path))
            .map(|()| size)
            .map_err(|e| Failure::io(path, "write", e))
    });
    if written.is_err() {
        let _ = fs::remove_file(&temporary);
    }
    written
}

/// Copies `stdin` into `file`, holding back the last [`FILE_COMMIT_TRAILER_BYTES`]; at the
/// end those must be the trailer for the bytes copied, else the write was not finished.
fn copy_until_trailer(mut stdin: File, file: &mut File, path: &Path) -> Result<u64, Failure> {
    let mut buffer = vec![0u8; CHUNK_BYTES + FILE_COMMIT_TRAILER_BYTES];
    // `buffer[..held]` are bytes read and not yet written (at most the trailer's length once
    // a chunk has been written).
    let mut held = 0;
    let mut written: u64 = 0;
    loop {
        let n = match stdin.read(&mut buffer[held..]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(Failure::io(Path::new("stdin"), "read", error)),
        };
        held += n;
        if held > FILE_COMMIT_TRAILER_BYTES {
            let ready = held - FILE_COMMIT_TRAILER_BYTES;
            file.write_all(&buffer[..ready])
                .map_err(|e| Failure::io(path, "write", e))?;
            written += ready as u64;
            buffer.copy_within(ready..held, 0);
            held = FILE_COMMIT_TRAILER_BYTES;
        }
    }
    let trailer = &buffer[..held];
    let committed = held == FILE_COMMIT_TRAILER_BYTES
        && trailer[8..] == FILE_COMMIT_MAGIC
        && trailer[..8] == written.to_le_bytes();
    if !committed {
        return Err(Failure::new(
            "io",
            format!(
                "the transfer to {} ended before the end of the file",
                path.display()
            ),
        ));
    }
    Ok(written)
}

fn list(path: &Path, depth: u32) -> Result<Value, Failure> {
    let meta = fs::metadata(path).map_err(|e| Failure::io(path, "list", e))?;
    if !meta.is_dir() {
        return Err(Failure::new(
            "not_a_directory",
            format!("{} is not a directory", path.display()),
        ));
    }
    let mut entries = Vec::new();
    let mut truncated = false;
    // Breadth first, so that a truncated listing keeps the shallow entries.
    let mut directories = vec![(path.to_path_buf(), 1)];
    let mut next = 0;
    while next < directories.len() && !truncated {
        let (directory, level) = directories[next].clone();
        next += 1;
        let read = match fs::read_dir(&directory) {
            Ok(read) => read,
            // The top directory must be readable; below, an unreadable one is listed empty.
            Err(error) if level == 1 => return Err(Failure::io(&directory, "list", error)),
            Err(_) => continue,
        };
        let mut names: Vec<_> = read.filter_map(Result::ok).map(|e| e.path()).collect();
        names.sort();
        for child in names {
            if entries.len() >= MAX_LIST_ENTRIES {
                truncated = true;
                break;
            }
            let Ok(meta) = fs::symlink_metadata(&child) else {
                continue;
            };
            if meta.is_dir() && level < depth {
                directories.push((child.clone(), level + 1));
            }
            entries.push(entry(&child, &meta));
        }
    }
    let mut reply = json!({ "entries": entries });
    if truncated {
        reply["truncated"] = json!(true);
    }
    Ok(reply)
}

/// One entry of a listing or a stat, as docs/protocol.md shows it.
fn entry(path: &Path, meta: &Metadata) -> Value {
    let kind = if meta.is_symlink() {
        "symlink"
    } else if meta.is_dir() {
        "dir"
    } else if meta.is_file() {
        "file"
    } else {
        "other"
    };
    let mtime_unix_ms = meta
        .modified()
        .ok()
        .and_then(|time| time.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |since| since.as_millis() as u64);
    json!({
        "name": path.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_else(|| "/".into()),
        "path": path.to_string_lossy(),
        "type": kind,
        "size": meta.len(),
        "mode": meta.mode() & 0o7777,
        "mtime_unix_ms": mtime_unix_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_dot_beyond_the_root_stays_at_the_root() {
        assert_eq!(
            normalize(Path::new("/../../etc/./passwd")),
            Path::new("/etc/passwd")
        );
        assert_eq!(normalize(Path::new("/root/../../..")), Path::new("/"));
        assert_eq!(normalize(Path::new("/root/a/../b")), Path::new("/root/b"));
    }

    #[test]
    fn proc_and_descriptor_paths_are_refused() {
        for path in [
            "/proc/self/fd/1",
            "/dev/fd/0",
            "/proc/1/fd/0",
            "/dev/stdout",
            "../proc/1/environ",
        ] {
            let failure = resolve(path).expect_err(path);
            assert_eq!(failure.code, "invalid_path", "{path}: {}", failure.message);
        }
    }

    #[test]
    fn bad_paths_have_their_codes() {
        assert_eq!(resolve("").unwrap_err().code, "invalid_path");
        assert_eq!(
            resolve(&"a".repeat(5000)).unwrap_err().code,
            "path_too_long"
        );
        assert_eq!(resolve("a\0b").unwrap_err().code, "invalid_path");
    }

    #[test]
    fn a_write_commits_only_with_its_trailer() {
        let directory = std::env::temp_dir().join(format!("files-test-{}", std::process::id()));
        fs::create_dir_all(&directory).unwrap();
        let target = directory.join("out.bin");
        let feed = |bytes: Vec<u8>| {
            let (reader, mut writer) = std::io::pipe().unwrap();
            std::thread::spawn(move || writer.write_all(&bytes).unwrap());
            File::from(std::os::fd::OwnedFd::from(reader))
        };
        let mut data = b"hello".to_vec();
        data.extend_from_slice(&crate::protocol::file_commit_trailer(5));
        assert_eq!(write(&target, 0o600, false, feed(data)).unwrap(), 5);
        assert_eq!(fs::read(&target).unwrap(), b"hello");
        assert_eq!(fs::metadata(&target).unwrap().mode() & 0o777, 0o600);
        // Cut short: the old content stays and no temporary is left.
        let failure = write(&target, 0o600, false, feed(b"goodbye".to_vec())).unwrap_err();
        assert_eq!(failure.code, "io");
        assert_eq!(fs::read(&target).unwrap(), b"hello");
        assert_eq!(fs::read_dir(&directory).unwrap().count(), 1);
        fs::remove_dir_all(&directory).unwrap();
    }
}
