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
    assert!(Arc::ptr_eq(&a.prefix_tokens, &b.prefix_tokens));
    let (ta, tb) = (prompt_token_ids(a, false), prompt_token_ids(b, false));
    assert_eq!(ta[..3000], tb[..3000]);
    assert_ne!(ta[3000..], tb[3000..], "the tails are the requests' own");
    assert_eq!(ta.len(), 3006);
    assert_eq!(prompt_token_ids(a, true).len(), 4000);
    // The prefix keys are the schema's block keys of the prefix tokens, under the adapter's root.
    let root = inferpick_schema::kv::root(a.adapter.map(adapter_name).as_deref());
    assert_eq!(
        *a.prefix,
        inferpick_schema::kv::block_keys(root, &a.prefix_tokens, 16, usize::MAX)[..]
    );
    // The text reads back to the same ids through the lab's tokenizer.
    let tok = crate::tokenizer::load(None).unwrap();
    assert_eq!(
        crate::tokenizer::encode(&tok, &prompt_text(a, false)).unwrap(),
        ta
    );
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

#[test]
fn adapters_do_not_share_prefix_blocks_with_the_base_model() {
    let text = "name: t\narrival: { process: poisson, rate_per_pod: 50 }\nclasses:\n  - { prompt_tokens: { fixed: 200 }, output_tokens: { fixed: 5 }, shared_prefix: { groups: 1, tokens: 160 }, adapters: { count: 2, zipf: 0 } }\n  - { prompt_tokens: { fixed: 200 }, output_tokens: { fixed: 5 }, shared_prefix: { groups: 1, tokens: 160 } }\n";
    let w = Workload::parse(text, "t.yaml").unwrap();
    let reqs: Vec<_> = Generator::new(&w, 1, 50.0, Duration::from_secs(10), 1, 16).collect();
    let base = reqs.iter().find(|r| r.adapter.is_none()).unwrap();
    let lora = reqs.iter().find(|r| r.adapter == Some(1)).unwrap();
    assert_eq!(base.prefix.len(), 10);
    assert_eq!(lora.prefix.len(), 10);
    assert!(base.prefix.iter().all(|k| !lora.prefix.contains(k)));
}

#[test]
fn a_conversation_resends_its_history_every_turn() {
    let w = Workload::load("multi-turn").unwrap();
    let reqs: Vec<_> = Generator::new(&w, 8, 4.0, Duration::from_secs(600), 7, 16).collect();
    // Follow turns by prefix: a later turn's prompt starts with the earlier turn's whole prompt.
    let first = &reqs[0];
    let later: Vec<_> = reqs
        .iter()
        .filter(|r| {
            r.id != first.id
                && r.prefix_tokens.len() > first.prefix_tokens.len()
                && r.prefix_tokens[..first.prefix_tokens.len()] == first.prefix_tokens[..]
        })
        .collect();
    assert!(
        !later.is_empty(),
        "the first conversation has a second turn"
    );
    let next = later[0];
    assert!(next.at > first.at);
    // The next turn adds the answer and a new user message, and its keys extend the first's.
    assert!(next.prompt_tokens > first.prompt_tokens + first.output_tokens);
    assert_eq!(next.prefix[..first.prefix.len()], first.prefix[..]);
    // The whole prompt is history: no unique tail.
    assert_eq!(next.prompt_tokens as usize, next.prefix_tokens.len());
    // The offered request rate still matches the asked rate (turns included).
    let rate = reqs.len() as f64 / 600.0;
    assert!(
        (rate / 32.0 - 1.0).abs() < 0.15,
        "{rate} requests/s for 32 asked"
    );
    let context = w.classes[0]
        .conversation
        .as_ref()
        .unwrap()
        .max_context_tokens;
    assert!(
        reqs.iter()
            .all(|r| r.prompt_tokens <= context.max(r.prefix_tokens.len() as u32))
    );
}

#[test]
fn rag_prompts_share_the_system_prompt_and_popular_documents() {
    let w = Workload::load("rag").unwrap();
    let reqs: Vec<_> = Generator::new(&w, 8, 3.0, Duration::from_secs(120), 2, 16).collect();
    let system = w.classes[0].shared_prefix.unwrap().tokens as usize;
    let a = &reqs[0];
    assert!(
        reqs.iter()
            .all(|r| r.prefix_tokens[..system] == a.prefix_tokens[..system])
    );
    assert!(
        reqs.iter()
            .all(|r| r.prompt_tokens as usize > r.prefix_tokens.len())
    );
    // With Zipf popularity, many prompts share their first document after the system prompt.
    let mut leading: std::collections::HashMap<u32, usize> = Default::default();
    for r in &reqs {
        *leading.entry(r.prefix_tokens[system]).or_default() += 1;
    }
    let top = leading.values().max().copied().unwrap_or(0);
    assert!(
        top * 10 > reqs.len(),
        "the most common first document leads {top} of {}",
        reqs.len()
    );
    // The same documents sorted give the same prompt; in retrieval order they need not.
    let sorted = "name: r\narrival: { process: poisson, rate_per_pod: 5 }\nclasses:\n  - { prompt_tokens: { fixed: 20 }, output_tokens: { fixed: 5 }, documents: { count: 3, per_request: 3, tokens: { fixed: 32 }, order: sorted } }\n";
    let w = Workload::parse(sorted, "r.yaml").unwrap();
    let reqs: Vec<_> = Generator::new(&w, 1, 5.0, Duration::from_secs(20), 2, 16).collect();
    assert!(
        reqs.iter()
            .all(|r| r.prefix_tokens == reqs[0].prefix_tokens && r.prefix.len() == 6)
    );
    let retrieval = sorted.replace("order: sorted", "order: retrieval");
    let w = Workload::parse(&retrieval, "r.yaml").unwrap();
    let reqs: Vec<_> = Generator::new(&w, 1, 5.0, Duration::from_secs(20), 2, 16).collect();
    assert!(
        reqs.iter()
            .any(|r| r.prefix_tokens != reqs[0].prefix_tokens)
    );
}

#[test]
fn bad_conversation_and_document_settings_are_named() {
    let err = parse_err(&format!(
        "{HEAD}classes:\n  - {{ prompt_tokens: {{ fixed: 10 }}, output_tokens: {{ fixed: 5 }}, documents: {{ count: 2, per_request: 3, tokens: {{ fixed: 5 }} }} }}\n"
    ));
    assert!(
        err.contains("classes[0].documents") && err.contains("per_request = 3"),
        "{err}"
    );
    let err = parse_err(&format!(
        "{HEAD}classes:\n  - {{ prompt_tokens: {{ fixed: 10 }}, output_tokens: {{ fixed: 5 }}, conversation: {{ turns: {{ fixed: 0 }}, think_seconds: {{ fixed: 5 }} }} }}\n"
    ));
    assert!(err.contains("classes[0].conversation.turns"), "{err}");
}

#[test]
fn a_missing_workload_file_is_reported_once_with_the_builtins() {
    let err = Workload::load("no-such-workload.yaml").unwrap_err();
    let chain = format!("{:#}", anyhow::Error::from(err));
    assert_eq!(
        chain.matches("No such file or directory").count(),
        1,
        "{chain}"
    );
    assert!(chain.contains("shared-prefix"), "{chain}");
}
