//! The libraries of the sandbox image (sandbox-image/packages.txt, requirements.txt) and pip,
//! against the real server, runsc and image (`SANDBOX_ROOTFS` if set, else the default path):
//! the usual data libraries import in a fresh sandbox without network and matplotlib writes a
//! PNG; `pip install` installs from the operator's wheelhouse (`SANDBOX_WHEELHOUSE`) with no
//! extra flags; a package that is nowhere fails quickly with pip's own error.
//!
//!     cargo test --test libraries -- --test-threads=1

mod common;
mod ws;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::TestServer;
use serde_json::Value;

/// Every execution here is given this much wall clock (imports under gVisor take seconds).
const EXEC_TIMEOUT_SECS: f64 = 120.0;
/// A pip install of a package that is nowhere must fail within this.
const PIP_FAILS_WITHIN: Duration = Duration::from_secs(30);
/// `import tinypkg; print(tinypkg.VALUE)` prints this.
const TINY_VALUE: &str = "tinypkg from the wheelhouse";

/// A server whose sandboxes have no network at all (egress off for every sandbox).
fn offline_server(extra_env: &[(&str, &str)]) -> TestServer {
    let mut env = vec![("SANDBOX_EGRESS", "off")];
    env.extend_from_slice(extra_env);
    TestServer::start(&env)
}

fn run(server: &TestServer, language: &str, code: &str) -> Value {
    server.execute_json(language, code, Some(EXEC_TIMEOUT_SECS))
}

fn assert_success(result: &Value) {
    assert_eq!(result["exit_code"], 0, "{result:#}");
    assert_eq!(result["reason"], "exited", "{result:#}");
}

fn stdout_lines(result: &Value) -> Vec<String> {
    result["stdout"]
        .as_str()
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

fn decode_hex(text: &str) -> Vec<u8> {
    assert!(text.len().is_multiple_of(2), "odd hex length");
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex digit"))
        .collect()
}

/// A directory removed (with its contents) on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let path = PathBuf::from(format!("/tmp/crs-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create a temporary directory");
        TempDir(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Write `tinypkg-1.0-py3-none-any.whl` (a pure-Python wheel: `tinypkg/__init__.py` with
/// `VALUE`, and the dist-info pip needs) into `dir`, with the host's python3 and only its
/// standard library (no pip, no network). Returns the wheel's path.
fn build_tiny_wheel(dir: &Path) -> PathBuf {
    const SCRIPT: &str = r#"
import base64, hashlib, sys, zipfile
out, value = sys.argv[1], sys.argv[2]
files = {
    "tinypkg/__init__.py": "VALUE = %r\n" % value,
    "tinypkg-1.0.dist-info/METADATA":
        "Metadata-Version: 2.1\nName: tinypkg\nVersion: 1.0\nSummary: test wheel\n",
    "tinypkg-1.0.dist-info/WHEEL":
        "Wheel-Version: 1.0\nGenerator: cloud-run-sandbox-tests\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n",
}
record = []
with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as whl:
    for name, text in files.items():
        data = text.encode()
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append("%s,sha256=%s,%d" % (name, digest, len(data)))
        whl.writestr(name, data)
    record.append("tinypkg-1.0.dist-info/RECORD,,")
    whl.writestr("tinypkg-1.0.dist-info/RECORD", "\n".join(record) + "\n")
"#;
    let wheel = dir.join("tinypkg-1.0-py3-none-any.whl");
    let status = Command::new("python3")
        .arg("-c")
        .arg(SCRIPT)
        .arg(&wheel)
        .arg(TINY_VALUE)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .status()
        .expect("run the host's python3 to build a wheel");
    assert!(status.success(), "building the test wheel failed: {status}");
    wheel
}

/// `pip install PACKAGE` of something that exists nowhere: fails (non-zero) within
/// [`PIP_FAILS_WITHIN`], with pip's error naming the package on stderr.
fn assert_pip_install_fails_fast(server: &TestServer, package: &str) {
    let started = Instant::now();
    let result = run(server, "bash", &format!("pip install {package}"));
    let elapsed = started.elapsed();
    assert!(
        elapsed < PIP_FAILS_WITHIN,
        "pip install {package} took {elapsed:?}: {result:#}"
    );
    assert_eq!(result["reason"], "exited", "{result:#}");
    assert_ne!(result["exit_code"], 0, "{result:#}");
    let stderr = result["stderr"].as_str().unwrap_or_default();
    assert!(
        stderr.contains(&format!("No matching distribution found for {package}")),
        "not pip's error: {result:#}"
    );
}

#[test]
fn data_libraries_import_and_plot_to_png_without_network() {
    let server = offline_server(&[]);
    // MPLBACKEND is removed to check the image's own default (/etc/matplotlibrc), and the
    // network really is off: requests fails at once instead of hanging.
    let code = r#"
import os
os.environ.pop("MPLBACKEND", None)
import numpy, pandas, matplotlib, requests
import scipy, sympy, PIL, yaml, bs4, lxml, dateutil, pytz, tabulate, openpyxl
import matplotlib.pyplot as plt
print("backend", matplotlib.get_backend().lower())
frame = pandas.DataFrame({"x": numpy.arange(10), "y": numpy.arange(10) ** 2})
frame.plot(x="x", y="y")
plt.savefig("/tmp/plot.png")
try:
    requests.get("http://example.com/", timeout=5)
    print("network: reachable")
except requests.exceptions.ConnectionError:
    print("network: unreachable")
print("png", open("/tmp/plot.png", "rb").read().hex())
"#;
    let result = run(&server, "python", code);
    assert_success(&result);
    let lines = stdout_lines(&result);
    assert!(lines.iter().any(|line| line == "backend agg"), "{result:#}");
    assert!(
        lines.iter().any(|line| line == "network: unreachable"),
        "{result:#}"
    );
    let hex = lines
        .iter()
        .find_map(|line| line.strip_prefix("png "))
        .unwrap_or_else(|| panic!("no PNG in the output: {result:#}"));
    let png = decode_hex(hex);
    assert!(png.len() > 1000, "PNG of {} bytes", png.len());
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
}

#[test]
fn pip_installs_from_the_wheelhouse_without_flags() {
    let wheelhouse = TempDir::new("wheelhouse");
    build_tiny_wheel(wheelhouse.path());
    let wheelhouse_path = wheelhouse.path().to_str().expect("UTF-8 path").to_string();
    let server = offline_server(&[("SANDBOX_WHEELHOUSE", &wheelhouse_path)]);

    let result = run(
        &server,
        "bash",
        "pip install tinypkg && python3 -c 'import tinypkg; print(tinypkg.VALUE); print(tinypkg.__file__)'",
    );
    assert_success(&result);
    let stdout = result["stdout"].as_str().unwrap_or_default();
    assert!(
        stdout.contains("Successfully installed tinypkg-1.0"),
        "{result:#}"
    );
    let lines = stdout_lines(&result);
    assert!(lines.iter().any(|line| line == TINY_VALUE), "{result:#}");
    // Into the system site (no EXTERNALLY-MANAGED refusal), where Debian's pip puts it.
    assert!(
        lines
            .iter()
            .any(|line| line == "/usr/local/lib/python3.11/dist-packages/tinypkg/__init__.py"),
        "{result:#}"
    );
    assert!(
        stdout.contains("/opt/wheelhouse/tinypkg-1.0-py3-none-any.whl"),
        "not from the wheelhouse: {result:#}"
    );
    // /etc/pip.conf: no root-user warning, no version check.
    let stderr = result["stderr"].as_str().unwrap_or_default();
    assert!(
        !stderr.contains("Running pip as the 'root' user"),
        "pip warned: {result:#}"
    );

    // The next sandbox starts from the image again: the install is gone.
    let fresh = run(&server, "python", "import tinypkg");
    assert_ne!(fresh["exit_code"], 0, "{fresh:#}");

    // What the wheelhouse does not have fails fast, with pip's error.
    assert_pip_install_fails_fast(&server, "no-such-package-in-wheelhouse");
}

#[test]
fn pip_install_without_wheelhouse_or_network_fails_fast() {
    let server = offline_server(&[]);
    assert_pip_install_fails_fast(&server, "requests-but-not-really");
}

/// Install once, start many: packages installed in one sandbox, saved as a filesystem snapshot,
/// are importable in sandboxes started from it, with no network and no wheelhouse involved.
#[test]
fn packages_installed_once_are_ready_in_sandboxes_started_from_a_snapshot() {
    let wheelhouse = TempDir::new("wheelhouse-snapshot");
    build_tiny_wheel(wheelhouse.path());
    let snapshots = TempDir::new("snapshots");
    let wheelhouse_path = wheelhouse.path().to_str().expect("UTF-8 path").to_string();
    let snapshots_path = snapshots.path().to_str().expect("UTF-8 path").to_string();
    let server = offline_server(&[
        ("SANDBOX_WHEELHOUSE", &wheelhouse_path),
        ("FILESYSTEM_SNAPSHOT_PATH", &snapshots_path),
    ]);

    let mut installer = ws::create(&server, serde_json::json!({}));
    let installed = installer.ws.run_with(
        "bash",
        "pip install --quiet tinypkg && python3 -c 'import tinypkg; print(tinypkg.VALUE)'",
        serde_json::json!({"timeout": EXEC_TIMEOUT_SECS}),
    );
    assert_eq!(installed.stdout.trim(), TINY_VALUE, "{installed:?}");
    installer
        .ws
        .send(serde_json::json!({"action": "snapshot_filesystem", "name": "with-tinypkg"}));
    installer
        .ws
        .expect_status("SANDBOX_FILESYSTEM_SNAPSHOT_CREATING");
    installer
        .ws
        .expect_status("SANDBOX_FILESYSTEM_SNAPSHOT_CREATED");
    installer.ws.kill_sandbox();

    // Sandboxes from the snapshot import it from the installed files (no pip involved); a
    // fresh sandbox does not have it.
    for _ in 0..2 {
        let mut started = ws::create(
            &server,
            serde_json::json!({"filesystem_snapshot_name": "with-tinypkg"}),
        );
        let imported = started.ws.run_with(
            "python",
            "import tinypkg; print(tinypkg.VALUE); print(tinypkg.__file__)",
            serde_json::json!({"timeout": EXEC_TIMEOUT_SECS}),
        );
        assert_eq!(
            imported.stdout,
            format!("{TINY_VALUE}\n/usr/local/lib/python3.11/dist-packages/tinypkg/__init__.py\n"),
            "{imported:?}"
        );
        started.ws.kill_sandbox();
    }
    let fresh = run(&server, "python", "import tinypkg");
    assert_ne!(fresh["exit_code"], 0, "{fresh:#}");
}
