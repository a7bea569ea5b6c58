//! Faults injected into a fleet of real processes on loopback (emulated engines, agents, pickers),
//! each test named by the fault. Every wait is a readiness poll with a deadline; the time bounds
//! asserted follow from the design (a report interval, `max_report_age`, `forget_after`, and for a
//! restarted picker the agents' retry backoff), with slack for a busy two-core machine.
//!
//! The tests run one at a time (they measure intervals of 100 ms, which a dozen processes
//! starting in parallel would blur).

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use inferpick_schema::PickRequest;
use inferpick_tests::fleet::PickOutcome;
use inferpick_tests::procs::{self, AgentProc, EngineProc, PickerProc, ProcSpec, Procs};
use inferpick_tests::stall::StallServer;
use inferpick_tests::synth::{SynthAgent, series_value};
use inferpick_tests::{ScratchDir, http_client, wait_until_async, wait_until_async_every};
use serde_json::Value;
use tokio::sync::Mutex;

/// The agents' scrape and push period in these tests.
const INTERVAL: Duration = Duration::from_millis(100);
/// How often a test polls when it measures when something happened.
const POLL: Duration = Duration::from_millis(10);
/// The model every emulated engine serves.
const MODEL: &str = "loopback/model";

/// Held by each test for its whole run: one fleet at a time.
static SERIAL: Mutex<()> = Mutex::const_new(());

fn request() -> PickRequest {
    PickRequest {
        model: Some(MODEL.to_owned()),
        prompt_tokens: Some(400),
        max_tokens: Some(100),
        ..PickRequest::default()
    }
}

/// Picks `n` times on picker `i`; every pick must be routed. Returns every endpoint named in the
/// decisions, primaries and fallbacks.
async fn routed_picks(procs: &Procs, i: usize, n: usize) -> Vec<String> {
    let mut chosen = Vec::new();
    for _ in 0..n {
        match procs.pick(i, &request()).await.unwrap() {
            PickOutcome::Routed(d) => {
                chosen.push(d.endpoint.clone());
                chosen.extend(d.fallbacks);
            }
            PickOutcome::Refused(status, body) => panic!("pick refused: {status} {body:?}"),
        }
    }
    chosen
}

/// Picker `i`'s entry for `endpoint`: its state and its latest report.
async fn entry(procs: &Procs, i: usize, endpoint: &str) -> Result<Option<Value>, String> {
    let table = procs.table(i).await.map_err(|e| format!("{e:#}"))?;
    Ok(procs::entry(&table, endpoint).cloned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_killed_is_not_routed_after_the_next_report() {
    let _serial = SERIAL.lock().await;
    let mut procs = Procs::start(ProcSpec {
        engines: 3,
        ..ProcSpec::default()
    })
    .await
    .unwrap();
    let victim = procs.endpoints()[0].clone();
    assert!(
        routed_picks(&procs, 0, 20).await.contains(&victim),
        "the healthy engine {victim} should be a candidate before the fault"
    );

    procs.engines[0].kill().unwrap();
    let killed = Instant::now();
    let report = wait_until_async_every(
        Duration::from_secs(5),
        POLL,
        "the picker to hold a not-ready report for the killed engine",
        || async {
            let entry = entry(&procs, 0, &victim)
                .await?
                .ok_or("gone from the table")?;
            if entry["state"] == "not_ready" {
                Ok(entry["report"].clone())
            } else {
                Err(format!("state {}", entry["state"]))
            }
        },
    )
    .await
    .unwrap();
    let noticed = killed.elapsed();
    println!("engine killed: not_ready at the picker after {noticed:?}");
    // The agent's next scrape fails at once (connection refused) and its report says so: the
    // picker learns it from that report, long before the report would go stale (1 s).
    assert!(
        noticed < Duration::from_millis(700),
        "took {noticed:?}: that is staleness, not the agent's report"
    );
    assert_eq!(report["engine"]["ready"], false, "{report}");
    assert!(
        report["engine"]["error"]
            .as_str()
            .is_some_and(|e| !e.is_empty()),
        "a not-ready report says why: {report}"
    );

    let chosen = routed_picks(&procs, 0, 50).await;
    assert!(
        !chosen.contains(&victim),
        "picks after the report chose the dead engine {victim}: {chosen:?}"
    );
    // The agent keeps reporting it not ready; it does not come back.
    let entry = entry(&procs, 0, &victim).await.unwrap().unwrap();
    assert_eq!(entry["state"], "not_ready", "{entry}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_killed_is_skipped_after_max_report_age_and_forgotten_after_forget_after() {
    let _serial = SERIAL.lock().await;
    let max_report_age = Duration::from_millis(500);
    let forget_after = Duration::from_secs(2);
    let mut procs = Procs::start(ProcSpec {
        engines: 3,
        pickers: vec![vec![
            "--max-report-age=500ms".to_owned(),
            "--forget-after=2s".to_owned(),
        ]],
        ..ProcSpec::default()
    })
    .await
    .unwrap();
    let victim = procs.endpoints()[0].clone();

    procs.agents[0].kill().unwrap();
    let killed = Instant::now();
    // The engine still serves; only its reports stopped. The picker cannot tell, so it keeps the
    // endpoint until the last report is max_report_age old.
    wait_until_async_every(
        Duration::from_secs(5),
        POLL,
        "the silent endpoint to go stale",
        || async {
            let entry = entry(&procs, 0, &victim).await?.ok_or("gone already")?;
            match entry["state"].as_str() {
                Some("stale") => Ok(()),
                Some("ready") => Err("still ready".to_owned()),
                other => Err(format!("unexpected state {other:?}")),
            }
        },
    )
    .await
    .unwrap();
    let stale_after = killed.elapsed();
    // The last report arrived at most an interval (plus a push) before the kill.
    let earliest = max_report_age - INTERVAL * 2;
    assert!(
        stale_after >= earliest && stale_after <= max_report_age + Duration::from_millis(600),
        "stale after {stale_after:?}; --max-report-age is {max_report_age:?}"
    );
    let chosen = routed_picks(&procs, 0, 30).await;
    assert!(
        !chosen.contains(&victim),
        "a stale endpoint was picked: {chosen:?}"
    );

    wait_until_async_every(
        Duration::from_secs(6),
        POLL,
        "the silent endpoint to be forgotten",
        || async {
            match entry(&procs, 0, &victim).await? {
                None => Ok(()),
                Some(entry) => Err(format!("still listed as {}", entry["state"])),
            }
        },
    )
    .await
    .unwrap();
    let forgotten_after = killed.elapsed();
    println!("agent killed: stale after {stale_after:?}, forgotten after {forgotten_after:?}");
    // Forgetting runs on the picker's once-a-second housekeeping tick.
    assert!(
        forgotten_after >= forget_after - INTERVAL * 2
            && forgotten_after <= forget_after + Duration::from_millis(1_800),
        "forgotten after {forgotten_after:?}; --forget-after is {forget_after:?}"
    );
    let states = procs.states(0).await.unwrap();
    for endpoint in &procs.endpoints()[1..] {
        assert_eq!(
            states.get(endpoint).map(String::as_str),
            Some("ready"),
            "{states:?}"
        );
    }
}

/// Outcomes of a pick load running in the background.
#[derive(Debug, Default)]
struct LoadCounts {
    routed: AtomicU64,
    failed: AtomicU64,
    /// Refusals by error code.
    refused: std::sync::Mutex<BTreeMap<String, u64>>,
}

impl LoadCounts {
    fn refused(&self) -> BTreeMap<String, u64> {
        self.refused.lock().unwrap().clone()
    }
}

/// An agent's `seq` as sampled by the test, with when.
type SeqSamples = Vec<(Instant, u64)>;

/// The longest time between two samples with different `seq`s, and how many reports were made.
fn longest_still(samples: &SeqSamples) -> (Duration, u64) {
    let (Some(first), Some(last)) = (samples.first(), samples.last()) else {
        return (Duration::ZERO, 0);
    };
    let mut changed_at = first.0;
    let mut longest = Duration::ZERO;
    for w in samples.windows(2) {
        if w[1].1 != w[0].1 {
            changed_at = w[1].0;
        }
        longest = longest.max(w[1].0 - changed_at);
    }
    (longest, last.1 - first.1)
}

/// The restarted picker's table is whole once every agent has pushed to it. An agent's push
/// fails when the picker dies (its pooled connection is reset, or the connection is refused); the
/// agent tries again with its next report, which reaches the new picker. So every agent has pushed
/// within one interval of the picker listening, and the bound is two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn picker_restarted_under_load_has_a_whole_table_within_two_intervals_and_agents_never_stall()
{
    let _serial = SERIAL.lock().await;
    let mut procs = Procs::start(ProcSpec {
        engines: 4,
        ..ProcSpec::default()
    })
    .await
    .unwrap();
    let picker = procs.pickers[0].addr;
    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(LoadCounts::default());

    // A steady pick load from two clients, on the same address through the restart.
    let mut load = Vec::new();
    for _ in 0..2 {
        let (stop, counts, http) = (stop.clone(), counts.clone(), procs.http.clone());
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match procs::pick(&http, picker, &request()).await {
                    Ok(PickOutcome::Routed(_)) => {
                        counts.routed.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(PickOutcome::Refused(_, body)) => {
                        *counts
                            .refused
                            .lock()
                            .unwrap()
                            .entry(body.error)
                            .or_default() += 1;
                    }
                    // Connection refused while the picker is down: a gateway falls back.
                    Err(_) => {
                        counts.failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    // Every agent's seq, sampled throughout.
    let agents: Vec<_> = procs.agents.iter().map(|a| a.listen).collect();
    let sampler = {
        let (stop, http) = (stop.clone(), procs.http.clone());
        tokio::spawn(async move {
            let mut samples: Vec<SeqSamples> = vec![Vec::new(); agents.len()];
            let mut tick = tokio::time::interval(INTERVAL / 4);
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                for (agent, samples) in agents.iter().zip(&mut samples) {
                    if let Ok(seq) = procs::agent_seq(&http, *agent).await {
                        samples.push((Instant::now(), seq));
                    }
                }
            }
            samples
        })
    };
    let routed_at_least = |n: u64| {
        let counts = counts.clone();
        move || {
            let routed = counts.routed.load(Ordering::Relaxed);
            std::future::ready(if routed >= n {
                Ok(())
            } else {
                Err(format!("{routed} routed"))
            })
        }
    };
    wait_until_async(
        Duration::from_secs(5),
        "the pick load to run",
        routed_at_least(20),
    )
    .await
    .unwrap();

    let mut seq_at_kill = Vec::new();
    for i in 0..procs.agents.len() {
        seq_at_kill.push(procs.agent_seq(i).await.unwrap());
    }
    let killed = Instant::now();
    procs.restart_picker(0).await.unwrap();
    let listening_at = procs.pickers[0].listening_at;
    procs
        .wait_until_whole(0, Duration::from_secs(5))
        .await
        .unwrap();
    let whole_after = listening_at.elapsed();
    let refused_when_whole = counts.refused();
    let routed_when_whole = counts.routed.load(Ordering::Relaxed);
    wait_until_async(
        Duration::from_secs(5),
        "picks to be routed again",
        routed_at_least(routed_when_whole + 50),
    )
    .await
    .unwrap();
    // Watch the agents for a second of reports across the restart.
    wait_until_async(
        Duration::from_secs(5),
        "ten reports from every agent since the kill",
        || async {
            for (i, before) in seq_at_kill.iter().enumerate() {
                let seq = procs.agent_seq(i).await.map_err(|e| format!("{e:#}"))?;
                if seq < before + 10 {
                    return Err(format!("agent {i} at seq {seq}, {before} at the kill"));
                }
            }
            Ok(())
        },
    )
    .await
    .unwrap();
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    let samples = sampler.await.unwrap();

    println!(
        "picker restarted: down {:?}; table whole {whole_after:?} after \"listening\"; \
         picks routed {}, refused {:?}, failed to connect {}",
        listening_at - killed,
        counts.routed.load(Ordering::Relaxed),
        counts.refused(),
        counts.failed.load(Ordering::Relaxed),
    );
    assert!(
        whole_after <= INTERVAL * 2,
        "the restarted picker's table was whole {whole_after:?} after it listened"
    );
    // Once the table is whole nothing is refused: refusals only come from the moments the new
    // picker listened with a partial table.
    assert_eq!(
        counts.refused(),
        refused_when_whole,
        "picks were refused after the table was whole"
    );
    for (i, samples) in samples.iter().enumerate() {
        let (still, advanced) = longest_still(samples);
        let span = samples.last().unwrap().0 - samples[0].0;
        let expected = span.as_secs_f64() / INTERVAL.as_secs_f64();
        println!(
            "agent {i}: seq +{advanced} in {span:?} (about {expected:.0} intervals), \
             longest without a new report {still:?}"
        );
        assert!(
            still <= INTERVAL * 4,
            "agent {i} stalled for {still:?} while the picker restarted"
        );
        assert!(
            advanced as f64 >= expected * 0.7,
            "agent {i} made {advanced} reports in {span:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_metrics_hanging_keeps_the_agent_on_schedule() {
    let _serial = SERIAL.lock().await;
    let dir = ScratchDir::new("faults").unwrap();
    let picker = PickerProc::start(dir.path(), "picker", "127.0.0.1:0", &[])
        .await
        .unwrap();
    let engine = StallServer::start(None).await.unwrap();
    let endpoint = engine.addr.to_string();
    let agent = AgentProc::start(
        dir.path(),
        "agent",
        &format!("http://{endpoint}/metrics"),
        &endpoint,
        &[picker.url()],
        INTERVAL,
    )
    .await
    .unwrap();
    let http = http_client(Duration::from_secs(5));

    let first = wait_until_async(Duration::from_secs(5), "a first report", || async {
        procs::agent_seq(&http, agent.listen).await
    })
    .await
    .unwrap();
    let started = Instant::now();
    let reports = 10;
    let last = wait_until_async(Duration::from_secs(5), "ten more reports", || async {
        let report = procs::agent_report(&http, agent.listen)
            .await
            .map_err(|e| format!("{e:#}"))?;
        match report["seq"].as_u64() {
            Some(seq) if seq >= first + reports => Ok(report),
            seq => Err(format!("seq {seq:?}")),
        }
    })
    .await
    .unwrap();
    let took = started.elapsed();
    println!("engine hanging: {reports} reports in {took:?}");
    assert!(
        took <= INTERVAL * u32::try_from(reports).unwrap() * 3 / 2,
        "{reports} reports took {took:?} at a {INTERVAL:?} interval: the hanging scrape held the agent up"
    );
    assert_eq!(last["engine"]["ready"], false, "{last}");
    assert!(
        last["engine"]["error"]
            .as_str()
            .is_some_and(|e| !e.is_empty()),
        "{last}"
    );
    assert!(
        engine.requests() >= 2,
        "the agent should have kept trying the engine: {} requests",
        engine.requests()
    );
    // The picker hears of it every interval: the endpoint is known, not ready, and fresh.
    let table = procs::table(&http, picker.addr).await.unwrap();
    let entry = procs::entry(&table, &endpoint).expect("the endpoint is in the table");
    assert_eq!(entry["state"], "not_ready", "{entry}");
    assert!(
        entry["age_ms"].as_f64().unwrap() < (INTERVAL * 4).as_secs_f64() * 1e3,
        "{entry}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_picker_does_not_delay_the_agents_other_target() {
    let _serial = SERIAL.lock().await;
    let dir = ScratchDir::new("faults").unwrap();
    let picker = PickerProc::start(dir.path(), "picker", "127.0.0.1:0", &[])
        .await
        .unwrap();
    let slow = StallServer::start(Some(Duration::from_secs(3)))
        .await
        .unwrap();
    let engine = EngineProc::start(dir.path(), "engine", MODEL)
        .await
        .unwrap();
    let endpoint = engine.addr.to_string();
    let _agent = AgentProc::start(
        dir.path(),
        "agent",
        &format!("http://{endpoint}/metrics"),
        &endpoint,
        &[format!("http://{}", slow.addr), picker.url()],
        INTERVAL,
    )
    .await
    .unwrap();
    let http = http_client(Duration::from_secs(5));
    let accepted = || async {
        let text = procs::metrics(&http, picker.addr)
            .await
            .map_err(|e| format!("{e:#}"))?;
        series_value(&text, "inferpick_picker_reports_total{result=\"accepted\"}")
            .ok_or_else(|| "no accepted reports yet".to_owned())
    };
    let first = wait_until_async(Duration::from_secs(5), "a first report", accepted)
        .await
        .unwrap();
    let started = Instant::now();
    let reports = 10.0;
    let oldest = Cell::new(0.0f64);
    wait_until_async(
        Duration::from_secs(5),
        "ten more reports at the real picker",
        || {
            let (http, endpoint, oldest) = (&http, &endpoint, &oldest);
            async move {
                let table = procs::table(http, picker.addr)
                    .await
                    .map_err(|e| format!("{e:#}"))?;
                let age = procs::entry(&table, endpoint)
                    .and_then(|e| e["age_ms"].as_f64())
                    .ok_or("not in the table")?;
                oldest.set(oldest.get().max(age));
                let text = procs::metrics(http, picker.addr)
                    .await
                    .map_err(|e| format!("{e:#}"))?;
                let now =
                    series_value(&text, "inferpick_picker_reports_total{result=\"accepted\"}")
                        .unwrap_or(0.0);
                if now - first >= reports {
                    Ok(())
                } else {
                    Err(format!("{} more", now - first))
                }
            }
        },
    )
    .await
    .unwrap();
    let took = started.elapsed();
    let oldest = oldest.get();
    println!(
        "slow picker: {reports} reports at the real one in {took:?}, oldest report seen {oldest:.0} ms; \
         the slow one got {} requests",
        slow.requests()
    );
    assert!(
        slow.requests() >= 1,
        "the agent never pushed to the slow picker"
    );
    assert!(
        took <= INTERVAL * 15,
        "{reports} reports took {took:?} at a {INTERVAL:?} interval"
    );
    assert!(
        oldest < (INTERVAL * 4).as_secs_f64() * 1e3,
        "the real picker's report was {oldest} ms old at one point"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_clock_skewed_by_an_hour_does_not_change_staleness() {
    let _serial = SERIAL.lock().await;
    let max_report_age = Duration::from_millis(500);
    let dir = ScratchDir::new("faults").unwrap();
    let picker = PickerProc::start(
        dir.path(),
        "picker",
        "127.0.0.1:0",
        &["--max-report-age=500ms".to_owned()],
    )
    .await
    .unwrap();
    let http = http_client(Duration::from_secs(5));
    let hour_ms = 3_600_000;
    let mut agents: Vec<SynthAgent> = [hour_ms, -hour_ms, 0]
        .into_iter()
        .enumerate()
        .map(|(i, skew)| {
            let mut agent = SynthAgent::new(format!("127.0.0.1:{}", 41_000 + i), MODEL);
            agent.clock_skew_ms = skew;
            agent
        })
        .collect();
    let post = |reports: Vec<inferpick_schema::LoadReport>| {
        let http = http.clone();
        async move {
            let response = http
                .post(format!("http://{}/v1/reports", picker.addr))
                .json(&reports)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 204, "{:?}", response.text().await);
        }
    };

    // Fresh reports, at the agents' interval, for twice max_report_age: all ready throughout.
    let mut tick = tokio::time::interval(INTERVAL);
    for _ in 0..10 {
        tick.tick().await;
        post(agents.iter_mut().map(|a| a.next_report(0)).collect()).await;
        let states = procs::states(&procs::table(&http, picker.addr).await.unwrap());
        for agent in &agents {
            assert_eq!(
                states.get(&agent.address).map(String::as_str),
                Some("ready"),
                "a fresh report from an agent {} ms off is not ready: {states:?}",
                agent.clock_skew_ms
            );
        }
    }
    for agent in &agents {
        let pick = PickRequest {
            candidates: Some(vec![agent.address.clone()]),
            ..request()
        };
        match procs::pick(&http, picker.addr, &pick).await.unwrap() {
            PickOutcome::Routed(d) => assert_eq!(d.endpoint, agent.address),
            PickOutcome::Refused(status, body) => {
                panic!("{} refused: {status} {body:?}", agent.address)
            }
        }
    }

    // Silence: each goes stale max_report_age after its last report, whatever it claimed.
    let silent_since = Instant::now();
    let stale_after: RefCell<BTreeMap<i64, Duration>> = RefCell::default();
    wait_until_async_every(
        Duration::from_secs(5),
        POLL,
        "every endpoint to go stale",
        || {
            let (http, agents, stale_after) = (&http, &agents, &stale_after);
            async move {
                let states = procs::states(
                    &procs::table(http, picker.addr)
                        .await
                        .map_err(|e| format!("{e:#}"))?,
                );
                let mut stale_after = stale_after.borrow_mut();
                for agent in agents {
                    if states.get(&agent.address).map(String::as_str) == Some("stale") {
                        stale_after
                            .entry(agent.clock_skew_ms)
                            .or_insert_with(|| silent_since.elapsed());
                    }
                }
                if stale_after.len() == agents.len() {
                    Ok(())
                } else {
                    Err(format!("{states:?}"))
                }
            }
        },
    )
    .await
    .unwrap();
    let stale_after = stale_after.into_inner();
    println!("clock skew: stale after (skew ms → time) {stale_after:?}");
    for (skew, after) in &stale_after {
        assert!(
            *after >= max_report_age - INTERVAL && *after <= max_report_age + INTERVAL * 4,
            "an agent {skew} ms off went stale {after:?} after its last report (max_report_age {max_report_age:?})"
        );
    }
    let spread = *stale_after.values().max().unwrap() - *stale_after.values().min().unwrap();
    assert!(
        spread <= INTERVAL * 2,
        "skewed clocks changed staleness: {stale_after:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_picker_replicas_fed_by_the_same_agents_stay_balanced_under_a_burst() {
    let _serial = SERIAL.lock().await;
    let procs = Procs::start(ProcSpec {
        engines: 4,
        pickers: vec![Vec::new(), Vec::new()],
        ..ProcSpec::default()
    })
    .await
    .unwrap();
    let burst = 160;
    let picks = (0..burst).map(|n| {
        let procs = &procs;
        async move {
            // Distinct prompts: no prefix affinity pulls them together.
            let request = PickRequest {
                prompt: Some(format!(
                    "request {n}: summarise the report for customer {n}"
                )),
                ..request()
            };
            procs.pick(n % 2, &request).await
        }
    });
    let outcomes = futures::future::join_all(picks).await;
    let mut share: BTreeMap<String, usize> =
        procs.endpoints().into_iter().map(|e| (e, 0)).collect();
    for outcome in outcomes {
        match outcome.unwrap() {
            PickOutcome::Routed(d) => *share.get_mut(&d.endpoint).unwrap() += 1,
            PickOutcome::Refused(status, body) => panic!("burst pick refused: {status} {body:?}"),
        }
    }
    let mean = burst as f64 / share.len() as f64;
    let max = *share.values().max().unwrap();
    println!("burst of {burst} picks over two replicas, per endpoint: {share:?} (mean {mean})");
    assert!(
        max as f64 <= 2.0 * mean,
        "one endpoint got {max} of {burst} picks (mean {mean}): {share:?}"
    );
    assert!(
        share.values().all(|n| *n > 0),
        "an endpoint got nothing: {share:?}"
    );
}
