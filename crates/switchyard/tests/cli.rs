//! The binary as an operator meets it: flags, one-line errors, `dev`, signals.

// Test code: a panic is a failed test with its location.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use switchyard_testkit::openai::{MOCK_API_KEY, MockOpenAi, reply_text};

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .env_remove("SWITCHYARD_ADMIN_TOKEN")
        .env_remove("SWITCHYARD_DATABASE_URL")
        .env_remove("SWITCHYARD_ENCRYPTION_KEY")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The address after `label` on a line of `dev`'s banner (`  gateway      http://…  (…)`).
fn banner_url<'a>(banner: &'a str, label: &str) -> &'a str {
    banner
        .lines()
        .find_map(|l| l.trim_start().strip_prefix(label))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no {label} line in the banner:\n{banner}"))
}

/// The last non-empty line of stderr: where the one-line reason is.
/// A token the binary accepts (at least 32 bytes).
const LONG_TOKEN: &str = "0123456789abcdef0123456789abcdef";

fn reason(stderr: &str) -> &str {
    stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default()
}

#[test]
fn help_lists_the_three_commands() {
    let (code, stdout, _) = run(&["--help"]);
    assert_eq!(code, 0);
    for cmd in ["control-plane", "gateway", "dev", "usage"] {
        assert!(stdout.contains(cmd), "{stdout}");
    }
    let (code, stdout, _) = run(&["gateway", "--help"]);
    assert_eq!(code, 0);
    for flag in [
        "--control-plane",
        "--gateway",
        "--registration-token",
        "--listen",
        "--cache-dir",
        "--metrics-listen",
        "SWITCHYARD_LISTEN",
        "--usage-spool-max",
        "--usage-shipping",
    ] {
        assert!(stdout.contains(flag), "{flag} missing from gateway --help");
    }
    let (code, stdout, _) = run(&["usage", "--help"]);
    assert_eq!(code, 0);
    for flag in ["--from", "--to", "--group-by", "--format", "--admin-token"] {
        assert!(stdout.contains(flag), "{flag} missing from usage --help");
    }
}

#[test]
fn control_plane_without_admin_token_exits_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/cp.db", dir.path().display());
    let (code, _, stderr) = run(&["control-plane", "--database-url", &url]);
    assert_ne!(code, 0);
    assert!(
        reason(&stderr).starts_with("error: ") && reason(&stderr).contains("--admin-token"),
        "{stderr}"
    );
}

#[test]
fn an_unusable_store_exits_with_a_reason() {
    let (code, _, stderr) = run(&[
        "control-plane",
        "--admin-token",
        LONG_TOKEN,
        "--database-url",
        "mysql://localhost/x",
        "--encryption-key-file",
        "/dev/null",
    ]);
    assert_ne!(code, 0);
    let line = reason(&stderr);
    assert!(line.starts_with("error: "), "{stderr}");

    let (code, _, stderr) = run(&[
        "control-plane",
        "--admin-token",
        LONG_TOKEN,
        "--database-url",
        "postgres://127.0.0.1:1/nothing",
        "--encryption-key",
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        "--admin-listen",
        "127.0.0.1:0",
        "--grpc-listen",
        "127.0.0.1:0",
    ]);
    assert_ne!(code, 0);
    assert!(reason(&stderr).starts_with("error: store"), "{stderr}");
    // stderr is a pipe here (as under `kubectl logs`): the log lines carry no colour codes.
    assert!(
        stderr.contains("exiting"),
        "the error is logged too: {stderr}"
    );
    assert!(
        !stderr.contains('\u{1b}'),
        "ANSI escapes in piped logs: {stderr:?}"
    );
}

#[test]
fn weak_or_padded_tokens_are_refused_and_files_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/cp.db", dir.path().display());
    // Untrimmed: clients' tokens could never match it.
    let (code, _, stderr) = run(&[
        "control-plane",
        "--database-url",
        &url,
        "--admin-token",
        " abc ",
    ]);
    assert_ne!(code, 0);
    let line = reason(&stderr);
    assert!(
        line.starts_with("error: --admin-token") && line.contains("whitespace"),
        "{stderr}"
    );
    // Too short.
    let (code, _, stderr) = run(&[
        "control-plane",
        "--database-url",
        &url,
        "--admin-token",
        "abc",
    ]);
    assert_ne!(code, 0);
    assert!(reason(&stderr).contains("at least 32 bytes"), "{stderr}");
    // From a file (one trailing newline ignored), so it never shows in /proc.
    let token_file = dir.path().join("admin-token");
    std::fs::write(&token_file, "short\n").unwrap();
    let (code, _, stderr) = run(&[
        "control-plane",
        "--database-url",
        &url,
        "--admin-token-file",
        token_file.to_str().unwrap(),
    ]);
    assert_ne!(code, 0);
    assert!(
        reason(&stderr).contains("--admin-token must be at least 32 bytes"),
        "{stderr}"
    );
    let (code, _, stderr) = run(&[
        "gateway",
        "--control-plane",
        "http://127.0.0.1:1",
        "--gateway",
        "g",
        "--registration-token-file",
        dir.path().join("missing").to_str().unwrap(),
    ]);
    assert_ne!(code, 0);
    assert!(
        reason(&stderr).contains("--registration-token-file"),
        "{stderr}"
    );
    let (_, stdout, _) = run(&["control-plane", "--help"]);
    for flag in [
        "--admin-token-file",
        "--database-url-file",
        "--previous-encryption-keys-file",
        "--encryption-key-file",
    ] {
        assert!(
            stdout.contains(flag),
            "{flag} missing from control-plane --help"
        );
    }
    let (_, stdout, _) = run(&["gateway", "--help"]);
    for flag in [
        "--registration-token-file",
        "--client-header-timeout",
        "--client-body-timeout",
        "--max-connections",
        "--upstream-idle-timeout",
        "--max-messages",
        "--max-inflight-request-bytes",
        "--offload-threshold",
        "--guard-max-scan-bytes",
        "--upstream-deny-cidrs",
    ] {
        assert!(stdout.contains(flag), "{flag} missing from gateway --help");
    }
}

#[test]
fn bad_flags_are_refused() {
    let (code, _, stderr) = run(&[
        "gateway",
        "--listen",
        "not-an-address",
        "--control-plane",
        "x",
        "--gateway",
        "g",
        "--registration-token",
        LONG_TOKEN,
    ]);
    assert_eq!(code, 2);
    assert!(stderr.contains("--listen"), "{stderr}");
    let (code, _, _) = run(&["gateway"]);
    assert_eq!(code, 2, "missing required flags");
    let (code, _, stderr) = run(&[
        "control-plane",
        "--admin-token",
        LONG_TOKEN,
        "--encryption-key",
        "short",
    ]);
    assert_ne!(code, 0);
    assert!(reason(&stderr).contains("encryption key"), "{stderr}");
    // Trace export flags: a collector URL, a fraction, a queue of at least one span.
    for (flag, value) in [
        ("--otlp-endpoint", "127.0.0.1:4317"),
        ("--otlp-endpoint", "http://collector:port"),
        ("--otlp-sample-ratio", "1.5"),
        ("--otlp-queue-size", "0"),
        ("--otlp-export-interval", "soon"),
    ] {
        let (code, _, stderr) = run(&["control-plane", flag, value]);
        assert_eq!(code, 2, "{flag} {value}");
        assert!(stderr.contains(flag), "{flag} {value}: {stderr}");
    }
}

/// `switchyard dev`: prints the token and URLs, serves a proxy end to end, exports metrics,
/// and exits cleanly on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_serves_end_to_end_and_stops_on_sigterm() {
    let mock = MockOpenAi::start().await.unwrap();
    let data = tempfile::tempdir().unwrap();
    // Port 0 everywhere: the servers pick free ports and the banner says which (picking them
    // here and releasing them would race with other tests binding ports).
    let mut child = Command::new(BIN)
        .args(["--log-format", "json", "dev", "--data-dir"])
        .arg(data.path())
        .args(["--admin-listen", "127.0.0.1:0"])
        .args(["--grpc-listen", "127.0.0.1:0"])
        .args(["--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let logs = std::thread::spawn(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<_>>()
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
    let token = std::fs::read_to_string(data.path().join("admin-token")).unwrap();
    assert!(
        banner.contains(token.trim()),
        "the banner prints the admin token:\n{banner}"
    );
    let admin = banner_url(&banner, "admin API").to_owned();
    let gateway = banner_url(&banner, "gateway").to_owned();
    assert!(
        admin.starts_with("http://127.0.0.1:")
            && admin.ends_with("/api/v1")
            && !admin.contains(":0/"),
        "{banner}"
    );
    assert!(gateway.starts_with("http://127.0.0.1:"), "{banner}");
    let admin_root = admin.trim_end_matches("/api/v1").to_owned();

    let http = reqwest::Client::new();
    let resp = http
        .post(format!("{admin}/proxies"))
        .bearer_auth(token.trim())
        .json(&json!({"name": "p", "gateway": "dev", "base_path": "/p",
            "routes": [{"name": "openai", "provider": "openai", "url": mock.base_url(),
                        "auth": {"type": "static", "api_key": MOCK_API_KEY}, "target_model": "gpt-4.1"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let started = Instant::now();
    let body = loop {
        let resp = http
            .post(format!("{gateway}/p/v1/chat/completions"))
            .json(&json!({"model": "openai/x", "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap();
        if resp.status() == 200 {
            break resp.json::<serde_json::Value>().await.unwrap();
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "dev gateway never served the proxy"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        body["choices"][0]["message"]["content"],
        reply_text("gpt-4.1")
    );

    // The request's usage reaches the control plane (within the node's flush interval) and
    // `switchyard usage` prints it.
    let usage = |args: &[&str]| {
        let out = std::process::Command::new(BIN)
            .arg("usage")
            .args(["--admin-url", &admin_root, "--from", "2026-01-01T00:00:00Z"])
            .args(args)
            .env("SWITCHYARD_ADMIN_TOKEN", token.trim())
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let started = Instant::now();
    loop {
        let (code, out, err) = usage(&["--group-by", "model", "--format", "csv"]);
        assert_eq!(code, 0, "{err}");
        let mut lines = out.lines();
        assert_eq!(
            lines.next(),
            Some(
                "model,requests,errors,input_tokens,output_tokens,cached_input_tokens,reasoning_tokens,cost_usd"
            )
        );
        let row = lines.next().unwrap_or_default().to_owned();
        if row.starts_with("gpt-4.1,1,0,") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no usage row: {out}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (code, table, _) = usage(&["--group-by", "consumer,day"]);
    assert_eq!(code, 0);
    assert!(table.starts_with("consumer  day"), "{table}");
    let (code, _, err) = usage(&["--to", "yesterday"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("400") && err.contains("to: not an RFC 3339 time"),
        "{err}"
    );

    // Metrics are never on the traffic port; the admin API's /metrics needs the token and
    // shows the whole process (gateway and control plane).
    let resp = http.get(format!("{gateway}/metrics")).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    let resp = http
        .get(format!("{admin_root}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let metrics = http
        .get(format!("{admin_root}/metrics"))
        .bearer_auth(token.trim())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("switchyard_control_plane_connected_nodes")
            && metrics.contains("switchyard_gateway_requests_total"),
        "{metrics}"
    );

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "dev did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit status {status}");
    let logs = logs.join().unwrap();
    let listening: Vec<&String> = logs.iter().filter(|l| l.contains("listening")).collect();
    assert!(
        listening.len() >= 2,
        "each server logs `listening`: {logs:#?}"
    );
    for line in &logs {
        serde_json::from_str::<serde_json::Value>(line)
            .unwrap_or_else(|_| panic!("not a JSON log line: {line}"));
        assert!(
            !line.contains(MOCK_API_KEY),
            "a secret reached the logs: {line}"
        );
    }
}

#[test]
fn gateway_with_an_unusable_model_dir_exits_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let base = |model: &str| {
        run(&[
            "gateway",
            "--control-plane",
            "http://127.0.0.1:1",
            "--gateway",
            "g",
            "--registration-token",
            LONG_TOKEN,
            "--listen",
            "127.0.0.1:0",
            "--cache-dir",
            cache.to_str().unwrap(),
            "--model-dir",
            model,
        ])
    };
    // Missing.
    let missing = dir.path().join("no-such-model");
    let (code, _, stderr) = base(missing.to_str().unwrap());
    assert_ne!(code, 0);
    let line = reason(&stderr);
    assert!(
        line.starts_with("error: cannot load the sentence encoder")
            && line.contains("no-such-model")
            && line.contains("does not exist"),
        "{stderr}"
    );
    // Corrupt: the files exist but hold garbage.
    let corrupt = dir.path().join("corrupt");
    std::fs::create_dir_all(&corrupt).unwrap();
    for f in ["model.safetensors", "tokenizer.json", "config.json"] {
        std::fs::write(corrupt.join(f), b"garbage").unwrap();
    }
    let (code, _, stderr) = base(corrupt.to_str().unwrap());
    assert_ne!(code, 0);
    let line = reason(&stderr);
    assert!(
        line.starts_with("error: cannot load the sentence encoder") && line.contains("invalid"),
        "{stderr}"
    );

    let (_, stdout, _) = run(&["gateway", "--help"]);
    assert!(stdout.contains("--model-dir") && stdout.contains("SWITCHYARD_MODEL_DIR"));
    assert!(stdout.contains("--encoder"));
}

/// `switchyard certs` makes a CA and the fleet's certificates, refuses to overwrite them,
/// and a certificate problem at start is one line naming the flag and the file.
#[test]
fn certs_then_tls_flags() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("certs");
    let out_s = out.to_str().unwrap();
    let (code, stdout, stderr) = run(&["certs", "--out", out_s, "--days", "30"]);
    assert_eq!(code, 0, "{stderr}");
    for file in [
        "ca.crt",
        "ca.key",
        "control-plane.crt",
        "control-plane.key",
        "node.crt",
        "node.key",
        "gateway.crt",
        "gateway.key",
    ] {
        assert!(out.join(file).is_file(), "{file} missing; {stdout}");
    }
    assert!(stdout.contains("--client-ca"), "{stdout}");
    let key_before = std::fs::read(out.join("ca.key")).unwrap();
    let (code, _, stderr) = run(&["certs", "--out", out_s]);
    assert_ne!(code, 0);
    assert!(reason(&stderr).contains("already exists"), "{stderr}");
    assert_eq!(std::fs::read(out.join("ca.key")).unwrap(), key_before);

    let db = format!("sqlite://{}/cp.db", dir.path().display());
    let cert = out.join("control-plane.crt");
    let (code, _, stderr) = run(&[
        "control-plane",
        "--admin-token",
        LONG_TOKEN,
        "--database-url",
        &db,
        "--admin-listen",
        "127.0.0.1:0",
        "--grpc-listen",
        "127.0.0.1:0",
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        out.join("gateway.key").to_str().unwrap(),
    ]);
    assert_ne!(code, 0);
    let line = reason(&stderr);
    assert!(
        line.starts_with("error: --tls-key ")
            && line.contains("gateway.key")
            && line.contains("does not match"),
        "{stderr}"
    );
    // --tls-cert without --tls-key is a usage error.
    let (code, _, stderr) = run(&[
        "control-plane",
        "--admin-token",
        LONG_TOKEN,
        "--tls-cert",
        cert.to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--tls-key"), "{stderr}");

    let (code, _, stderr) = run(&[
        "gateway",
        "--control-plane",
        "https://127.0.0.1:1",
        "--gateway",
        "g",
        "--registration-token",
        LONG_TOKEN,
        "--listen",
        "127.0.0.1:0",
        "--cache-dir",
        dir.path().join("cache").to_str().unwrap(),
        "--control-plane-ca",
        out.join("nope.crt").to_str().unwrap(),
    ]);
    assert_ne!(code, 0);
    let line = reason(&stderr);
    assert!(
        line.starts_with("error: --control-plane-ca ") && line.contains("nope.crt: cannot read"),
        "{stderr}"
    );
}
