use super::*;
use std::sync::Arc;

#[test]
fn every_builtin_is_valid_and_loads_by_name() {
    for name in BUILTIN {
        let w = Workload::load(name).unwrap();
        assert_eq!(w.name, name);
        w.validate().unwrap();
    }
}

#[test]
fn the_documented_example_parses() {
    let text = include_str!("../../workloads/example.yaml");
    let w = Workload::parse(text, "example.yaml").unwrap();
    assert_eq!(w.classes.len(), 3);
    assert_eq!(w.arrival, Arrival::Poisson { rate_per_pod: 2.5 });
    assert_eq!(w.duration(), Duration::from_secs(600));
    assert_eq!(
        w.classes[2].adapters,
        Some(AdapterMix {
            count: 12,
            zipf: 1.1
        })
    );
    assert_eq!(w.pods.max_loras, Some(3));
    assert_eq!(w.adapter_names().len(), 12);
    let rag = Workload::parse(include_str!("../../workloads/rag.yaml"), "rag.yaml").unwrap();
    assert!(
        matches!(rag.arrival, Arrival::Bursty { period, .. } if period == Duration::from_secs(20))
    );
}

fn parse_err(text: &str) -> String {
    Workload::parse(text, "bad.yaml").unwrap_err().to_string()
}

const HEAD: &str = "name: w\narrival: { process: poisson, rate_per_pod: 1 }\n";

#[test]
fn an_unknown_key_is_named_with_the_file() {
    let err = parse_err(&format!(
        "{HEAD}classes:\n  - {{ prompt_tokens: {{ fixed: 10 }}, output_tokens: {{ fixed: 5 }}, priorty: 3 }}\n"
    ));
    assert!(
        err.starts_with("bad.yaml: classes[0].priorty: unknown field `priorty`"),
        "{err}"
    );
    assert_eq!(err.matches("classes[0]").count(), 1, "{err}");
}

#[test]
fn an_unknown_distribution_is_named() {
    let err = parse_err(&format!(
        "{HEAD}classes:\n  - {{ prompt_tokens: {{ normal: 10 }}, output_tokens: {{ fixed: 5 }} }}\n"
    ));
    assert!(err.contains("classes[0].prompt_tokens"), "{err}");
    assert!(err.contains("normal"), "{err}");
}

#[test]
fn out_of_range_values_are_named() {
    let err = parse_err(&format!(
        "{HEAD}classes:\n  - {{ prompt_tokens: {{ uniform: [50, 10] }}, output_tokens: {{ fixed: 5 }} }}\n"
    ));
    assert!(err.contains("bad.yaml: classes[0].prompt_tokens"), "{err}");
    assert!(err.contains("[50, 10]"), "{err}");
    let err = parse_err(
        "name: w\narrival: { process: poisson, rate_per_pod: 0 }\nclasses:\n  - { prompt_tokens: { fixed: 1 }, output_tokens: { fixed: 1 } }\n",
    );
    assert!(err.contains("arrival.rate_per_pod"), "{err}");
    let err = parse_err(&format!("{HEAD}duration: soon\nclasses: []\n"));
    assert!(err.contains("duration") && err.contains("soon"), "{err}");
}

#[test]
fn a_missing_file_says_what_was_tried() {
    let err = Workload::load("/nonexistent/w.yaml")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("/nonexistent/w.yaml") && err.contains("chat"),
        "{err}"
    );
}

fn chat() -> Workload {
    Workload::load("chat").unwrap()
}

#[test]
fn generation_is_deterministic_per_seed() {
    let draw = |seed| {
        Generator::new(&chat(), 4, 2.0, Duration::from_secs(60), seed, 16)
            .map(|r| (r.at, r.prompt_tokens, r.output_tokens))
            .collect::<Vec<_>>()
    };
    assert_eq!(draw(7), draw(7));
    assert_ne!(draw(7), draw(8));
}

#[test]
fn the_arrival_rate_is_the_requested_one() {
    let n = Generator::new(&chat(), 10, 3.0, Duration::from_secs(1000), 1, 16).count();
    let expected = 10.0 * 3.0 * 1000.0;
    assert!((n as f64 - expected).abs() < expected * 0.02, "{n}");
}

#[test]
fn bursty_arrivals_are_off_in_the_second_half_of_each_period() {
    let w = Workload::load("bursty").unwrap();
    let reqs: Vec<_> = Generator::new(&w, 8, 2.0, Duration::from_secs(300), 3, 16).collect();
    assert!(reqs.iter().all(|r| r.at.as_secs_f64() % 30.0 < 15.0 + 1e-9));
    let expected = 8.0 * 2.0 * 300.0;
    assert!(
        (reqs.len() as f64 - expected).abs() < expected * 0.05,
        "{}",
        reqs.len()
    );
}

#[test]
fn shared_prefixes_and_adapters_are_drawn_as_described() {
    let text = include_str!("../../workloads/example.yaml");
    let w = Workload::parse(text, "example.yaml").unwrap();
    let reqs: Vec<_> = Generator::new(&w, 8, 2.5, Duration::from_secs(300), 5, 16).collect();
    let prefixed: Vec<_> = reqs.iter().filter(|r| r.group.is_some()).collect();
    assert!(
        prefixed
            .iter()
            .all(|r| r.prefix.len() == 3000 / 16 && r.prompt_tokens == 4000)
    );
    let a = prefixed[0];
    let b = prefixed
        .iter()
        .find(|r| r.group == a.group && r.id != a.id)
        .unwrap();
    assert!(Arc::ptr_eq(&a.prefix, &b.prefix));
    assert_eq!(
        prompt_text(a, false)[..64 * 187],
        prompt_text(b, false)[..64 * 187]
    );
    assert_eq!(prompt_text(a, true).len(), 4000 * 4);
    let adapters: Vec<u32> = reqs.iter().filter_map(|r| r.adapter).collect();
    let ones = adapters.iter().filter(|&&a| a == 1).count();
    let twelves = adapters.iter().filter(|&&a| a == 12).count();
    assert!(
        ones > 5 * twelves,
        "Zipf: adapter 1 is far more popular ({ones} vs {twelves})"
    );
    assert!(adapters.iter().all(|a| (1..=12).contains(a)));
    let shares = reqs.iter().filter(|r| r.class == 0).count() as f64 / reqs.len() as f64;
    assert!((shares - 0.7).abs() < 0.03, "{shares}");
}

#[test]
fn error_messages_read_well() {
    let err = parse_err(&format!(
        "{HEAD}classes:\n  - {{ prompt_tokens: {{ fixed: 10, uniform: [1, 2] }}, output_tokens: {{ fixed: 5 }} }}\n"
    ));
    assert!(err.contains("exactly one of"), "{err}");
    assert_eq!(err.matches("classes[0].prompt_tokens").count(), 1, "{err}");
}
