//! Every fixture in `tests/fixtures/metrics/` normalized and compared with its `.expected.json`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use inferpick_schema::EngineKind;
use serde_json::Value;

use super::*;
use crate::rates::{Rates, merge_models};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/metrics")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Compares JSON values, numbers within a relative 1e-9.
fn same(path: &str, got: &Value, want: &Value) -> Result<(), String> {
    match (got, want) {
        (Value::Number(g), Value::Number(w)) => {
            let (g, w) = (g.as_f64().unwrap(), w.as_f64().unwrap());
            if (g - w).abs() <= 1e-9 * w.abs().max(1.0) {
                Ok(())
            } else {
                Err(format!("{path}: got {g}, want {w}"))
            }
        }
        (Value::Object(g), Value::Object(w)) => {
            for (k, wv) in w {
                same(&format!("{path}.{k}"), g.get(k).unwrap_or(&Value::Null), wv)?;
            }
            Ok(())
        }
        (Value::Array(g), Value::Array(w)) if g.len() == w.len() => g
            .iter()
            .zip(w)
            .enumerate()
            .try_for_each(|(i, (g, w))| same(&format!("{path}[{i}]"), g, w)),
        _ if got == want => Ok(()),
        _ => Err(format!("{path}: got {got}, want {want}")),
    }
}

#[test]
fn every_fixture_normalizes_to_its_expected_values() {
    let mut checked = 0;
    let mut failures = Vec::new();
    for entry in std::fs::read_dir(fixtures()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        let Some(stem) = name.strip_suffix(".expected.json") else {
            continue;
        };
        let want: Value = serde_json::from_str(&read(&path)).unwrap();
        let text = read(&fixtures().join(format!("{stem}.prom")));
        let expo = crate::expo::Exposition::parse(&text).unwrap();
        let dialect = detect(&expo).unwrap_or_else(|| panic!("{stem}: no dialect recognized it"));
        let kind: EngineKind = serde_json::from_value(want["engine"].clone()).unwrap();
        assert_eq!(dialect.kind(), kind, "{stem}: detected the wrong engine");

        let mut rates = Rates::default();
        let reading = dialect.read(&expo);
        let load = rates.normalize(&reading, Duration::from_secs(10));
        let models = merge_models(None, &reading);
        let mut check = |what: &str, got: Value, want: &Value| {
            if let Err(e) = same(&format!("{stem} {what}"), &got, want) {
                failures.push(e);
            }
        };
        check("load", serde_json::to_value(&load).unwrap(), &want["load"]);
        check(
            "models",
            serde_json::to_value(&models).unwrap(),
            &want["models"],
        );

        if let Some(after) = want.get("next_after_ms").and_then(Value::as_u64) {
            let next = read(&fixtures().join(format!("{stem}.next.prom")));
            let expo = crate::expo::Exposition::parse(&next).unwrap();
            let at = Duration::from_secs(10) + Duration::from_millis(after);
            let load = rates.normalize(&dialect.read(&expo), at);
            check(
                "next_load",
                serde_json::to_value(&load).unwrap(),
                &want["next_load"],
            );
        }
        checked += 1;
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(checked >= 9, "only {checked} fixtures found");
}

#[test]
fn every_engine_has_a_fixture() {
    let names: Vec<String> = std::fs::read_dir(fixtures())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    for kind in EngineKind::ALL {
        assert!(
            names
                .iter()
                .any(|n| n.starts_with(kind.as_str()) && n.ends_with(".expected.json")),
            "no fixture for {kind}"
        );
    }
}

#[test]
fn current_vllm_names_win_over_old_ones() {
    let text = "vllm:gpu_cache_usage_perc 0.9\nvllm:kv_cache_usage_perc 0.2\n";
    let expo = crate::expo::Exposition::parse(text).unwrap();
    assert_eq!(
        for_kind(EngineKind::Vllm)
            .unwrap()
            .read(&expo)
            .kv_cache_utilization,
        Some(0.2)
    );
}

#[test]
fn vllm_capacity_is_unknown_while_blocks_say_none() {
    let text = "vllm:cache_config_info{block_size=\"16\",num_gpu_blocks=\"None\"} 1\n";
    let expo = crate::expo::Exposition::parse(text).unwrap();
    let r = for_kind(EngineKind::Vllm).unwrap().read(&expo);
    assert_eq!(r.kv_cache_capacity_tokens, None);
    assert_eq!(r.kv_block_size_tokens, Some(16.0));
}

#[test]
fn nothing_known_is_recognized_as_nothing() {
    let expo = crate::expo::Exposition::parse("process_cpu_seconds_total 1\nup 1\n").unwrap();
    assert!(detect(&expo).is_none());
}

#[test]
fn absent_signals_stay_absent() {
    let expo = crate::expo::Exposition::parse("tgi_queue_size 1\n").unwrap();
    let r = for_kind(EngineKind::Tgi).unwrap().read(&expo);
    assert_eq!(r.requests_waiting, Some(1.0));
    assert_eq!(r.requests_running, None);
    assert_eq!(r.kv_cache_utilization, None);
}
