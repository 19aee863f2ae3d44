//! Measures the usage ingest rate of a running control plane: `--nodes` concurrent gRPC
//! clients each send `--batches` batches of `--batch` synthetic records (as a gateway node
//! does), and the records stored per second is printed once every batch is acknowledged
//! (after its commit). Run by `bench/usage`; by hand:
//!
//! ```sh
//! cargo run --release -p switchyard-control-plane --example usage_ingest -- \
//!   --grpc http://127.0.0.1:50051 --gateway bench --token syreg_… --nodes 4 --batches 50
//! ```

use std::time::Instant;

use switchyard_proto::v1 as pb;
use switchyard_proto::v1::usage_reporting_client::UsageReportingClient;

struct Args {
    grpc: String,
    gateway: String,
    token: String,
    nodes: usize,
    batches: usize,
    batch: usize,
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        grpc: "http://127.0.0.1:50051".into(),
        gateway: String::new(),
        token: String::new(),
        nodes: 4,
        batches: 50,
        batch: 1000,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = || value.parse::<usize>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--grpc" => a.grpc = value.clone(),
            "--gateway" => a.gateway = value.clone(),
            "--token" => a.token = value.clone(),
            "--nodes" => a.nodes = number()?,
            "--batches" => a.batches = number()?,
            "--batch" => a.batch = number()?,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if a.gateway.is_empty() || a.token.is_empty() {
        return Err("--gateway and --token are required".into());
    }
    Ok(a)
}

/// One synthetic record: a realistic spread of consumers, models and routes, now.
fn record(node: usize, i: usize) -> pb::UsageRecord {
    let consumer = (node * 7919 + i) % 200;
    let now_ms = u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or(0);
    let random: [u8; 10] = rand::random();
    let id = uuid::Builder::from_unix_timestamp_millis(now_ms, &random).into_uuid();
    pb::UsageRecord {
        id: id.as_bytes().to_vec(),
        at_unix_ms: i64::try_from(now_ms).unwrap_or(0),
        proxy_id: format!("0195f3a2-0000-7000-8000-00000000000{}", consumer % 5),
        proxy: format!("proxy-{}", consumer % 5),
        route: ["openai", "claude", "gemini"][consumer % 3].into(),
        model: format!("model-{}", (consumer + i % 2) % 8),
        consumer: format!("consumer-{consumer}"),
        status: if i.is_multiple_of(50) { 500 } else { 200 },
        input_tokens: (i % 1000) as u64 + 20,
        output_tokens: (i % 300) as u64 + 5,
        cached_input_tokens: (i % 7) as u64,
        reasoning_tokens: 0,
        cost_nano_usd: 12_345,
        latency_us: 250_000,
        ttft_us: Some(80_000),
        fell_back: false,
        stream: i.is_multiple_of(2),
        estimated: false,
        provider: "openai".into(),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a = args()?;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for node in 0..a.nodes {
        let (grpc, gateway, token) = (a.grpc.clone(), a.gateway.clone(), a.token.clone());
        let (batches, batch) = (a.batches, a.batch);
        tasks.push(tokio::spawn(async move {
            let mut client = UsageReportingClient::connect(grpc).await?;
            let mut stored = 0u64;
            let mut slowest = 0f64;
            for b in 0..batches {
                let records = (0..batch).map(|i| record(node, b * batch + i)).collect();
                let t = Instant::now();
                let ack = client
                    .report(pb::UsageBatch {
                        gateway: gateway.clone(),
                        node_id: format!("bench-node-{node}"),
                        registration_token: token.clone(),
                        records,
                    })
                    .await?
                    .into_inner();
                slowest = slowest.max(t.elapsed().as_secs_f64());
                stored += u64::from(ack.stored);
            }
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>((stored, slowest))
        }));
    }
    let mut stored = 0;
    let mut slowest = 0f64;
    for task in tasks {
        let (s, w) = task.await?.map_err(|e| e.to_string())?;
        stored += s;
        slowest = slowest.max(w);
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{{\"records\": {stored}, \"seconds\": {secs:.3}, \"records_per_s\": {:.0}, \"nodes\": {}, \"batch\": {}, \"slowest_batch_s\": {slowest:.3}}}",
        stored as f64 / secs,
        a.nodes,
        a.batch
    );
    Ok(())
}
