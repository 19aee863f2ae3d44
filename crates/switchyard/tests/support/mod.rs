//! A `switchyard control-plane` process for the fleet and chaos tests, and admin helpers.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_switchyard");
pub const TOKEN: &str = "fleet-admin-token-0123456789abcdef";

pub struct ControlPlaneProcess {
    pub child: Child,
    pub admin: SocketAddr,
    pub grpc: SocketAddr,
}

impl ControlPlaneProcess {
    pub fn start(database_url: &str) -> ControlPlaneProcess {
        Self::start_at(database_url, "127.0.0.1:0", "127.0.0.1:0")
    }

    /// Starts one on given addresses (a restart reuses the ports it had).
    pub fn start_at(database_url: &str, admin: &str, grpc: &str) -> ControlPlaneProcess {
        let mut child = Command::new(BIN)
            .args([
                "--log-format",
                "json",
                "--log",
                "warn,switchyard_control_plane=info",
                "control-plane",
                "--database-url",
                database_url,
                "--admin-token",
                TOKEN,
                "--encryption-key",
                "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
                "--admin-listen",
                admin,
                "--grpc-listen",
                grpc,
            ])
            .env_remove("SWITCHYARD_ADMIN_TOKEN")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let Ok(v) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                let address = v["address"]
                    .as_str()
                    .and_then(|a| a.parse::<SocketAddr>().ok());
                match (v["message"].as_str(), address) {
                    (Some("admin API listening"), Some(a)) => tx.send(("admin", a)).ok(),
                    (Some("config distribution (gRPC) listening"), Some(a)) => {
                        tx.send(("grpc", a)).ok()
                    }
                    _ => None,
                };
            }
        });
        let (mut admin, mut grpc) = (None, None);
        while admin.is_none() || grpc.is_none() {
            match rx.recv_timeout(Duration::from_secs(30)) {
                Ok(("admin", a)) => admin = Some(a),
                Ok((_, a)) => grpc = Some(a),
                Err(e) => panic!("the control plane did not start: {e}"),
            }
        }
        ControlPlaneProcess {
            child,
            admin: admin.unwrap(),
            grpc: grpc.unwrap(),
        }
    }

    /// Resident memory (VmRSS) in bytes.
    pub fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap();
        kb * 1024
    }
}

impl Drop for ControlPlaneProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub async fn call(
    http: &reqwest::Client,
    cp: &ControlPlaneProcess,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> Value {
    let mut req = http
        .request(method, format!("http://{}/api/v1{path}", cp.admin))
        .bearer_auth(TOKEN);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    assert!(status.is_success(), "{path}: {status} {body}");
    body
}

pub async fn metric(http: &reqwest::Client, cp: &ControlPlaneProcess, name: &str) -> f64 {
    let text = http
        .get(format!("http://{}/metrics", cp.admin))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| {
            l.strip_prefix(name)
                .and_then(|rest| rest.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

impl ControlPlaneProcess {
    /// Sends `signal` (`STOP`, `CONT`, `KILL`) to the process.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([format!("-{signal}"), self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} failed");
    }

    /// SIGKILL, and wait for the process to be gone.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `switchyard dev` process on free ports, with the URLs and token its banner prints.
pub struct DevProcess {
    pub child: Child,
    /// `http://…/api/v1`.
    pub admin: String,
    pub token: String,
    /// `http://…` of the traffic listener.
    pub gateway: String,
    _data: tempfile::TempDir,
}

impl DevProcess {
    /// Starts `switchyard dev` with `extra` flags (after `dev`).
    pub fn start(extra: &[&str]) -> DevProcess {
        use std::io::Read;
        let data = tempfile::tempdir().unwrap();
        let mut child = Command::new(BIN)
            .args(["--log-format", "json", "--log", "warn", "dev", "--data-dir"])
            .arg(data.path())
            .args([
                "--admin-listen",
                "127.0.0.1:0",
                "--grpc-listen",
                "127.0.0.1:0",
            ])
            .args(["--listen", "127.0.0.1:0"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = child.stderr.take().unwrap();
        // Drained so the process never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut sink = Vec::new();
            let _ = stderr.read_to_end(&mut sink);
        });
        let stdout = child.stdout.take().unwrap();
        let mut banner = String::new();
        let mut lines = BufReader::new(stdout).lines();
        for line in lines.by_ref() {
            let line = line.unwrap();
            banner.push_str(&line);
            banner.push('\n');
            if line.trim_start().starts_with("gRPC") {
                break;
            }
        }
        std::thread::spawn(move || lines.for_each(drop));
        let url = |label: &str| -> String {
            banner
                .lines()
                .find_map(|l| l.trim_start().strip_prefix(label))
                .and_then(|rest| rest.split_whitespace().next())
                .unwrap_or_else(|| panic!("no '{label}' in the banner:\n{banner}"))
                .to_owned()
        };
        let (admin, gateway) = (url("admin API"), url("gateway"));
        let token = std::fs::read_to_string(data.path().join("admin-token"))
            .unwrap()
            .trim()
            .to_owned();
        DevProcess {
            child,
            admin,
            token,
            gateway,
            _data: data,
        }
    }

    /// An admin call that must succeed; its JSON answer.
    pub async fn call(&self, http: &reqwest::Client, path: &str, body: Value) -> Value {
        let resp = http
            .post(format!("{}{path}", self.admin))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "{path}: {status} {body}");
        body
    }
}

impl Drop for DevProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
