//! The control plane's HAProxy: `deploy/control-plane/haproxy-config` renders `haproxy.cfg`
//! from the bootstrap's outputs with real terraform (its `templatefile()`, nothing else), the
//! real `haproxy -c` accepts it, and a real haproxy started from it on loopback relays a TCP
//! connection through each of the five listeners to the load balancer behind it, here a local
//! listener that answers with its own name.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::Duration;

use crate::support::{free_port, poll, spawn_session, terraform};

const LISTENERS: [&str; 5] = [
    "nomad",
    "consul_backend",
    "consul_tenants",
    "prometheus",
    "namesvr",
];

fn module_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/control-plane/haproxy-config")
}

/// A stand-in for an internal load balancer: every connection gets `name` and is closed.
fn stand_in(name: &'static str) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind stand-in");
    let port = listener.local_addr().expect("addr").port();
    thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let _ = stream.write_all(name.as_bytes());
        }
    });
    port
}

/// What a connection to `port` is answered with, if it is answered at all.
fn answer(port: u16) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    Some(text)
}

fn hcl_map(entries: impl IntoIterator<Item = (String, String)>) -> String {
    let body: Vec<String> = entries
        .into_iter()
        .map(|(k, v)| format!("    {k} = {v}"))
        .collect();
    format!("{{\n{}\n  }}", body.join("\n"))
}

/// Renders the module twice through a root module that calls it: as the control plane uses it
/// (default ports, IPv6 load balancers), and on loopback in front of the stand-ins.
fn render(dir: &Path, stand_ins: &BTreeMap<&str, u16>, ports: &BTreeMap<&str, u16>) {
    let loopback = hcl_map(stand_ins.iter().map(|(name, port)| {
        (
            name.to_string(),
            format!(r#"{{ address = "127.0.0.1", port = {port} }}"#),
        )
    }));
    let production = hcl_map(LISTENERS.iter().enumerate().map(|(i, name)| {
        let port = if *name == "consul_tenants" {
            8500
        } else {
            4000 + i
        };
        // One in brackets, as a URL-style output gives it.
        let address = if i == 0 {
            format!("[fd00:10::{i}]")
        } else {
            format!("fd00:10::{i}")
        };
        (
            name.to_string(),
            format!(r#"{{ address = "{address}", port = {port} }}"#),
        )
    }));
    let ports = hcl_map(ports.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let main = format!(
        r#"module "production" {{
  source   = "{module}"
  backends = {production}
}}

module "loopback" {{
  source       = "{module}"
  bind_address = "127.0.0.1"
  backends     = {loopback}
  ports        = {ports}
}}

output "production" {{
  value = module.production.haproxy_cfg
}}

output "loopback" {{
  value = module.loopback.haproxy_cfg
}}
"#,
        module = module_dir().display(),
    );
    fs::write(dir.join("main.tf"), main).expect("write main.tf");
    terraform(dir, &["init", "-input=false", "-no-color"]).assert_success();
    terraform(
        dir,
        &["apply", "-auto-approve", "-input=false", "-no-color"],
    )
    .assert_success();
    for name in ["production", "loopback"] {
        let out = terraform(dir, &["output", "-raw", name]);
        out.assert_success();
        fs::write(dir.join(format!("{name}.cfg")), &out.stdout).expect("write cfg");
    }
}

fn haproxy_check(cfg: &Path) {
    let out = Command::new("haproxy")
        .arg("-c")
        .arg("-f")
        .arg(cfg)
        .output()
        .expect("run haproxy -c (apt-get install haproxy)");
    assert!(
        out.status.success(),
        "haproxy -c -f {} failed:\n{}{}\n{}",
        cfg.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        fs::read_to_string(cfg).unwrap_or_default()
    );
}

/// `listen NAME` sections as name → (bind line, server line).
fn sections(cfg: &str) -> BTreeMap<String, (String, String)> {
    let mut out = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in cfg.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix("listen ") {
            current = Some(name.to_owned());
            out.insert(name.to_owned(), (String::new(), String::new()));
        } else if let Some(name) = &current {
            let entry = out.get_mut(name).expect("section");
            if line.starts_with("bind ") {
                entry.0 = line.to_owned();
            } else if line.starts_with("server ") {
                entry.1 = line.to_owned();
            }
        }
    }
    out
}

#[test]
fn every_listener_relays_to_its_load_balancer() {
    let dir = tempfile::tempdir().expect("temp dir");
    let stand_ins: BTreeMap<&str, u16> = LISTENERS.iter().map(|n| (*n, stand_in(n))).collect();
    let ports: BTreeMap<&str, u16> = LISTENERS.iter().map(|n| (*n, free_port())).collect();
    render(dir.path(), &stand_ins, &ports);

    // As the control plane runs it: the five ports of the original, the tenants' Consul on
    // 8501 in front of port 8500, every listener taking IPv4 and IPv6.
    let production = dir.path().join("production.cfg");
    haproxy_check(&production);
    let found = sections(&fs::read_to_string(&production).expect("read cfg"));
    let expected = [
        ("nomad", 4646, "fd00:10::0:4000"),
        ("consul_backend", 8500, "fd00:10::1:4001"),
        ("consul_tenants", 8501, "fd00:10::2:8500"),
        ("prometheus", 9090, "fd00:10::3:4003"),
        ("namesvr", 8080, "fd00:10::4:4004"),
    ];
    assert_eq!(found.len(), expected.len(), "{found:#?}");
    for (name, port, server) in expected {
        let (bind, srv) = &found[name];
        assert_eq!(bind, &format!("bind :::{port} v4v6"), "{name}");
        assert_eq!(srv, &format!("server lb {server} check"), "{name}");
    }

    // On loopback, for real.
    let loopback = dir.path().join("loopback.cfg");
    haproxy_check(&loopback);
    let mut cmd = Command::new("haproxy");
    cmd.arg("-db").arg("-f").arg(&loopback);
    let mut haproxy = spawn_session(cmd, dir.path());
    for name in LISTENERS {
        let port = ports[name];
        let reached = poll(
            || {
                if let Some(outcome) = haproxy.try_wait() {
                    panic!("haproxy exited\n{outcome}");
                }
                answer(port).as_deref() == Some(name)
            },
            Duration::from_secs(20),
        );
        assert!(
            reached,
            "listener {name} on port {port} did not reach its stand-in (last answer {:?})\n{}",
            answer(port),
            haproxy.stderr()
        );
    }
    // The stand-ins answer with their names, so a listener wired to the wrong one shows.
    assert!(haproxy.try_wait().is_none(), "haproxy stopped");
}

/// The `haproxy.cfg` of the plain manifest's ConfigMap, dedented.
fn manifest_cfg() -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/k8s/haproxy.yaml");
    let text = fs::read_to_string(path).expect("read haproxy.yaml");
    let start = text
        .find("  haproxy.cfg: |\n")
        .expect("haproxy.cfg in the ConfigMap");
    let block: Vec<&str> = text[start..]
        .lines()
        .skip(1)
        .take_while(|l| l.is_empty() || l.starts_with("    "))
        .map(|l| l.strip_prefix("    ").unwrap_or(l))
        .collect();
    block.join("\n") + "\n"
}

/// A configuration without its comments and blank lines.
fn significant(cfg: &str) -> Vec<String> {
    cfg.lines()
        .map(str::trim_end)
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_plain_manifest_carries_what_the_module_renders() {
    let cfg = manifest_cfg();
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("manifest.cfg");
    fs::write(&file, &cfg).expect("write cfg");
    haproxy_check(&file);

    // The module, given the addresses the manifest stands for, renders the same thing.
    let found = sections(&cfg);
    let backends = hcl_map(LISTENERS.iter().map(|name| {
        let server = &found
            .get(*name)
            .unwrap_or_else(|| panic!("no {name} in\n{cfg}"))
            .1;
        let target = server.split_whitespace().nth(2).expect("server address");
        let (address, port) = target.rsplit_once(':').expect("address:port");
        (
            name.to_string(),
            format!(r#"{{ address = "{address}", port = {port} }}"#),
        )
    }));
    let main = format!(
        "module \"cfg\" {{\n  source   = \"{}\"\n  backends = {backends}\n}}\n\noutput \"cfg\" {{\n  value = module.cfg.haproxy_cfg\n}}\n",
        module_dir().display()
    );
    fs::write(dir.path().join("main.tf"), main).expect("write main.tf");
    terraform(dir.path(), &["init", "-input=false", "-no-color"]).assert_success();
    terraform(
        dir.path(),
        &["apply", "-auto-approve", "-input=false", "-no-color"],
    )
    .assert_success();
    let rendered = terraform(dir.path(), &["output", "-raw", "cfg"]);
    rendered.assert_success();
    assert_eq!(significant(&cfg), significant(&rendered.stdout));
}
