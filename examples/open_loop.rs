//! An open-loop load generator for the load tests: request `k` is sent at
//! `start + k / rate` whatever happened to the ones before it (a closed-loop
//! client slows down with the server and hides its queueing), for a bounded
//! time and count, and each answer's send time, latency, status and serving
//! version (`model_version` of a V2 answer) is written to a CSV file.
//!
//! The bodies are the load tests' MLP inputs (`load-tests/bad-canary/run.py`):
//! 64 floats that depend on the request's number, and with `--poison p` a
//! share `p` of them holds a value over `flaky.onnx`'s poison threshold.
//!
//! It stops at `--duration`, `--max-requests`, or SIGTERM/SIGINT (the harness
//! stops it once it has seen what it waits for), then waits up to `--drain`
//! for the answers in flight; an answer still missing is written with status
//! 0. Run it with `cargo run --release --example open_loop -- --help`.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::signal::unix::{SignalKind, signal};

/// An open-loop HTTP load generator for V2 inference requests.
#[derive(Parser, Debug)]
struct Args {
    /// The inference URL, e.g. http://127.0.0.1:8000/v2/models/m/infer.
    #[arg(long)]
    url: http::Uri,
    /// Requests per second, in (0, 100000].
    #[arg(long)]
    rate: f64,
    /// Seconds of sending at most.
    #[arg(long, default_value_t = 60.0)]
    duration: f64,
    /// Requests at most.
    #[arg(long, default_value_t = u64::MAX)]
    max_requests: u64,
    /// Share of requests whose input holds the poison value, in [0, 1].
    #[arg(long, default_value_t = 0.0)]
    poison: f64,
    /// Seconds to wait for the answers in flight after the last send.
    #[arg(long, default_value_t = 10.0)]
    drain: f64,
    /// Seconds a request may take before it counts as failed (status 0).
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
    /// Worker threads of the runtime (the server under test shares the machine).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// CSV output: sent_unix_ms,latency_ms,status,version per request.
    #[arg(long)]
    out: std::path::PathBuf,
}

/// One request's fate.
#[derive(Clone, Copy)]
struct Record {
    /// Send time, milliseconds since the Unix epoch.
    sent_ms: f64,
    /// Until the whole answer was read; NaN when none came before the drain ended.
    latency_ms: f64,
    /// HTTP status; 599 for a connection error, 0 for no answer within `--timeout` or the drain.
    status: u16,
    /// The version that answered, 0 when the answer names none.
    version: u64,
}

/// Above `flaky.onnx`'s poison threshold (10.0, tests/models/make_test_models.py).
const POISON_VALUE: f32 = 100.0;

/// Request `k`'s body, as run.py writes it.
fn body(k: u64, poisoned: bool) -> Bytes {
    let mut data: Vec<f32> = (0..64u64).map(|i| ((i * 7 + k * 13) % 97) as f32 / 97.0 - 0.5).collect();
    if poisoned {
        data[(k % 64) as usize] = POISON_VALUE;
    }
    let json =
        serde_json::json!({ "inputs": [{ "name": "input", "shape": [1, 64], "datatype": "FP32", "data": data }] });
    Bytes::from(json.to_string())
}

/// Whether request `k` is poisoned: when the share of poisoned requests up to `k` passes a whole one.
fn poisoned(k: u64, share: f64) -> bool {
    ((k + 1) as f64 * share).floor() > (k as f64 * share).floor()
}

fn unix_ms() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

/// Sends one request and reads its answer.
async fn send(client: &Client<HttpConnector, Full<Bytes>>, url: &http::Uri, body: Bytes) -> (u16, u64) {
    let request = http::Request::post(url.clone())
        .header("content-type", "application/json")
        .body(Full::new(body))
        .expect("a POST with a valid URI is a valid request");
    let Ok(response) = client.request(request).await else {
        return (599, 0);
    };
    let status = response.status().as_u16();
    let Ok(bytes) = response.into_body().collect().await.map(|b| b.to_bytes()) else {
        return (599, 0);
    };
    let version = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| v.get("model_version")?.as_str()?.parse().ok())
        .unwrap_or(0);
    (status, version)
}

fn check(args: &Args) -> Result<(), String> {
    if !(args.rate > 0.0 && args.rate <= 100_000.0) {
        return Err(format!("--rate must be above 0 and at most 100000, got {}", args.rate));
    }
    if !(0.0..=1.0).contains(&args.poison) {
        return Err(format!("--poison must be in [0, 1], got {}", args.poison));
    }
    for (name, value) in [("--duration", args.duration), ("--drain", args.drain), ("--timeout", args.timeout)] {
        if !(value > 0.0 && value <= 86_400.0) {
            return Err(format!("{name} must be above 0 and at most 86400 seconds, got {value}"));
        }
    }
    if args.threads == 0 || args.threads > 64 {
        return Err(format!("--threads must be in 1..=64, got {}", args.threads));
    }
    if args.url.scheme_str() != Some("http") || args.url.host().is_none() {
        return Err(format!("--url must be an http:// URL with a host, got {}", args.url));
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    check(&args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(args.threads).enable_all().build()?;
    let records = runtime.block_on(run(&args))?;
    let mut out = std::io::BufWriter::new(std::fs::File::create(&args.out)?);
    writeln!(out, "sent_unix_ms,latency_ms,status,version")?;
    for r in &records {
        writeln!(out, "{:.3},{:.3},{},{}", r.sent_ms, r.latency_ms, r.status, r.version)?;
    }
    out.flush()?;
    Ok(())
}

async fn run(args: &Args) -> Result<Vec<Record>, Box<dyn std::error::Error>> {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).pool_max_idle_per_host(1024).build_http();
    let (mut term, mut int) = (signal(SignalKind::terminate())?, signal(SignalKind::interrupt())?);
    // One record per request, in send order, filled in when its answer is read.
    let slots: Arc<Mutex<Vec<Record>>> = Arc::new(Mutex::new(Vec::new()));
    let timeout = Duration::from_secs_f64(args.timeout);
    let start = tokio::time::Instant::now() + Duration::from_millis(100);
    let end = start + Duration::from_secs_f64(args.duration);
    let (mut k, mut late) = (0u64, 0u64);
    let mut tasks = tokio::task::JoinSet::new();
    'send: while k < args.max_requests {
        let due = start + Duration::from_secs_f64(k as f64 / args.rate);
        if due >= end {
            break;
        }
        tokio::select! {
            biased;
            _ = term.recv() => break 'send,
            _ = int.recv() => break 'send,
            () = tokio::time::sleep_until(due) => {}
        }
        // A send more than 5 ms behind its time is late: the generator, not the server, fell behind.
        if tokio::time::Instant::now().duration_since(due) > Duration::from_millis(5) {
            late += 1;
        }
        let (client, url, slots) = (client.clone(), args.url.clone(), slots.clone());
        let payload = body(k, poisoned(k, args.poison));
        let index = {
            let mut slots = slots.lock().unwrap_or_else(|e| e.into_inner());
            // Unanswered until the task says otherwise.
            slots.push(Record { sent_ms: unix_ms(), latency_ms: f64::NAN, status: 0, version: 0 });
            slots.len() - 1
        };
        tasks.spawn(async move {
            let sent = Instant::now();
            let (status, version) = tokio::time::timeout(timeout, send(&client, &url, payload)).await.unwrap_or((0, 0));
            let mut slots = slots.lock().unwrap_or_else(|e| e.into_inner());
            let record = &mut slots[index];
            (record.latency_ms, record.status, record.version) =
                (sent.elapsed().as_secs_f64() * 1000.0, status, version);
        });
        k += 1;
    }
    let sent_for = start.elapsed();
    let drained =
        tokio::time::timeout(Duration::from_secs_f64(args.drain), async { while tasks.join_next().await.is_some() {} })
            .await;
    tasks.abort_all();
    let records = std::mem::take(&mut *slots.lock().unwrap_or_else(|e| e.into_inner()));
    let unanswered = records.iter().filter(|r| r.latency_ms.is_nan()).count();
    let ok = records.iter().filter(|r| r.status == 200).count();
    eprintln!(
        "open_loop: sent {k} in {:.1} s ({:.0}/s, {late} late by >5 ms), {ok} answered 200, {unanswered} unanswered{}",
        sent_for.as_secs_f64(),
        k as f64 / sent_for.as_secs_f64().max(1e-9),
        if drained.is_err() { " (drain timed out)" } else { "" }
    );
    Ok(records)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a panic is the failure report
mod tests {
    use super::*;

    #[test]
    fn poisoned_requests_are_the_share_asked_for() {
        let count = (0..10_000).filter(|&k| poisoned(k, 0.4)).count();
        assert_eq!(count, 4000);
        assert_eq!((0..1000).filter(|&k| poisoned(k, 0.0)).count(), 0);
    }

    #[test]
    fn a_body_is_the_load_tests_mlp_input() {
        let value: serde_json::Value = serde_json::from_slice(&body(3, true)).unwrap();
        let data = value["inputs"][0]["data"].as_array().unwrap();
        assert_eq!(data.len(), 64);
        assert_eq!(data[3].as_f64(), Some(100.0));
    }
}
