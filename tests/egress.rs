//! Network egress against the real server, runsc and host networking. The test builds its own
//! "internet": a network namespace with a veth to the host and two HTTP servers in it, one on a
//! port the egress policy allows and one on a port it does not. Everything it creates
//! (namespace, servers) is removed by `Drop`, also on failure.
//!
//!     cargo test --test egress -- --test-threads=1

mod common;
mod ws;

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{wait_until, TestServer};
use serde_json::json;

const HTTP_SERVER: &str = "
import socket, sys
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind((sys.argv[1], int(sys.argv[2])))
server.listen(16)
while True:
    connection, _ = server.accept()
    connection.recv(4096)
    connection.sendall(b'HTTP/1.0 200 OK\\r\\nContent-Length: 2\\r\\n\\r\\nok')
    connection.close()
";

/// A destination host in its own network namespace, reachable from the host by routing.
struct Destination {
    netns: String,
    address: String,
    servers: Vec<Child>,
}

fn ip(args: &[&str]) {
    let status = Command::new("ip").args(args).status().expect("ip runs");
    assert!(status.success(), "ip {}", args.join(" "));
}

impl Destination {
    fn start(ports: &[u16]) -> Destination {
        // Unique per process: tests of several checkouts may run on one machine.
        let id = std::process::id() % 200 + 20;
        let netns = format!("crs-test-dest-{id}");
        let (host_side, peer) = (format!("crsdh{id}"), format!("crsdp{id}"));
        let (host_ip, address) = (format!("10.214.{id}.1"), format!("10.214.{id}.2"));
        let _ = Command::new("ip")
            .args(["netns", "delete", &netns])
            .stderr(Stdio::null())
            .status();
        ip(&["netns", "add", &netns]);
        let mut destination = Destination {
            netns: netns.clone(),
            address: address.clone(),
            servers: Vec::new(),
        };
        ip(&[
            "link", "add", &host_side, "type", "veth", "peer", "name", &peer,
        ]);
        ip(&["link", "set", &peer, "netns", &netns]);
        ip(&[
            "address",
            "add",
            &format!("{host_ip}/30"),
            "dev",
            &host_side,
        ]);
        ip(&["link", "set", &host_side, "up"]);
        ip(&[
            "-n",
            &netns,
            "address",
            "add",
            &format!("{address}/30"),
            "dev",
            &peer,
        ]);
        ip(&["-n", &netns, "link", "set", &peer, "up"]);
        ip(&["-n", &netns, "link", "set", "lo", "up"]);
        ip(&["-n", &netns, "route", "add", "default", "via", &host_ip]);
        for port in ports {
            // A minimal HTTP server: http.server looks up its own name first, which stalls
            // in a namespace without DNS.
            let child = Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &netns,
                    "/usr/bin/python3",
                    "-c",
                    HTTP_SERVER,
                    &address,
                ])
                .arg(port.to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("the destination server starts");
            destination.servers.push(child);
        }
        let listening = wait_until(Duration::from_secs(10), || {
            let output = Command::new("ip")
                .args(["netns", "exec", &netns, "ss", "-ltn"])
                .output();
            let text = output
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            ports
                .iter()
                .all(|port| text.contains(&format!("{address}:{port}")))
        });
        assert!(listening, "the destination servers did not start");
        destination
    }
}

impl Drop for Destination {
    fn drop(&mut self) {
        for server in &mut self.servers {
            let _ = server.kill();
            let _ = server.wait();
        }
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.netns])
            .status();
    }
}

/// Connect from inside the sandbox to each target; prints `host:port OPEN|<error>` lines.
const PROBE: &str = r#"
import socket, sys, struct
route = [line.split() for line in open('/proc/net/route')][1:]
gateway = [r for r in route if r[1] == '00000000'][0][2]
host = socket.inet_ntoa(struct.pack('<L', int(gateway, 16)))
targets = [t.replace('HOST', host) for t in sys.argv[1:]] if len(sys.argv) > 1 else []
for target in TARGETS:
    target = target.replace('HOST', host)
    name, port = target.rsplit(':', 1)
    s = socket.socket(); s.settimeout(3)
    try:
        s.connect((name, int(port))); result = 'OPEN'
    except Exception as error:
        result = type(error).__name__
    finally:
        s.close()
    print(target.replace(host, 'HOST'), result)
"#;

fn probe(created: &mut ws::Created, targets: &[String]) -> String {
    let list = serde_json::to_string(targets).unwrap();
    let code = PROBE.replace("TARGETS", &list);
    let result = created.ws.run_with("python", &code, json!({"timeout": 60}));
    result.stdout
}

/// Namespaces and host-side veths of the sandboxes of the server on `state_dir` (tests run in
/// parallel; each looks at its own server's names only).
fn sandbox_network_names(state_dir: &std::path::Path) -> BTreeSet<String> {
    let tag = sandbox::runtime::network::instance_tag(state_dir);
    let (netns_prefix, veth_prefix) = (format!("crs-{tag}-"), format!("cv{tag}"));
    let mut names: BTreeSet<String> = std::fs::read_dir("/var/run/netns")
        .map(|entries| {
            entries
                .flatten()
                .map(|entry| entry.file_name().to_string_lossy().into_owned())
                .filter(|name| name.starts_with(&netns_prefix))
                .collect()
        })
        .unwrap_or_default();
    let links = Command::new("ip")
        .args(["-o", "link"])
        .output()
        .expect("ip runs");
    for line in String::from_utf8_lossy(&links.stdout).lines() {
        if let Some(name) = line.split(": ").nth(1) {
            let name = name.split('@').next().unwrap_or(name);
            if name.starts_with(&veth_prefix) {
                names.insert(name.to_string());
            }
        }
    }
    names
}

#[test]
fn egress_follows_the_policy_and_leaves_nothing_behind() {
    let destination = Destination::start(&[8000, 8001]);
    let allowed = format!("{}:8000", destination.address);
    let denied = format!("{}:8001", destination.address);

    let server = TestServer::start(&[
        ("SANDBOX_EGRESS_ALLOW", allowed.as_str()),
        ("SANDBOX_EGRESS_SUBNET", "10.215.0.0/16"),
        ("SANDBOX_POOL_SIZE", "0"),
    ]);
    let server_port = format!("HOST:{}", server.port);
    let targets = vec![
        allowed.clone(),
        denied.clone(),
        "169.254.169.254:80".into(),
        server_port.clone(),
    ];

    let mut with_network = ws::create(&server, json!({"enable_network": true}));
    let added = sandbox_network_names(&server.state_dir);
    assert_eq!(
        added.len(),
        2,
        "one namespace and one veth for the sandbox: {added:?}"
    );
    let out = probe(&mut with_network, &targets);
    assert!(
        out.contains(&format!("{allowed} OPEN")),
        "allowed destination: {out}"
    );
    assert!(
        !out.contains(&format!("{denied} OPEN")),
        "disallowed port: {out}"
    );
    assert!(
        !out.contains("169.254.169.254:80 OPEN"),
        "link-local (metadata server): {out}"
    );
    assert!(
        !out.contains(&format!("{server_port} OPEN")),
        "the server's own port: {out}"
    );
    let fetched = with_network.ws.run_with(
        "python",
        &format!("import urllib.request; print(urllib.request.urlopen('http://{allowed}/', timeout=5).status)"),
        json!({"timeout": 30}),
    );
    assert_eq!(fetched.stdout.trim(), "200", "{fetched:?}");

    let mut without = ws::create(&server, json!({}));
    let out = probe(&mut without, &targets);
    assert!(
        !out.contains("OPEN"),
        "no egress: nothing is reachable: {out}"
    );

    with_network.ws.kill_sandbox();
    without.ws.kill_sandbox();
    assert!(
        wait_until(Duration::from_secs(10), || sandbox_network_names(
            &server.state_dir
        )
        .is_empty()),
        "the sandbox's namespace and veth are removed with it"
    );
    let tables = Command::new("nft")
        .args(["list", "tables"])
        .output()
        .expect("nft runs");
    let tables = String::from_utf8_lossy(&tables.stdout).into_owned();
    let table = format!(
        "crs_{}",
        sandbox::runtime::network::instance_tag(&server.state_dir)
    );
    drop(server);
    assert!(
        !tables.contains(&table),
        "no egress table once no sandbox has egress: {tables}"
    );
}

#[test]
fn a_killed_server_leaves_nothing_after_its_restart() {
    let state_dir = common::new_state_dir();
    let mut first = TestServer::start_on(
        &state_dir,
        &[
            ("SANDBOX_POOL_SIZE", "0"),
            ("SANDBOX_EGRESS_SUBNET", "10.216.0.0/16"),
        ],
        false,
    );
    let mut created = ws::create(&first, json!({"enable_network": true}));
    let ran = created.ws.run("bash", "echo up");
    assert_eq!(ran.stdout, "up\n");
    let added = sandbox_network_names(&state_dir);
    assert_eq!(
        added.len(),
        2,
        "one namespace and one veth for the sandbox: {added:?}"
    );
    first.sigkill();
    drop(created);
    let second = TestServer::start_on(
        &state_dir,
        &[
            ("SANDBOX_POOL_SIZE", "0"),
            ("SANDBOX_EGRESS_SUBNET", "10.216.0.0/16"),
        ],
        true,
    );
    let left = sandbox_network_names(&state_dir);
    assert!(
        left.is_empty(),
        "the killed server's namespace and veth are removed at restart: {left:?}"
    );
    second.assert_healthy();
}
