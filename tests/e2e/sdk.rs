//! The official Python SDKs against a real gateway (tests/python), driven from here so the
//! gateway, control plane and mock upstream are the real ones.

// Test code: a panic is a failed test with its location.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use switchyard_e2e::{Plane, Store, chat, eventually, start_node};
use switchyard_testkit::openai::{MOCK_API_KEY, MockOpenAi, reply_text};

/// The interpreter with the SDKs: `SWITCHYARD_PYTHON`, or the repo's `.venv` made by
/// `scripts/test`. Missing is a failure, never a skip.
fn python() -> String {
    if let Ok(p) = std::env::var("SWITCHYARD_PYTHON") {
        return p;
    }
    let venv = concat!(env!("CARGO_MANIFEST_DIR"), "/../.venv/bin/python");
    assert!(
        std::path::Path::new(venv).exists(),
        "no Python with the SDKs: run scripts/test (it creates .venv), or set SWITCHYARD_PYTHON"
    );
    venv.to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_python_sdk() {
    let store = Store::sqlite();
    let mock = MockOpenAi::start().await.unwrap();
    let mut plane = Plane::start(&store).await;
    let token = plane.create_gateway("prod-eu").await;
    let cache = tempfile::tempdir().unwrap();
    let node = start_node(&plane, "prod-eu", &token, cache.path()).await;
    let (status, body) = plane
        .admin()
        .post(
            "/proxies",
            json!({
                "name": "support", "gateway": "prod-eu", "base_path": "/support",
                "routes": [{"name": "openai", "provider": "openai", "url": mock.base_url(),
                            "auth": {"type": "static", "api_key": MOCK_API_KEY}, "target_model": "gpt-4.1"}]
            }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let http = reqwest::Client::new();
    eventually(Duration::from_secs(5), "served", || async {
        chat(&http, node.local_addr(), "/support", "openai/x")
            .await
            .0
            == StatusCode::OK
    })
    .await;

    let tests = concat!(env!("CARGO_MANIFEST_DIR"), "/python");
    let out = tokio::process::Command::new(python())
        .args([
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            tests,
            "-k",
            "openai",
        ])
        .env(
            "SWITCHYARD_BASE_URL",
            format!("http://{}/support/v1", node.local_addr()),
        )
        .env("SWITCHYARD_MODEL", "openai/anything")
        .env("SWITCHYARD_SERVED_MODEL", "gpt-4.1")
        .env("SWITCHYARD_EXPECTED_REPLY", reply_text("gpt-4.1"))
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}\n{stderr}");
    assert!(out.status.success(), "the Python SDK tests failed");
    assert!(
        stdout.contains("passed") && !stdout.contains("skipped"),
        "{stdout}"
    );
    node.shutdown().await;
    plane.stop().await;
}
