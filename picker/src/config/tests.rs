//! The configuration's behaviour: precedence, every problem reported with its source and path,
//! and the declarations' own consistency (defaults accepted, README in step).

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use super::declare::table;
use super::*;
use crate::scheduler::{CostModel, Policy};
use crate::table::TableConfig;

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "inferpick-picker-config-{name}-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn the_contract_example_file_loads() {
    let d = scratch("example");
    let token = write(&d, "token", "s3cret\n");
    let file = write(
        &d,
        "picker.yaml",
        &format!(
            r#"
listen: 0.0.0.0:9000
grpc_listen: 0.0.0.0:9002
auth: {{ report_token_file: {}, pick_token_file: null }}
staleness: {{ max_report_age: 1s, forget_after: 60s }}
policy: inferpick
objectives:
  - {{ name: chat, priority: 10 }}
  - {{ name: batch, priority: -1 }}
saturation: {{ queue_depth_threshold: 5, kv_cache_threshold: 0.8 }}
models:
  - {{ name: llama, targets: [{{ model: meta-llama/Llama-3.1-8B-Instruct, weight: 100 }}] }}
"#,
            token.display()
        ),
    );
    let s = Settings::from_args(Args {
        config: Some(file),
        ..Args::default()
    })
    .unwrap();
    assert_eq!(s.objectives["batch"], -1);
    assert_eq!(s.rewrites["llama"][0].weight, 100);
    assert_eq!(s.report_token_file.as_deref(), Some(token.as_path()));
    assert_eq!(read_token(&token).unwrap(), "s3cret");
    assert_eq!(s.scheduler_config().objectives["chat"], 10);
}

#[test]
fn flags_override_the_file() {
    let d = scratch("override");
    let file = write(
        &d,
        "p.yaml",
        "policy: gie\nstaleness: { max_report_age: 2s }\n",
    );
    let args = Args::parse_from([
        "inferpick-picker",
        "--config",
        file.to_str().unwrap(),
        "--policy",
        "round-robin",
    ]);
    let s = Settings::from_args(args).unwrap();
    assert_eq!(s.policy, Policy::RoundRobin);
    assert_eq!(s.max_report_age, Duration::from_secs(2));
    assert_eq!(s.listen, "0.0.0.0:9000".parse().unwrap());
}

#[test]
fn every_problem_is_reported_with_file_and_path() {
    let d = scratch("bad");
    let file = write(
        &d,
        "bad.yaml",
        "listen: nowhere\nstaleness: { max_report_age: fast, max_age: 1s }\npolicy: fastest\nsaturation: { kv_cache_threshold: 1.5 }\nobjectives: [{ name: chat, priority: high }]\nmodels: [{ name: llama, targets: [] }]\ncolour: blue\n",
    );
    let args = Args::parse_from([
        "inferpick-picker",
        "--config",
        file.to_str().unwrap(),
        "--forget-after",
        "soon",
    ]);
    let err = Settings::from_args(args).unwrap_err();
    let text = err.to_string();
    let paths: Vec<&str> = err.issues.iter().map(|i| i.path.as_str()).collect();
    for p in [
        "listen",
        "staleness.max_report_age",
        "staleness.max_age",
        "policy",
        "saturation.kv_cache_threshold",
        "objectives[0].priority",
        "models[0].targets",
        "colour",
        "--forget-after",
    ] {
        assert!(paths.contains(&p), "{p} missing from {text}");
    }
    assert!(
        text.contains(&format!("{}: colour: unknown key", file.display())),
        "{text}"
    );
    assert!(text.contains("\"fast\" is not a duration"), "{text}");
}

#[test]
fn unreadable_token_files_and_crossed_durations_are_errors() {
    let args = Args::parse_from([
        "inferpick-picker",
        "--report-token-file",
        "/nonexistent/token",
        "--max-report-age",
        "10s",
        "--forget-after",
        "5s",
    ]);
    let err = Settings::from_args(args).unwrap_err();
    let paths: Vec<&str> = err.issues.iter().map(|i| i.path.as_str()).collect();
    assert_eq!(paths, ["forget_after", "report_token_file"], "{err}");
}

#[test]
fn hardening_settings_come_from_flags_and_the_file() {
    let d = scratch("hardening");
    let file = write(
        &d,
        "p.yaml",
        "auth: { trusted_proxies: [10.0.0.0/8, \"fd00::/64\"] }\nlimits: { max_endpoints: 500, request_timeout: 3s }\nlifecycle: { shutdown_delay: 0s, drain_timeout: 5s }\n",
    );
    let s = Settings::from_args(Args::parse_from([
        "p",
        "--config",
        file.to_str().unwrap(),
        "--request-timeout",
        "300ms",
    ]))
    .unwrap();
    assert_eq!(s.trusted_proxies.len(), 2);
    assert_eq!(s.max_endpoints, 500);
    assert_eq!(s.table_config().max_endpoints, 500);
    assert_eq!(s.request_timeout, Duration::from_millis(300));
    assert_eq!(s.shutdown_delay, Duration::ZERO);
    assert_eq!(s.drain_timeout, Duration::from_secs(5));
    let defaults = Settings::default();
    assert_eq!(
        (
            defaults.max_endpoints,
            defaults.request_timeout,
            defaults.shutdown_delay,
            defaults.drain_timeout
        ),
        (
            10_000,
            Duration::from_secs(10),
            Duration::from_secs(2),
            Duration::from_secs(30)
        )
    );
    assert!(defaults.trusted_proxies.is_empty() && defaults.tls.is_none());
}

#[test]
fn bad_hardening_settings_are_each_named() {
    let d = scratch("bad-hardening");
    let file = write(
        &d,
        "p.yaml",
        "auth: { trusted_proxies: [10.0.0.1/8] }\nlimits: { max_endpoints: 0, request_timeout: never, idle: 1s }\ntls: { cert_file: /nonexistent/cert.pem }\nlifecycle: { drain_timeout: 0s }\n",
    );
    let err = Settings::from_args(Args::parse_from([
        "p",
        "--config",
        file.to_str().unwrap(),
        "--trusted-proxies",
        "everyone",
        "--max-endpoints",
        "lots",
        "--shutdown-delay",
        "later",
    ]))
    .unwrap_err();
    let paths: Vec<&str> = err.issues.iter().map(|i| i.path.as_str()).collect();
    for p in [
        "auth.trusted_proxies[0]",
        "limits.max_endpoints",
        "limits.request_timeout",
        "limits.idle",
        "tls.cert_file",
        "lifecycle.drain_timeout",
        "--trusted-proxies",
        "--max-endpoints",
        "--shutdown-delay",
    ] {
        assert!(paths.contains(&p), "{p} missing from {err}");
    }
    let err = Settings::from_args(Args::parse_from(["p", "--tls-cert", "/x.pem"])).unwrap_err();
    assert!(
        err.to_string().contains("--tls-cert: needs --tls-key"),
        "{err}"
    );
    let err = Settings::from_args(Args::parse_from([
        "p",
        "--tls-cert",
        "/nonexistent/cert.pem",
        "--tls-key",
        "/nonexistent/key.pem",
    ]))
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("cannot read certificates from /nonexistent/cert.pem"),
        "{err}"
    );
}

#[test]
fn grpc_listen_can_be_off() {
    let s = Settings::from_args(Args::parse_from([
        "p",
        "--grpc-listen",
        "off",
        "--extproc-fallbacks",
        "2",
    ]))
    .unwrap();
    assert_eq!(s.grpc_listen, None);
    assert_eq!(s.extproc_fallbacks, 2);
}

#[test]
fn a_tls_file_without_the_other_is_named_in_the_source_that_gave_it() {
    let d = scratch("tls-pair");
    let file = write(&d, "p.yaml", "tls: { key_file: /nonexistent/key.pem }\n");
    let err = Settings::from_args(Args {
        config: Some(file.clone()),
        ..Args::default()
    })
    .unwrap_err();
    assert!(
        err.to_string().contains(&format!(
            "{}: tls.key_file: needs tls.cert_file as well",
            file.display()
        )),
        "{err}"
    );
    let err = Settings::from_args(Args::parse_from(["p", "--tls-key", "/k.pem"])).unwrap_err();
    assert!(
        err.to_string()
            .contains("flags: --tls-key: needs --tls-cert as well"),
        "{err}"
    );
}

#[test]
fn every_declared_default_is_a_value_its_setting_accepts() {
    let defaults = Settings::default();
    for t in table() {
        let text = t.default_text();
        if text.is_empty() {
            continue;
        }
        let mut s = Settings::default();
        t.apply_text(&mut s, &text)
            .unwrap_or_else(|e| panic!("{}: default {text:?} refused: {e}", t.key()));
        assert_eq!(s, defaults, "{}: {text:?} does not read back", t.key());
    }
}

#[test]
fn keys_and_flags_are_unique_and_flags_have_their_env_var() {
    let mut keys = std::collections::HashSet::new();
    let mut flags = std::collections::HashSet::new();
    for t in table() {
        assert!(keys.insert(t.key()), "{} declared twice", t.key());
        assert!(!t.doc().is_empty(), "{} has no doc comment", t.key());
        if let Some(f) = t.flag() {
            assert!(flags.insert(f.long.clone()), "{} declared twice", f.long);
            let caps = f.long.trim_start_matches("--").replace('-', "_");
            assert_eq!(f.env, format!("INFERPICK_{}", caps.to_uppercase()));
        }
    }
    let mut command = <Args as clap::CommandFactory>::command();
    command.clone().debug_assert();
    let help = command.render_help().to_string();
    for needle in [
        "--max-report-age <DURATION>",
        "[default: 1s]",
        "INFERPICK_MAX_REPORT_AGE",
        "--grpc-listen <ADDR|off>",
        "--config <PATH>",
    ] {
        assert!(help.contains(needle), "{needle} missing from\n{help}");
    }
}

#[test]
fn flags_are_read_into_their_fields() {
    let args = Args::parse_from([
        "p",
        "--config",
        "/etc/picker.yaml",
        "--tls-cert",
        "c.pem",
        "--max-report-age",
        "2s",
    ]);
    assert_eq!(
        args,
        Args {
            config: Some("/etc/picker.yaml".into()),
            tls_cert: Some("c.pem".into()),
            max_report_age: Some("2s".into()),
            ..Args::default()
        }
    );
    assert!(Args::try_parse_from(["p", "--no-such-flag", "1"]).is_err());
}

#[test]
fn numbers_out_of_range_say_the_range_and_the_value() {
    let d = scratch("ranges");
    let file = write(
        &d,
        "p.yaml",
        "extproc_fallbacks: 17\nsaturation: { queue_depth_threshold: -1, kv_cache_threshold: .nan }\nlimits: { max_endpoints: \"5\" }\n",
    );
    let err = Settings::from_args(Args::parse_from([
        "p",
        "--config",
        file.to_str().unwrap(),
        "--extproc-fallbacks",
        "-2",
    ]))
    .unwrap_err();
    let text = err.to_string();
    for says in [
        "extproc_fallbacks: 17: must be within 0..=16",
        "saturation.queue_depth_threshold: -1: must be within 1..=1000000",
        "saturation.kv_cache_threshold: .nan: must be a finite number within (0, 1]",
        "limits.max_endpoints: '5': expected an integer ≥ 1",
        "flags: --extproc-fallbacks: -2: must be within 0..=16",
    ] {
        assert!(text.contains(says), "{says:?} missing from {text}");
    }
}

/// The README's settings table is this module's reference, generated; to refresh it after
/// changing a declaration, run this test with `INFERPICK_BLESS=1`.
#[test]
fn the_readme_reference_matches_the_declarations() {
    const BEGIN: &str = "<!-- settings:begin -->\n";
    const END: &str = "<!-- settings:end -->";
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    let readme = std::fs::read_to_string(&path).unwrap();
    let start = readme
        .find(BEGIN)
        .expect("README has <!-- settings:begin -->")
        + BEGIN.len();
    let end = readme[start..]
        .find(END)
        .expect("README has <!-- settings:end -->")
        + start;
    let generated = reference();
    if readme[start..end] != generated {
        if std::env::var_os("INFERPICK_BLESS").is_some() {
            let updated = format!("{}{generated}{}", &readme[..start], &readme[end..]);
            std::fs::write(&path, updated).unwrap();
        } else {
            panic!(
                "README.md's settings table differs from the declarations; run\n  \
                 INFERPICK_BLESS=1 cargo test -p inferpick-picker --lib config::tests::the_readme\n\
                 to regenerate it. Generated:\n{generated}"
            );
        }
    }
}

#[test]
fn the_cost_model_and_table_limits_come_from_the_file() {
    let d = scratch("cost");
    let file = write(
        &d,
        "p.yaml",
        "cost:\n  default_prompt_tokens: 1024\n  chars_per_token: 3.5\n  prefill_floor_tokens_per_second: 12000\n  routed_prefill_drain_ratio: 0.5\n  miss_weight_max_waiting: 2\n  seconds_per_running_request: 0.004\n  kv_pressure_seconds: 0.3\n  adapter_load_seconds: 0.2\n  adapter_slot_wait_seconds: 1\n  session_affinity_seconds: 0\n  prefix_imbalance_ratio: 2\n  prefix_imbalance_requests: 4\n  power_of_k: 3\n  near_best_ratio: 0.2\n  near_best_seconds: 0.01\n  scan_limit: 0\nlimits: { max_open_decisions: 5000, prefix_blocks_per_endpoint: 64 }\n",
    );
    let s = Settings::from_args(Args {
        config: Some(file),
        ..Args::default()
    })
    .unwrap();
    let expected = CostModel {
        default_prompt_tokens: 1024,
        chars_per_token: 3.5,
        prefill_floor_tokens_per_second: 12_000.0,
        routed_prefill_drain_ratio: 0.5,
        miss_weight_max_waiting: 2.0,
        seconds_per_running_request: 0.004,
        kv_pressure_seconds: 0.3,
        adapter_load_seconds: 0.2,
        adapter_slot_wait_seconds: 1.0,
        session_affinity_seconds: 0.0,
        prefix_imbalance_ratio: 2.0,
        prefix_imbalance_requests: 4,
        power_of_k: 3,
        near_best_ratio: 0.2,
        near_best_seconds: 0.01,
        scan_limit: 0,
    };
    assert_eq!(s.scheduler_config().cost, expected);
    let table = s.table_config();
    assert_eq!(
        (table.max_open_decisions, table.prefix_blocks_per_endpoint),
        (5000, 64)
    );
    // Keys left out keep the cost model's and the table's own defaults.
    let partial = write(&d, "partial.yaml", "cost: { power_of_k: 4 }\n");
    let s = Settings::from_args(Args {
        config: Some(partial),
        ..Args::default()
    })
    .unwrap();
    assert_eq!(
        s.scheduler_config().cost,
        CostModel {
            power_of_k: 4,
            ..CostModel::default()
        }
    );
    assert_eq!(s.table_config(), TableConfig::default());
}

#[test]
fn bad_cost_values_are_each_named_with_their_range() {
    let d = scratch("bad-cost");
    let file = write(
        &d,
        "p.yaml",
        "cost:\n  chars_per_token: 0\n  prefill_floor_tokens_per_second: -5\n  routed_prefill_drain_ratio: 1.5\n  kv_pressure_seconds: .inf\n  prefix_imbalance_ratio: 0.5\n  power_of_k: 0\n  near_best_seconds: soon\n  scan_limit: -1\n  temperature: 1\nlimits: { max_open_decisions: 0, prefix_blocks_per_endpoint: 1.5 }\n",
    );
    let err = Settings::from_args(Args {
        config: Some(file.clone()),
        ..Args::default()
    })
    .unwrap_err();
    let text = err.to_string();
    for says in [
        "cost.chars_per_token: 0: must be > 0",
        "cost.prefill_floor_tokens_per_second: -5: must be > 0",
        "cost.routed_prefill_drain_ratio: 1.5: must be within [0, 1]",
        "cost.kv_pressure_seconds: .inf: must be a finite number ≥ 0",
        "cost.prefix_imbalance_ratio: 0.5: must be ≥ 1",
        "cost.power_of_k: 0: must be within 1..=1024",
        "cost.near_best_seconds: soon: expected a number ≥ 0",
        "cost.scan_limit: -1: must be ≥ 0",
        "cost.temperature: unknown key (expected one of default_prompt_tokens,",
        "limits.max_open_decisions: 0: must be within 1..=100000000",
        "limits.prefix_blocks_per_endpoint: 1.5: expected an integer within 1..=100000000",
    ] {
        assert!(text.contains(says), "{says:?} missing from {text}");
    }
    assert_eq!(err.issues.len(), 11, "{text}");
    assert!(
        err.issues
            .iter()
            .all(|i| i.source == file.display().to_string())
    );
}

#[test]
fn the_connection_cap_comes_from_the_flag_over_the_file() {
    assert_eq!(Settings::default().max_connections, 10_000);
    let d = scratch("connections");
    let file = write(&d, "p.yaml", "limits: { max_connections: 300 }\n");
    let path = file.to_str().unwrap();
    let s = Settings::from_args(Args::parse_from(["p", "--config", path])).unwrap();
    assert_eq!(s.max_connections, 300);
    let s = Settings::from_args(Args::parse_from([
        "p",
        "--config",
        path,
        "--max-connections",
        "2",
    ]))
    .unwrap();
    assert_eq!(s.max_connections, 2);
    let err = Settings::from_args(Args::parse_from(["p", "--max-connections", "0"])).unwrap_err();
    assert!(
        err.to_string()
            .contains("flags: --max-connections: 0: must be within 1..=10000000"),
        "{err}"
    );
}

#[test]
fn capacity_pins_match_one_thing_each_and_name_what_is_wrong() {
    let d = scratch("pins");
    let good = write(
        &d,
        "good.yaml",
        "capacity:\n  pins:\n    - { gpu: NVIDIA L4, prefill_tokens_per_second: 2500 }\n    - { pod_prefix: vllm-big-, prefill_tokens_per_second: 40000 }\n",
    );
    let s = Settings::from_args(Args {
        config: Some(good),
        ..Args::default()
    })
    .unwrap();
    let pins = s.table_config().capacity_pins;
    assert_eq!(pins.len(), 2);
    assert_eq!(
        pins[0].matches,
        crate::table::PinMatch::Gpu("NVIDIA L4".into())
    );
    assert_eq!(pins[1].prefill_tokens_per_second, 40_000.0);
    let bad = write(
        &d,
        "bad.yaml",
        "capacity:\n  pins:\n    - { gpu: NVIDIA L4, address: 10.0.0.1:8000, prefill_tokens_per_second: 1 }\n    - { gpu: NVIDIA L4, prefill_tokens_per_second: -3 }\n    - { gpu: NVIDIA L4 }\n    - { gpu: NVIDIA L4, prefill_tokens_per_second: 1, weight: 2 }\n",
    );
    let err = Settings::from_args(Args {
        config: Some(bad),
        ..Args::default()
    })
    .unwrap_err();
    let paths: Vec<&str> = err.issues.iter().map(|i| i.path.as_str()).collect();
    for p in [
        "capacity.pins[0]",
        "capacity.pins[1].prefill_tokens_per_second",
        "capacity.pins[2].prefill_tokens_per_second",
        "capacity.pins[3].weight",
    ] {
        assert!(paths.contains(&p), "{p} missing from {err}");
    }
}
