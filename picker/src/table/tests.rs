//! The table's rules on hand-built reports: ingest, restarts, staleness, the cap, counters, ids.

use super::*;
use crate::table::counters::EndpointId;
use crate::table::snapshot::shard_of;
use inferpick_schema::LoadReport;
use inferpick_schema::ModelEntry;

pub(crate) use inferpick_schema::testing::{MODEL, report};

const T0: Duration = Duration::from_secs(10);

#[test]
fn ingest_adds_then_updates_and_snapshots_are_immutable() {
    let t = Table::new(TableConfig::default());
    assert_eq!(
        t.ingest(report("10.0.0.1:8000", 1), T0).unwrap(),
        IngestOutcome::Added
    );
    let before = t.snapshot();
    let mut r = report("10.0.0.1:8000", 2);
    r.load.requests_waiting = Some(9);
    assert_eq!(t.ingest(r, T0).unwrap(), IngestOutcome::Updated);
    let get = |s: &Snapshot| s.get("10.0.0.1:8000").unwrap().report.load.requests_waiting;
    assert_eq!(get(&before), Some(0), "an old snapshot never changes");
    assert_eq!(get(&t.snapshot()), Some(9));
    assert_eq!(t.snapshot().len(), 1);
}

#[test]
fn reordered_and_superseded_reports_are_ignored() {
    let t = Table::new(TableConfig::default());
    t.ingest(report("10.0.0.1:8000", 5), T0).unwrap();
    assert_eq!(
        t.ingest(report("10.0.0.1:8000", 4), T0).unwrap(),
        IngestOutcome::OutOfOrder
    );
    assert_eq!(
        t.ingest(report("10.0.0.1:8000", 5), T0).unwrap(),
        IngestOutcome::OutOfOrder
    );
    let mut restarted = report("10.0.0.1:8000", 1);
    restarted.agent.id = "new-agent".into();
    restarted.agent.started_at_ms = 5_000;
    assert_eq!(t.ingest(restarted, T0).unwrap(), IngestOutcome::Restarted);
    // A late push of the old agent must not undo the restart.
    assert_eq!(
        t.ingest(report("10.0.0.1:8000", 6), T0).unwrap(),
        IngestOutcome::Superseded
    );
    assert_eq!(
        t.snapshot().get("10.0.0.1:8000").unwrap().report.agent.id,
        "new-agent"
    );
}

#[test]
fn a_full_table_refuses_a_batch_with_new_endpoints_whole_and_keeps_updating_known_ones() {
    let t = Table::new(TableConfig {
        max_endpoints: 3,
        ..TableConfig::default()
    });
    t.ingest_batch(
        vec![report("10.0.0.1:8000", 1), report("10.0.0.2:8000", 1)],
        T0,
    )
    .unwrap();
    // Two new endpoints (one listed twice) where one fits: refused whole, naming the first new one.
    let err = t
        .ingest_batch(
            vec![
                report("10.0.0.1:8000", 2),
                report("10.0.0.3:8000", 1),
                report("10.0.0.4:8000", 1),
                report("10.0.0.3:8000", 2),
            ],
            T0,
        )
        .unwrap_err();
    assert!(matches!(
        err,
        IngestError::TableFull {
            index: Some(1),
            held: 2,
            new: 2,
            max_endpoints: 3,
            ..
        }
    ));
    assert_eq!(err.field(), "[1]");
    assert!(err.to_string().contains("10.0.0.3:8000"), "{err}");
    assert!(err.to_string().contains("--max-endpoints"), "{err}");
    let s = t.snapshot();
    assert_eq!(s.len(), 2);
    assert_eq!(s.get("10.0.0.1:8000").unwrap().report.seq, 1, "unchanged");
    // A duplicate of a new endpoint counts once: exactly fills the table.
    t.ingest_batch(
        vec![report("10.0.0.3:8000", 1), report("10.0.0.3:8000", 2)],
        T0,
    )
    .unwrap();
    assert_eq!(t.len(), 3);
    assert!(matches!(
        t.ingest(report("10.0.0.5:8000", 1), T0),
        Err(IngestError::TableFull { index: None, .. })
    ));
    // Known endpoints keep updating at the cap.
    assert_eq!(
        t.ingest(report("10.0.0.1:8000", 2), T0).unwrap(),
        IngestOutcome::Updated
    );
    // Forgetting makes room again.
    let later = T0 + TableConfig::default().forget_after + Duration::from_secs(1);
    t.ingest(report("10.0.0.1:8000", 3), later).unwrap();
    assert_eq!(t.forget_silent(later), 2);
    assert_eq!(t.len(), 1);
    t.ingest_batch(
        vec![report("10.0.0.5:8000", 1), report("10.0.0.6:8000", 1)],
        later,
    )
    .unwrap();
    assert_eq!(t.len(), 3);
    assert_eq!(t.snapshot().len(), 3);
}

proptest::proptest! {
    /// Whatever batches arrive — new and known endpoints, duplicates, an invalid report here
    /// and there — a refused batch changes nothing, an accepted one holds every address it
    /// names, and the table never exceeds its cap.
    #[test]
    fn batches_apply_whole_or_not_at_all_and_the_cap_holds(
        cap in 1usize..12,
        batches in proptest::collection::vec(
            proptest::collection::vec((0u8..24, proptest::bool::weighted(0.05)), 1..8),
            1..30,
        ),
    ) {
        let t = Table::new(TableConfig { max_endpoints: cap, ..TableConfig::default() });
        for (seq, batch) in batches.iter().enumerate() {
            let before: Vec<(String, u64)> = t
                .snapshot()
                .iter()
                .map(|e| (e.address.to_string(), e.report.seq))
                .collect();
            let reports: Vec<LoadReport> = batch
                .iter()
                .map(|&(host, invalid)| {
                    let mut r = report(&format!("10.0.0.{host}:8000"), seq as u64 + 1);
                    if invalid {
                        r.load.kv_cache_utilization = Some(2.0);
                    }
                    r
                })
                .collect();
            let addresses: Vec<String> =
                reports.iter().map(|r| r.endpoint.address.clone()).collect();
            let result = t.ingest_batch(reports, T0);
            let after = t.snapshot();
            match result {
                Ok(_) => {
                    for a in &addresses {
                        proptest::prop_assert!(after.get(a).is_some(), "{} missing", a);
                    }
                }
                Err(_) => {
                    let now: Vec<(String, u64)> = after
                        .iter()
                        .map(|e| (e.address.to_string(), e.report.seq))
                        .collect();
                    proptest::prop_assert_eq!(now, before);
                }
            }
            proptest::prop_assert!(after.len() <= cap);
            proptest::prop_assert_eq!(after.len(), t.len());
        }
    }
}

#[test]
fn concurrent_pushes_never_grow_the_table_past_its_cap() {
    let t = Arc::new(Table::new(TableConfig {
        max_endpoints: 50,
        ..TableConfig::default()
    }));
    let threads: Vec<_> = (0..4)
        .map(|w| {
            let t = t.clone();
            std::thread::spawn(move || {
                for b in 0..20 {
                    let batch = (0..5)
                        .map(|i| report(&format!("10.{w}.{b}.{i}:8000"), 1))
                        .collect();
                    let _ = t.ingest_batch(batch, T0);
                }
            })
        })
        .collect();
    for th in threads {
        th.join().unwrap();
    }
    assert_eq!(t.snapshot().len(), 50);
    assert_eq!(t.len(), 50);
}

#[test]
fn invalid_reports_change_nothing_and_name_the_field() {
    let t = Table::new(TableConfig::default());
    let mut bad = report("10.0.0.2:8000", 1);
    bad.load.kv_cache_utilization = Some(1.5);
    let err = t
        .ingest_batch(vec![report("10.0.0.1:8000", 1), bad], T0)
        .unwrap_err();
    assert_eq!(err.field(), "[1].load.kv_cache_utilization");
    assert!(err.to_string().contains("10.0.0.2:8000"), "{err}");
    assert!(
        t.snapshot().is_empty(),
        "the valid report of the batch was not applied either"
    );
}

#[test]
fn staleness_uses_arrival_time() {
    let t = Table::new(TableConfig::default());
    t.ingest(report("10.0.0.1:8000", 1), T0).unwrap();
    let s = t.snapshot();
    let e = s.get("10.0.0.1:8000").unwrap();
    assert_eq!(
        e.state(T0 + Duration::from_millis(999), s.max_report_age),
        EndpointState::Ready
    );
    assert_eq!(
        e.state(T0 + Duration::from_millis(1001), s.max_report_age),
        EndpointState::Stale
    );
    let mut down = report("10.0.0.1:8000", 2);
    down.engine.ready = false;
    t.ingest(down, T0).unwrap();
    let s = t.snapshot();
    assert_eq!(
        s.get("10.0.0.1:8000").unwrap().state(T0, s.max_report_age),
        EndpointState::NotReady
    );
}

#[test]
fn forget_silent_drops_only_silent_endpoints() {
    let t = Table::new(TableConfig::default());
    t.ingest(report("10.0.0.1:8000", 1), T0).unwrap();
    t.ingest(report("10.0.0.2:8000", 1), T0 + Duration::from_secs(30))
        .unwrap();
    assert_eq!(t.forget_silent(T0 + Duration::from_secs(60)), 0);
    assert_eq!(t.forget_silent(T0 + Duration::from_secs(61)), 1);
    let s = t.snapshot();
    assert!(s.get("10.0.0.1:8000").is_none());
    assert!(s.get("10.0.0.2:8000").is_some());
}

#[test]
fn inflight_is_closed_by_done_and_by_newer_reports() {
    let t = Table::new(TableConfig::default());
    t.ingest(report("10.0.0.1:8000", 1), T0).unwrap();
    let s = t.snapshot();
    let e = s.get("10.0.0.1:8000").unwrap();
    t.record_test(e, 1, 100, &[]);
    t.record_test(e, 2, 50, &[]);
    assert_eq!(
        e.inflight(),
        Inflight {
            requests: 2,
            prompt_tokens: 150
        }
    );
    assert_eq!(t.done(1, T0), DoneOutcome::Closed);
    assert_eq!(t.done(1, T0), DoneOutcome::Unknown);
    assert_eq!(
        e.inflight(),
        Inflight {
            requests: 1,
            prompt_tokens: 50
        }
    );
    t.ingest(report("10.0.0.1:8000", 2), T0).unwrap();
    let s = t.snapshot();
    let e = s.get("10.0.0.1:8000").unwrap();
    assert_eq!(e.inflight(), Inflight::default());
    // Decision 2 belongs to the previous report's epoch: closing it must not go below zero
    // nor undo a decision of the new epoch.
    t.record_test(e, 3, 70, &[]);
    assert_eq!(t.done(2, T0), DoneOutcome::Closed);
    assert_eq!(
        e.inflight(),
        Inflight {
            requests: 1,
            prompt_tokens: 70
        }
    );
    assert_eq!(e.routed_total(), 3);
}

#[test]
fn open_decisions_are_bounded() {
    let t = Table::new(TableConfig {
        max_open_decisions: 10,
        ..TableConfig::default()
    });
    t.ingest(report("10.0.0.1:8000", 1), T0).unwrap();
    let s = t.snapshot();
    let e = s.get("10.0.0.1:8000").unwrap();
    for id in 0..1000 {
        t.record_test(e, id, 1, &[]);
    }
    assert_eq!(t.open_decisions(), 10);
    assert_eq!(
        t.done(0, T0),
        DoneOutcome::Unknown,
        "the oldest were dropped"
    );
    assert_eq!(t.done(999, T0), DoneOutcome::Closed);
    assert!(lock(&t.ledger).remembered() <= 2 * 10 + 64);
}

#[test]
fn closed_decisions_do_not_pile_up_below_the_cap() {
    // Every decision closed by `done`, far below the cap: what is kept follows the open count,
    // not the cap (a long soak at a steady pick rate would otherwise grow by 16 bytes a pick).
    let t = Table::new(TableConfig::default());
    t.ingest(report("10.0.0.1:8000", 1), T0).unwrap();
    let s = t.snapshot();
    let e = s.get("10.0.0.1:8000").unwrap();
    for id in 0..50_000 {
        t.record_test(e, id, 1, &[]);
        assert_eq!(t.done(id, T0), DoneOutcome::Closed);
    }
    assert_eq!(t.open_decisions(), 0);
    assert!(lock(&t.ledger).remembered() <= 64 + 1);
}

#[test]
fn prefill_capacity_survives_an_idle_report() {
    let t = Table::new(TableConfig::default());
    let mut busy = report("10.0.0.1:8000", 1);
    busy.load.prompt_tokens_per_second = Some(12_000.0);
    busy.load.requests_waiting = Some(4);
    t.ingest(busy, T0).unwrap();
    let mut idle = report("10.0.0.1:8000", 2);
    idle.load.prompt_tokens_per_second = Some(10.0);
    idle.load.requests_waiting = Some(0);
    t.ingest(idle, T0).unwrap();
    let capacity = t
        .snapshot()
        .get("10.0.0.1:8000")
        .unwrap()
        .learned
        .prefill
        .unwrap();
    assert_eq!(capacity, 12_000.0);
}

#[test]
fn routed_prefill_outlives_reports_until_done_or_an_empty_queue_bounds_it() {
    let t = Table::new(TableConfig::default());
    let addr = "10.0.0.1:8000";
    t.ingest(report(addr, 1), T0).unwrap();
    let now = duration_ns(T0);
    let busy_until = |t: &Table| {
        let s = t.snapshot();
        s.prefill_busy_until_ns(s.get(addr).unwrap().id())
    };
    let e = t.snapshot().get(addr).unwrap().clone();
    t.record_with_prefill(&e, 1, 4_000, &[], Some((now, 400_000_000)));
    t.record_with_prefill(&e, 2, 2_000, &[], Some((now, 200_000_000)));
    assert_eq!(busy_until(&t), now + 600_000_000);
    // A report with a queue zeroes the in-flight requests but keeps their prefill.
    let mut queued = report(addr, 2);
    queued.load.requests_waiting = Some(2);
    t.ingest(queued, T0).unwrap();
    assert_eq!(t.snapshot().get(addr).unwrap().inflight().requests, 0);
    assert_eq!(busy_until(&t), now + 600_000_000);
    // The first request finishes 100 ms on: the 300 ms of its prefill still counted leave.
    assert_eq!(
        t.done(1, T0 + Duration::from_millis(100)),
        DoneOutcome::Closed
    );
    assert_eq!(busy_until(&t), now + 300_000_000);
    // A `done` after its share's end takes nothing from work routed later.
    t.record_with_prefill(&e, 3, 9_000, &[], Some((now + 700_000_000, 500_000_000)));
    assert_eq!(busy_until(&t), now + 1_200_000_000);
    t.done(2, T0 + Duration::from_millis(700));
    assert_eq!(busy_until(&t), now + 1_200_000_000);
    // A report that shows an empty queue bounds the backlog to a second past its arrival.
    let mut idle = report(addr, 3);
    idle.load.requests_waiting = Some(0);
    t.ingest(idle, T0 + Duration::from_millis(100)).unwrap();
    assert_eq!(busy_until(&t), now + 1_100_000_000);
}

#[test]
fn model_keys_find_every_listed_model_and_its_kind() {
    let t = Table::new(TableConfig::default());
    let mut r = report("10.0.0.1:8000", 1);
    for i in 0..5 {
        r.models.push(ModelEntry {
            name: format!("lora-{i}"),
            adapter_of: Some(MODEL.into()),
        });
    }
    t.ingest(r, T0).unwrap();
    let s = t.snapshot();
    let e = s.get("10.0.0.1:8000").unwrap();
    assert_eq!(e.serves(ModelKey::of(MODEL)), Some(false));
    assert_eq!(e.serves(ModelKey::of("lora-0")), Some(true));
    assert_eq!(
        e.serves(ModelKey::of("lora-4")),
        Some(true),
        "beyond the inline keys"
    );
    assert_eq!(e.serves(ModelKey::of("lora-5")), None);
    assert_eq!(
        e.model("lora-4").unwrap().adapter_of.as_deref(),
        Some(MODEL)
    );
    assert_ne!(ModelKey::of("a"), ModelKey::of("b"));
}

/// Every shard's hot records mirror its endpoints, in order, and every endpoint's counters know
/// where it sits.
fn assert_hot_mirrors_entries(s: &Snapshot) {
    assert_eq!(s.len(), s.iter().count());
    assert_eq!(s.shards.len(), SHARDS);
    assert_eq!(s.shards.iter().count(), SHARDS);
    assert_eq!((&s.shards).into_iter().count(), SHARDS);
    for (k, shard) in s.shards.iter().enumerate() {
        assert_eq!(shard.records.len(), shard.entries.len());
        for (i, (h, e)) in shard.records.iter().zip(&shard.entries).enumerate() {
            assert_eq!(h.id, e.id(), "{}", e.address);
            assert_eq!(
                s.locate(h.id),
                Some(Slot {
                    shard: k as u32,
                    index: i as u32
                }),
                "{}",
                e.address
            );
            assert_eq!(h.arrived_ns, duration_ns(e.arrived_at));
            assert_eq!(h.ready, e.report.engine.ready);
            assert_eq!(h.waiting, e.report.load.requests_waiting.unwrap_or(0));
            assert_eq!(h.running, e.report.load.requests_running.unwrap_or(0));
            assert_eq!(h.kv(), e.report.load.kv_cache_utilization);
            assert_eq!(s.inflight(h.id), e.inflight());
            for m in &e.report.models {
                assert_eq!(
                    h.serves(ModelKey::of(&m.name), e),
                    Some(m.adapter_of.is_some()),
                    "{} serves {}",
                    e.address,
                    m.name
                );
            }
            assert_eq!(h.serves(ModelKey::of("not-served"), e), None);
        }
    }
}

#[test]
fn hot_records_follow_ingest_restart_staleness_and_forget() {
    let t = Table::new(TableConfig::default());
    let batch: Vec<_> = (0..200)
        .map(|i| report(&format!("10.1.0.{i}:8000"), 1))
        .collect();
    t.ingest_batch(batch, T0).unwrap();
    assert_hot_mirrors_entries(&t.snapshot());
    // Endpoints added one at a time, sorting before those already in their shards.
    for i in 0..40 {
        t.ingest(report(&format!("10.0.9.{i}:8000"), 1), T0)
            .unwrap();
    }
    assert_hot_mirrors_entries(&t.snapshot());

    // Updates: new signals, a second model, not ready.
    let mut r = report("10.1.0.7:8000", 2);
    r.load.requests_waiting = Some(42);
    r.load.kv_cache_utilization = None;
    r.models.push(ModelEntry {
        name: "lora-x".into(),
        adapter_of: Some(MODEL.into()),
    });
    t.ingest(r, T0 + Duration::from_millis(500)).unwrap();
    let mut down = report("10.1.0.8:8000", 2);
    down.engine.ready = false;
    t.ingest(down, T0).unwrap();
    let mut restarted = report("10.1.0.9:8000", 1);
    restarted.agent.id = "new-agent".into();
    restarted.agent.started_at_ms = 9_000;
    restarted.load.requests_running = Some(3);
    assert_eq!(t.ingest(restarted, T0).unwrap(), IngestOutcome::Restarted);
    let s = t.snapshot();
    assert_hot_mirrors_entries(&s);
    let hot = |addr: &str| {
        let shard = &s.shards[shard_of(addr)];
        let i = shard
            .entries
            .iter()
            .position(|e| &*e.address == addr)
            .unwrap();
        shard.records[i].clone()
    };
    let age = s.max_report_age;
    let now = duration_ns(T0 + Duration::from_millis(1_200));
    assert_eq!(hot("10.1.0.7:8000").waiting, 42);
    assert_eq!(
        hot("10.1.0.7:8000").state(now, duration_ns(age)),
        EndpointState::Ready,
        "its report is the newest"
    );
    assert_eq!(
        hot("10.1.0.1:8000").state(now, duration_ns(age)),
        EndpointState::Stale
    );
    assert_eq!(
        hot("10.1.0.8:8000").state(duration_ns(T0), duration_ns(age)),
        EndpointState::NotReady
    );
    assert_eq!(hot("10.1.0.9:8000").running, 3);

    // The counters the scan reads are the endpoint's own.
    let e = s.get("10.1.0.3:8000").unwrap();
    t.record_test(e, 1, 300, &[]);
    assert_eq!(
        s.inflight(hot("10.1.0.3:8000").id),
        Inflight {
            requests: 1,
            prompt_tokens: 300
        }
    );

    // Forgetting drops the records with their endpoints.
    assert_eq!(t.forget_silent(T0 + Duration::from_millis(60_400)), 239);
    let s = t.snapshot();
    assert_eq!(s.len(), 1);
    assert_hot_mirrors_entries(&s);
}

#[test]
fn an_update_that_changes_the_model_list_changes_what_the_endpoint_serves() {
    let t = Table::new(TableConfig::default());
    let addr = "10.0.0.1:8000";
    let lora = |name: &str| ModelEntry {
        name: name.into(),
        adapter_of: Some(MODEL.into()),
    };
    let mut r = report(addr, 1);
    r.models.extend([lora("a"), lora("b"), lora("c")]);
    t.ingest(r, T0).unwrap();
    // Same names, same order: the keys carry over.
    let mut r = report(addr, 2);
    r.models.extend([lora("a"), lora("b"), lora("c")]);
    t.ingest(r, T0).unwrap();
    let serves = |name: &str| t.snapshot().get(addr).unwrap().serves(ModelKey::of(name));
    assert_eq!(serves("c"), Some(true));
    // One adapter replaced, one listed as a base model now.
    let mut r = report(addr, 3);
    r.models.extend([
        lora("a"),
        ModelEntry {
            name: "b".into(),
            adapter_of: None,
        },
        lora("d"),
    ]);
    t.ingest(r, T0).unwrap();
    assert_eq!(serves("a"), Some(true));
    assert_eq!(serves("b"), Some(false));
    assert_eq!(serves("c"), None);
    assert_eq!(serves("d"), Some(true));
    // Fewer models.
    t.ingest(report(addr, 4), T0).unwrap();
    assert_eq!(serves(MODEL), Some(false));
    assert_eq!(serves("a"), None);
    assert_hot_mirrors_entries(&t.snapshot());
}

#[test]
fn a_reused_id_starts_with_clean_counters() {
    let t = Table::new(TableConfig::default());
    t.ingest(report("10.0.0.1:8000", 1), T0).unwrap();
    let s = t.snapshot();
    let old = s.get("10.0.0.1:8000").unwrap();
    let old_id = old.id();
    t.record_test(old, 1, 100, &[7, 8]);
    t.record_test(old, 2, 100, &[]);
    assert_eq!(t.forget_silent(T0 + Duration::from_secs(61)), 1);
    t.ingest(report("10.0.0.2:8000", 1), T0 + Duration::from_secs(61))
        .unwrap();
    let s = t.snapshot();
    let new = s.get("10.0.0.2:8000").unwrap();
    assert_eq!(new.id(), old_id, "the forgotten endpoint's id is reused");
    assert_eq!(new.inflight(), Inflight::default());
    assert_eq!(new.routed_total(), 0);
    assert_eq!(
        lock(&t.affinity).blocks_of(ModelKey::of(MODEL), new.id()),
        0,
        "no prefix blocks inherited"
    );
    t.record_test(new, 3, 40, &[]);
    // A late `done` for the forgotten endpoint must not touch the new one's estimate.
    assert_eq!(t.done(1, T0), DoneOutcome::Closed);
    assert_eq!(
        new.inflight(),
        Inflight {
            requests: 1,
            prompt_tokens: 40
        }
    );
    assert_hot_mirrors_entries(&s);
}

#[test]
fn ids_past_one_counter_chunk_get_their_own_counters() {
    let t = Table::new(TableConfig::default());
    let n = 1024 + 10;
    let batch: Vec<_> = (0..n)
        .map(|i| report(&format!("10.2.{}.{}:8000", i / 250, i % 250), 1))
        .collect();
    t.ingest_batch(batch, T0).unwrap();
    let s = t.snapshot();
    for (k, e) in s.iter().enumerate() {
        t.record_test(e, k as u128, k as u64, &[]);
    }
    for (k, e) in s.iter().enumerate() {
        assert_eq!(
            e.inflight(),
            Inflight {
                requests: 1,
                prompt_tokens: k as u64
            },
            "{}",
            e.address
        );
    }
    assert_hot_mirrors_entries(&s);
}

#[test]
fn set_config_republishes_the_staleness_bound() {
    let t = Table::new(TableConfig::default());
    t.ingest(report("10.0.0.1:8000", 1), T0).unwrap();
    let before = t.snapshot();
    t.set_config(TableConfig {
        max_report_age: Duration::from_secs(5),
        ..TableConfig::default()
    });
    assert_eq!(before.max_report_age, Duration::from_secs(1));
    let after = t.snapshot();
    assert_eq!(after.max_report_age, Duration::from_secs(5));
    assert_eq!(after.len(), 1, "the endpoints stay");
}

#[test]
fn many_endpoints_spread_over_shards_and_stay_findable() {
    let t = Table::new(TableConfig::default());
    let batch: Vec<_> = (0..500)
        .map(|i| report(&format!("10.0.{}.{}:8000", i / 250, i % 250), 1))
        .collect();
    let outcomes = t.ingest_batch(batch, T0).unwrap();
    assert!(outcomes.iter().all(|o| *o == IngestOutcome::Added));
    let s = t.snapshot();
    assert_eq!(s.len(), 500);
    assert!(s.get("10.0.1.249:8000").is_some());
    let ids: std::collections::HashSet<EndpointId> = s.iter().map(|e| e.id()).collect();
    assert_eq!(ids.len(), 500, "ids are unique");
}

impl Table {
    /// Records a decision of `prompt_tokens` for `e` under [`MODEL`] (test shorthand).
    pub(crate) fn record_test(
        &self,
        e: &Endpoint,
        decision: u128,
        prompt_tokens: u64,
        keys: &[u64],
    ) {
        self.record_with_prefill(e, decision, prompt_tokens, keys, None);
    }

    /// [`record_test`](Self::record_test) with routed prefill `(now_ns, prefill_ns)`.
    pub(crate) fn record_with_prefill(
        &self,
        e: &Endpoint,
        decision: u128,
        prompt_tokens: u64,
        keys: &[u64],
        prefill: Option<(u64, u64)>,
    ) {
        let routed = Routed {
            prompt_tokens,
            prefill,
            predicted: None,
        };
        self.record(e, decision, ModelKey::of(MODEL), routed, (keys, None));
    }
}

#[test]
fn a_restarted_agent_whose_clock_is_behind_takes_over() {
    let t = Table::new(TableConfig::default());
    let mut old = report("10.0.0.1:8000", 7);
    old.agent.started_at_ms = 10_000;
    t.ingest(old, T0).unwrap();
    // The new agent runs on a node whose wall clock is behind the old one's.
    let mut new = report("10.0.0.1:8000", 1);
    new.agent.id = "new-agent".into();
    new.agent.started_at_ms = 5_000;
    assert_eq!(t.ingest(new, T0).unwrap(), IngestOutcome::Restarted);
    let mut next = report("10.0.0.1:8000", 2);
    next.agent.id = "new-agent".into();
    assert_eq!(t.ingest(next, T0).unwrap(), IngestOutcome::Updated);
    // The old agent's late push is a leftover, whatever its clock says.
    let mut late = report("10.0.0.1:8000", 8);
    late.agent.started_at_ms = 10_000;
    assert_eq!(t.ingest(late, T0).unwrap(), IngestOutcome::Superseded);
    assert_eq!(
        t.snapshot().get("10.0.0.1:8000").unwrap().report.agent.id,
        "new-agent"
    );
}

#[test]
fn a_reloaded_prefix_bound_applies_to_the_index() {
    let t = Table::new(TableConfig::default());
    t.ingest(report("10.0.0.1:8000", 1), T0).unwrap();
    let e = t.snapshot().get("10.0.0.1:8000").unwrap().clone();
    let keys: Vec<u64> = (0..100).collect();
    t.record_test(&e, 1, 10, &keys);
    assert_eq!(
        lock(&t.affinity).blocks_of(ModelKey::of(MODEL), e.id()),
        100
    );
    t.set_config(TableConfig {
        prefix_blocks_per_endpoint: 10,
        ..TableConfig::default()
    });
    t.record_test(&e, 2, 10, &[1000]);
    assert!(lock(&t.affinity).blocks_of(ModelKey::of(MODEL), e.id()) <= 10);
}
