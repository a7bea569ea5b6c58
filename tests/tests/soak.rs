//! Soak: one picker process, 200 synthetic endpoints reporting at 10 Hz and a steady pick load
//! (each pick closed with `/v1/done`, as a gateway does), for `INFERPICK_SOAK_SECS` seconds
//! (default 90). A first, shorter run with picks only, against the same table, gives the baseline.
//!
//! Asserted: no errors anywhere; the p99 decision time under report load within
//! [`P99_RATIO`] of the baseline's plus [`P99_FLOOR`]; the picker's resident memory after a
//! warm-up growing by less than [`RSS_GROWTH_BOUND`]. The figures are printed in one block.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use inferpick_schema::PickRequest;
use inferpick_tests::bins::PICKER;
use inferpick_tests::fleet::PickOutcome;
use inferpick_tests::procs::{self, PickerProc};
use inferpick_tests::synth::{Buckets, SynthAgent};
use inferpick_tests::{ScratchDir, http_client, wait_until_async};
use serde_json::json;

/// Synthetic endpoints in the table.
const ENDPOINTS: usize = 200;
/// How often every endpoint reports (10 Hz).
const REPORT_PERIOD: Duration = Duration::from_millis(100);
/// Reports per `POST /v1/reports`.
const BATCH: usize = 20;
/// Picks per second, in both runs.
const PICK_RATE: u32 = 250;
/// Concurrent pick clients sharing [`PICK_RATE`].
const PICK_CLIENTS: u32 = 5;
/// Loaded p99 decision time may be at most this multiple of the baseline's …
const P99_RATIO: f64 = 10.0;
/// … plus this (the histogram's buckets double, and a busy machine preempts).
const P99_FLOOR: Duration = Duration::from_millis(1);
/// Largest RSS growth allowed between the end of the warm-up and the end of the run.
const RSS_GROWTH_BOUND: u64 = 16 << 20;
const MODEL: &str = "soak/model";
const HISTOGRAM: &str = "inferpick_picker_decision_duration_seconds";

/// The run's length from `INFERPICK_SOAK_SECS`.
fn soak_duration() -> Duration {
    match std::env::var("INFERPICK_SOAK_SECS") {
        Err(_) => Duration::from_secs(90),
        Ok(v) => match v.trim().parse::<u64>() {
            Ok(secs) if secs >= 10 => Duration::from_secs(secs),
            _ => {
                panic!("INFERPICK_SOAK_SECS={v:?}: expected a whole number of seconds, at least 10")
            }
        },
    }
}

/// What one run of the pick load saw.
#[derive(Debug, Default)]
struct PickRun {
    picks: u64,
    errors: Vec<String>,
    /// Client-side latency of each pick.
    latencies: Vec<Duration>,
    elapsed: Duration,
}

impl PickRun {
    fn rate(&self) -> f64 {
        self.picks as f64 / self.elapsed.as_secs_f64()
    }

    fn latency(&self, q: f64) -> Duration {
        let mut sorted = self.latencies.clone();
        sorted.sort();
        let rank = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len().max(1));
        sorted.get(rank - 1).copied().unwrap_or_default()
    }
}

/// Picks at [`PICK_RATE`] for `duration`, closing each with `/v1/done`.
async fn pick_load(
    http: &reqwest::Client,
    picker: std::net::SocketAddr,
    duration: Duration,
) -> PickRun {
    let started = Instant::now();
    let period = Duration::from_secs(1) * PICK_CLIENTS / PICK_RATE;
    let clients = (0..PICK_CLIENTS).map(|client| {
        let http = http.clone();
        async move {
            let mut run = PickRun::default();
            let mut tick = tokio::time::interval(period);
            let mut n = 0u64;
            while started.elapsed() < duration {
                tick.tick().await;
                n += 1;
                // Fifty shared system prompts, each with its own question: prefix affinity at work,
                // and a prefix index that must stay bounded.
                let request = PickRequest {
                    model: Some(MODEL.to_owned()),
                    prompt: Some(format!(
                        "system prompt {}: you answer questions about the soak test. \
                         client {client} question {n}: how is the picker doing?",
                        n % 50
                    )),
                    max_tokens: Some(128),
                    ..PickRequest::default()
                };
                let t0 = Instant::now();
                let outcome = procs::pick(&http, picker, &request).await;
                run.latencies.push(t0.elapsed());
                run.picks += 1;
                match outcome {
                    Ok(PickOutcome::Routed(decision)) => {
                        let done = http
                            .post(format!("http://{picker}/v1/done"))
                            .json(&json!({"decision_id": decision.decision_id}))
                            .send()
                            .await;
                        match done {
                            Ok(r) if r.status() == 204 => {}
                            Ok(r) => run.errors.push(format!("done: {}", r.status())),
                            Err(e) => run.errors.push(format!("done: {e}")),
                        }
                    }
                    Ok(PickOutcome::Refused(status, body)) => {
                        run.errors.push(format!("pick: {status} {body:?}"));
                    }
                    Err(e) => run.errors.push(format!("pick: {e:#}")),
                }
            }
            run
        }
    });
    let mut total = PickRun::default();
    for run in futures::future::join_all(clients).await {
        total.picks += run.picks;
        total.errors.extend(run.errors);
        total.latencies.extend(run.latencies);
    }
    total.elapsed = started.elapsed();
    total
}

/// Posts every agent's next report, in batches of [`BATCH`]; returns the errors.
async fn post_round(
    http: &reqwest::Client,
    picker: std::net::SocketAddr,
    agents: &mut [SynthAgent],
    round: u64,
) -> Vec<String> {
    let mut errors = Vec::new();
    for (b, batch) in agents.chunks_mut(BATCH).enumerate() {
        let reports: Vec<_> = batch
            .iter_mut()
            .enumerate()
            // Queues move a little from report to report, as a live fleet's do.
            .map(|(i, agent)| agent.next_report(((round as usize + i + b) % 4) as u32))
            .collect();
        match http
            .post(format!("http://{picker}/v1/reports"))
            .json(&reports)
            .send()
            .await
        {
            Ok(r) if r.status() == 204 => {}
            Ok(r) => errors.push(format!("reports: {} {:?}", r.status(), r.text().await)),
            Err(e) => errors.push(format!("reports: {e}")),
        }
    }
    errors
}

async fn decision_buckets(http: &reqwest::Client, picker: std::net::SocketAddr) -> Buckets {
    let text = procs::metrics(http, picker).await.unwrap();
    Buckets::parse(&text, HISTOGRAM).unwrap_or_else(|| panic!("no {HISTOGRAM} in:\n{text}"))
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1 << 20)
}

fn micros(seconds: Option<f64>) -> String {
    seconds.map_or_else(|| "n/a".to_owned(), |s| format!("{:.0} µs", s * 1e6))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_200_endpoints_at_10hz_with_steady_picks() {
    let duration = soak_duration();
    let warm_up = (duration / 6).clamp(Duration::from_secs(5), Duration::from_secs(15));
    let baseline = warm_up;
    let dir = ScratchDir::new("soak").unwrap();
    // Reports must not go stale during the picks-only baseline, so staleness is set long.
    let picker = PickerProc::start(
        dir.path(),
        "picker",
        "127.0.0.1:0",
        &[
            "--max-report-age=1h".to_owned(),
            "--forget-after=2h".to_owned(),
        ],
    )
    .await
    .unwrap();
    let pid = picker.pid().unwrap();
    let addr = picker.addr;
    let http = http_client(Duration::from_secs(10));
    let mut agents: Vec<SynthAgent> = (0..ENDPOINTS)
        .map(|i| SynthAgent::new(format!("127.0.0.1:{}", 20_000 + i), MODEL))
        .collect();
    let errors = post_round(&http, addr, &mut agents, 0).await;
    assert!(errors.is_empty(), "{errors:?}");
    wait_until_async(Duration::from_secs(10), "the whole table ready", || async {
        let states = procs::states(
            &procs::table(&http, addr)
                .await
                .map_err(|e| format!("{e:#}"))?,
        );
        let ready = states.values().filter(|s| *s == "ready").count();
        if ready == ENDPOINTS {
            Ok(())
        } else {
            Err(format!("{ready} ready"))
        }
    })
    .await
    .unwrap();

    // Baseline: picks only.
    let before = decision_buckets(&http, addr).await;
    let unloaded_run = pick_load(&http, addr, baseline).await;
    let after_baseline = decision_buckets(&http, addr).await;
    let unloaded = after_baseline.since(&before);

    // Loaded: reports at 10 Hz from every endpoint, picks as before.
    let rss_start = procs::rss_bytes(pid).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let reports_sent = Arc::new(AtomicU64::new(0));
    let reporter = {
        let (stop, sent, http) = (stop.clone(), reports_sent.clone(), http.clone());
        tokio::spawn(async move {
            let mut errors = Vec::new();
            let mut tick = tokio::time::interval(REPORT_PERIOD);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut round = 1;
            let mut late_rounds = 0u64;
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let t0 = Instant::now();
                errors.extend(post_round(&http, addr, &mut agents, round).await);
                if t0.elapsed() > REPORT_PERIOD {
                    late_rounds += 1;
                }
                sent.fetch_add(ENDPOINTS as u64, Ordering::Relaxed);
                round += 1;
            }
            (errors, late_rounds)
        })
    };
    let loaded_started = Instant::now();
    let (loaded_run, rss_warm) = {
        let load = pick_load(&http, addr, duration);
        tokio::pin!(load);
        // The RSS after the warm-up is read while the load runs.
        let warm = tokio::time::sleep(warm_up);
        tokio::pin!(warm);
        let mut rss_warm = None;
        loop {
            tokio::select! {
                run = &mut load => break (run, rss_warm.expect("the warm-up is shorter than the run")),
                () = &mut warm, if rss_warm.is_none() => rss_warm = Some(procs::rss_bytes(pid).unwrap()),
            }
        }
    };
    stop.store(true, Ordering::Relaxed);
    let (report_errors, late_rounds) = reporter.await.unwrap();
    let loaded_elapsed = loaded_started.elapsed();
    let rss_end = procs::rss_bytes(pid).unwrap();
    let loaded = decision_buckets(&http, addr).await.since(&after_baseline);
    let reports_per_s = reports_sent.load(Ordering::Relaxed) as f64 / loaded_elapsed.as_secs_f64();

    let (unloaded_p99, loaded_p99) = (unloaded.quantile(0.99), loaded.quantile(0.99));
    println!(
        "soak: {ENDPOINTS} endpoints, {duration:?} loaded after a {baseline:?} picks-only baseline \
         (picker {})\n\
         \x20 reports/s: {reports_per_s:.0} (batches of {BATCH}; {late_rounds} rounds over {REPORT_PERIOD:?}), errors {}\n\
         \x20 picks/s: baseline {:.0}, loaded {:.0} (each closed with /v1/done), errors {} / {}\n\
         \x20 decision time p50 / p99 (picker histogram, bucket upper bounds): baseline {} / {}, loaded {} / {}\n\
         \x20 pick round trip p50 / p99 (client): baseline {:?} / {:?}, loaded {:?} / {:?}\n\
         \x20 picker RSS: start {:.1} MiB, after {warm_up:?} warm-up {:.1} MiB, end {:.1} MiB (growth after warm-up {:+.1} MiB)",
        PICKER.path().unwrap().display(),
        report_errors.len(),
        unloaded_run.rate(),
        loaded_run.rate(),
        unloaded_run.errors.len(),
        loaded_run.errors.len(),
        micros(unloaded.quantile(0.5)),
        micros(unloaded_p99),
        micros(loaded.quantile(0.5)),
        micros(loaded_p99),
        unloaded_run.latency(0.5),
        unloaded_run.latency(0.99),
        loaded_run.latency(0.5),
        loaded_run.latency(0.99),
        mib(rss_start),
        mib(rss_warm),
        mib(rss_end),
        (mib(rss_end) - mib(rss_warm)),
    );

    assert!(
        report_errors.is_empty(),
        "report errors: {:?}",
        &report_errors[..report_errors.len().min(10)]
    );
    for run in [&unloaded_run, &loaded_run] {
        assert!(
            run.errors.is_empty(),
            "pick errors: {:?}",
            &run.errors[..run.errors.len().min(10)]
        );
    }
    // Every pick was decided (and timed) by the picker.
    assert_eq!(unloaded.count() as u64, unloaded_run.picks);
    assert_eq!(loaded.count() as u64, loaded_run.picks);
    assert!(
        loaded_run.rate() >= f64::from(PICK_RATE) * 0.8,
        "the pick load fell behind: {:.0}/s",
        loaded_run.rate()
    );
    assert!(
        reports_per_s >= ENDPOINTS as f64 * 10.0 * 0.8,
        "the reports fell behind: {reports_per_s:.0}/s"
    );
    let (unloaded_p99, loaded_p99) = (
        unloaded_p99.expect("baseline p99 within the histogram"),
        loaded_p99.expect("loaded p99 within the histogram"),
    );
    assert!(
        loaded_p99 <= unloaded_p99 * P99_RATIO + P99_FLOOR.as_secs_f64(),
        "p99 decision time {loaded_p99} s under report load vs {unloaded_p99} s without"
    );
    let growth = rss_end.saturating_sub(rss_warm);
    assert!(
        growth < RSS_GROWTH_BOUND,
        "the picker grew {:.1} MiB after the warm-up",
        mib(growth)
    );
}
