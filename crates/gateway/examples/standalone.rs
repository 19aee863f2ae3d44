//! A gateway node fed by an in-process fake control plane, for benchmarks and manual checks
//! without the real control plane:
//!
//! ```text
//! cargo run -p switchyard-gateway --example standalone -- \
//!     --upstream http://127.0.0.1:9000/v1 --listen 127.0.0.1:8000
//! ```
//!
//! It serves one proxy at `/bench` (and `/`) with one `openai-compatible` route named `up`
//! (no upstream key), so clients send `"model": "up/<model>"`. `--workers N` picks the tokio
//! runtime (0: current-thread; default: one worker per core).
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::process::ExitCode;

use switchyard_gateway::{Gateway, GatewayConfig};
use switchyard_model::{Auth, Provider};
use switchyard_testkit::FakeControlPlane;
use switchyard_testkit::snapshots::{proxy, route, snapshot};

struct Args {
    upstream: String,
    listen: SocketAddr,
    workers: Option<usize>,
}

fn parse_args() -> Result<Args, String> {
    let mut upstream = "http://127.0.0.1:9000/v1".to_owned();
    let mut listen: SocketAddr = ([127, 0, 0, 1], 8000).into();
    let mut workers = None;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--upstream" => upstream = value,
            "--listen" => listen = value.parse().map_err(|_| format!("bad address {value}"))?,
            "--workers" => workers = Some(value.parse().map_err(|_| format!("bad count {value}"))?),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(Args {
        upstream,
        listen,
        workers,
    })
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("standalone: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match args.workers {
        Some(0) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        Some(n) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
        None => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
    };
    match runtime {
        Ok(rt) => rt.block_on(run(args)),
        Err(e) => {
            eprintln!("standalone: {e}");
            ExitCode::from(1)
        }
    }
}

async fn run(args: Args) -> ExitCode {
    let cp = match FakeControlPlane::start().await {
        Ok(cp) => cp,
        Err(e) => {
            eprintln!("standalone: fake control plane: {e}");
            return ExitCode::from(1);
        }
    };
    let up = || route("up", Provider::OpenAiCompatible, &args.upstream, Auth::None);
    cp.push(snapshot(
        "bench",
        1,
        vec![
            proxy("bench", "/bench", vec![up()], None),
            proxy("root", "/", vec![up()], None),
        ],
    ))
    .await;
    let cache = std::env::temp_dir().join(format!("switchyard-standalone-{}", std::process::id()));
    let mut config = GatewayConfig::new(cp.url(), "bench", "token", &cache);
    config.listen = args.listen;
    let gateway = match Gateway::start(config).await {
        Ok(g) => g,
        Err(e) => {
            eprintln!("standalone: {e}");
            return ExitCode::from(1);
        }
    };
    println!("gateway listening on {}", gateway.local_addr());
    let _ = tokio::signal::ctrl_c().await;
    gateway.shutdown().await;
    let _ = std::fs::remove_dir_all(&cache);
    ExitCode::SUCCESS
}
