//! HTTP benchmark on loopback with keep-alive: `POST /v1/pick` against `GET /healthz` on the same
//! in-process server, then report ingestion (`POST /v1/reports`, batched arrays) while picks run.
//!
//! The load loop is a minimal HTTP/1.1 client over raw sockets, so the client's own cost stays small
//! next to the server's. Run with `cargo bench -p inferpick-picker --bench http`.
//!
//! Requests per second follow the CPU the machine's other tenants leave to this process, which can
//! change from one 3-second run to the next. So each run also reports the CPU time the process
//! (server, client and the kernel's loopback work on their behalf) spent per request, from
//! `/proc/self/task/*/schedstat`: when both runs are CPU-bound, the ratio of those is the ratio
//! of requests per second on an otherwise idle machine, and it moves much less.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use inferpick_picker::{AppState, Settings, serve};

mod fleet;
use fleet::{MODEL, report};
use inferpick_schema::LoadReport;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Table sizes measured, one server each.
const SIZES: [usize; 2] = [100, 1_000];
const BATCH: usize = 100;
const CONNECTIONS: usize = 32;
const RUN: Duration = Duration::from_secs(3);

fn request(method: &str, path: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "{method} {path} HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

/// Reads one response off `stream`; returns its status.
async fn read_response(stream: &mut TcpStream, buf: &mut Vec<u8>) -> u16 {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..end]).unwrap();
            let status: u16 = head[9..12].parse().unwrap();
            let length: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            let total = end + 4 + length;
            while buf.len() < total {
                assert!(stream.read_buf(buf).await.unwrap() > 0, "server closed");
            }
            buf.drain(..total);
            return status;
        }
        assert!(stream.read_buf(buf).await.unwrap() > 0, "server closed");
    }
}

/// What one connection sends: the same request over and over, or report batches cycled with their
/// `seq` fields rewritten in place each round (so every push is newer than the last and applied).
#[derive(Debug)]
enum Script {
    Repeat(Vec<u8>),
    RisingSeq(Vec<Vec<u8>>),
}

/// Reports are serialized with this 10-digit seq so a round number can overwrite it in place.
const SEQ_BASE: u64 = 1_000_000_000;

impl Script {
    /// The `i`-th request, written into `out`.
    fn write_nth(&self, i: usize, out: &mut Vec<u8>) {
        out.clear();
        match self {
            Script::Repeat(r) => out.extend_from_slice(r),
            Script::RisingSeq(templates) => {
                out.extend_from_slice(&templates[i % templates.len()]);
                let seq = (SEQ_BASE + (i / templates.len()) as u64 + 1).to_string();
                let marker = format!("\"seq\":{SEQ_BASE}");
                let mut from = 0;
                while let Some(pos) = find(&out[from..], marker.as_bytes()) {
                    let digits = from + pos + 6;
                    out[digits..digits + seq.len()].copy_from_slice(seq.as_bytes());
                    from = digits + seq.len();
                }
            }
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// `connections` connections, each running one of `scripts` (cycling).
type Group = (usize, Vec<Arc<Script>>);

/// Runs `script` on one keep-alive connection until `stop`; counts 2xx answers.
async fn connection(
    addr: SocketAddr,
    script: Arc<Script>,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let mut buf = Vec::with_capacity(64 << 10);
    let mut req = Vec::new();
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        script.write_nth(i, &mut req);
        stream.write_all(&req).await.unwrap();
        let status = read_response(&mut stream, &mut buf).await;
        assert!((200..300).contains(&status), "status {status}");
        done.fetch_add(1, Ordering::Relaxed);
        i += 1;
    }
}

/// CPU time every thread of this process has run so far, if the kernel says (Linux).
fn cpu_time() -> Option<Duration> {
    let mut ns = 0u64;
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let stat = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
        ns += stat.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(Duration::from_nanos(ns))
}

/// What one load run measured.
struct Rates {
    /// Requests per second, per group.
    per_group: Vec<f64>,
    /// Process CPU time per request, all groups together.
    cpu_per_request: Option<Duration>,
}

/// Requests per second over `RUN` for each group.
async fn load(addr: SocketAddr, groups: Vec<Group>) -> Rates {
    let stop = Arc::new(AtomicBool::new(false));
    let counters: Vec<Arc<AtomicU64>> =
        groups.iter().map(|_| Arc::new(AtomicU64::new(0))).collect();
    let mut tasks = Vec::new();
    for ((conns, reqs), counter) in groups.into_iter().zip(&counters) {
        for c in 0..conns {
            tasks.push(tokio::spawn(connection(
                addr,
                reqs[c % reqs.len()].clone(),
                stop.clone(),
                counter.clone(),
            )));
        }
    }
    let start = Instant::now();
    let cpu_start = cpu_time();
    tokio::time::sleep(RUN).await;
    stop.store(true, Ordering::Relaxed);
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = cpu_time()
        .zip(cpu_start)
        .map(|(end, start)| end.saturating_sub(start));
    let counts: Vec<u64> = counters.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    for t in tasks {
        t.await.unwrap();
    }
    let total: u64 = counts.iter().sum();
    Rates {
        per_group: counts.into_iter().map(|n| n as f64 / elapsed).collect(),
        cpu_per_request: cpu.filter(|_| total > 0).map(|c| c.div_f64(total as f64)),
    }
}

/// `d` in µs, for the report.
fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    for endpoints in SIZES {
        rt.block_on(run(endpoints));
    }
}

/// One server with a table of `endpoints`: healthz, pick, healthz again, then ingest under picks.
async fn run(endpoints: usize) {
    let settings = Settings {
        grpc_listen: None,
        // The load loop pushes reports for the whole made-up fleet from loopback, as a proxy would.
        trusted_proxies: vec!["127.0.0.1".parse().unwrap()],
        ..Settings::default()
    };
    let state = AppState::new(settings).unwrap();
    state
        .table()
        .ingest_batch((0..endpoints).map(|i| report(i, 1)).collect(), state.now())
        .unwrap();
    // Fresh reports every 500 ms keep the table within the 1 s staleness bound, as agents would.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(state.clone(), listener, async {
        let _ = rx.await;
    }));
    let refresher = {
        let state = state.clone();
        tokio::spawn(async move {
            let mut seq = 2;
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tick.tick().await;
                let _ = state.table().ingest_batch(
                    (0..endpoints).map(|i| report(i, seq)).collect(),
                    state.now(),
                );
                seq += 1;
            }
        })
    };

    let health = Arc::new(Script::Repeat(request("GET", "/healthz", b"")));
    let pick_body = format!(
        r#"{{"model":"{MODEL}","prompt":"{}what is the capital of France?","max_tokens":128}}"#,
        "You are a helpful assistant. ".repeat(20)
    );
    let pick = Arc::new(Script::Repeat(request(
        "POST",
        "/v1/pick",
        pick_body.as_bytes(),
    )));

    println!(
        "HTTP on loopback, keep-alive, {CONNECTIONS} connections, {endpoints} endpoints, {}s per run",
        RUN.as_secs()
    );
    let h1 = load(addr, vec![(CONNECTIONS, vec![health.clone()])]).await;
    let p = load(addr, vec![(CONNECTIONS, vec![pick.clone()])]).await;
    let h2 = load(addr, vec![(CONNECTIONS, vec![health.clone()])]).await;
    let (h1_rate, h2_rate, p_rate) = (h1.per_group[0], h2.per_group[0], p.per_group[0]);
    let h = (h1_rate + h2_rate) / 2.0;
    println!("GET /healthz   {h:>10.0} req/s  (runs: {h1_rate:.0}, {h2_rate:.0})");
    println!(
        "POST /v1/pick  {p_rate:>10.0} req/s  = {:.0}% of /healthz (target >= 70%)",
        100.0 * p_rate / h
    );
    if let (Some(h1), Some(h2), Some(p)) =
        (h1.cpu_per_request, h2.cpu_per_request, p.cpu_per_request)
    {
        let h = (h1 + h2) / 2;
        println!(
            "CPU per request: /healthz {:.1} µs (runs: {:.1}, {:.1}), /v1/pick {:.1} µs \
             = {:.0}% of /healthz's rate when CPU-bound",
            micros(h),
            micros(h1),
            micros(h2),
            micros(p),
            100.0 * h.as_secs_f64() / p.as_secs_f64()
        );
    }
    refresher.abort();

    // Ingest while serving picks: 4 connections push arrays of BATCH reports with rising seq.
    let pushers = 4;
    let per_pusher = endpoints / pushers;
    let batches: Vec<Arc<Script>> = (0..pushers)
        .map(|p| {
            let ids: Vec<usize> = (p * per_pusher..(p + 1) * per_pusher).collect();
            let templates = ids
                .chunks(BATCH)
                .map(|chunk| {
                    let reports: Vec<LoadReport> =
                        chunk.iter().map(|&i| report(i, SEQ_BASE)).collect();
                    request(
                        "POST",
                        "/v1/reports",
                        &serde_json::to_vec(&reports).unwrap(),
                    )
                })
                .collect();
            Arc::new(Script::RisingSeq(templates))
        })
        .collect();
    let rates = load(
        addr,
        vec![(pushers, batches), (CONNECTIONS - pushers, vec![pick])],
    )
    .await
    .per_group;
    println!(
        "ingest while picking: {:>10.0} reports/s ({BATCH} per request; target >= 50,000) with {:.0} picks/s",
        rates[0] * BATCH as f64,
        rates[1]
    );
    let _ = tx.send(());
    server.await.unwrap().unwrap();
}
