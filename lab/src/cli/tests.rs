//! The command line's flags and their errors.

use clap::CommandFactory;

use super::*;

fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
    Cli::try_parse_from(std::iter::once("inferpick-lab").chain(args.iter().copied()))
}

#[test]
fn the_command_line_is_consistent() {
    Cli::command().debug_assert();
}

#[test]
fn sim_flags_parse() {
    let cli = parse(&[
        "sim",
        "--workload",
        "mixed",
        "--pods",
        "16",
        "--policies",
        "oracle,inferpick",
        "--load",
        "0.85",
        "--seed",
        "7",
        "--staleness",
        "50ms",
        "--duration",
        "2m",
        "--json",
        "out.json",
    ])
    .unwrap();
    let Command::Sim(s) = cli.command else {
        panic!("not sim")
    };
    assert_eq!(
        s.policies,
        [SimPolicy::Oracle, "inferpick".parse().unwrap()]
    );
    assert_eq!(s.load, Some(0.85));
    assert_eq!(s.staleness, Duration::from_millis(50));
    assert_eq!(s.duration, Some(Duration::from_secs(120)));
    assert_eq!(s.pods, Some(16));
}

#[test]
fn bad_values_name_the_flag_and_the_value() {
    let err = parse(&["sim", "--policies", "inferpick,fastest"])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("fastest") && err.contains("--policies"),
        "{err}"
    );
    let err = parse(&["sim", "--load=0"]).unwrap_err().to_string();
    assert!(err.contains("--load") && err.contains("\"0\""), "{err}");
    let err = parse(&["sim", "--staleness", "soon"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("soon"), "{err}");
    let err = parse(&["emulate", "--engine", "ollama"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("ollama") && err.contains("vllm"), "{err}");
    assert!(
        parse(&["load", "--rate", "5"]).is_err(),
        "--url is required"
    );
}

#[test]
fn emulate_load_and_demo_flags_parse() {
    let Command::Emulate(e) = parse(&[
        "emulate",
        "--listen",
        "127.0.0.1:0",
        "--engine",
        "triton-trtllm",
        "--model",
        "m",
        "--adapters",
        "a,b",
    ])
    .unwrap()
    .command
    else {
        panic!("not emulate")
    };
    assert_eq!(e.engine, EngineKind::TritonTrtllm);
    assert_eq!(e.adapters, ["a", "b"]);
    let Command::Load(l) = parse(&[
        "load",
        "--url",
        "http://x",
        "--rate",
        "2.5",
        "--duration",
        "10s",
    ])
    .unwrap()
    .command
    else {
        panic!("not load")
    };
    assert_eq!((l.rate, l.duration), (2.5, Duration::from_secs(10)));
    let Command::Demo(d) = parse(&["demo", "--pods", "2", "--keep"]).unwrap().command else {
        panic!("not demo")
    };
    assert!(d.keep);
    assert_eq!(d.gateway, GatewayKind::Builtin);
}

#[test]
fn a_load_rate_is_requests_per_second() {
    let err = parse(&["load", "--url", "http://x", "--rate", "0"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("requests per second"), "{err}");
    assert!(!err.contains("fraction"), "{err}");
}

#[test]
fn load_api_error_rate_and_records_flags() {
    let Command::Load(l) = parse(&[
        "load",
        "--url",
        "http://x/v1",
        "--rate",
        "3",
        "--api",
        "chat",
        "--max-error-rate",
        "0.05",
        "--json",
        "out.json",
        "--json-requests",
    ])
    .unwrap()
    .command
    else {
        panic!("not load")
    };
    assert_eq!(
        (l.api, l.max_error_rate, l.json_requests),
        (ApiChoice::Chat, 0.05, true)
    );
    let Command::Load(d) = parse(&["load", "--url", "http://x", "--rate", "3"])
        .unwrap()
        .command
    else {
        panic!("not load")
    };
    assert_eq!((d.api, d.max_error_rate), (ApiChoice::Auto, 0.01));
    let err = parse(&["load", "--url", "u", "--rate", "1", "--json-requests"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("--json"), "{err}");
    let err = parse(&["load", "--url", "u", "--rate", "1", "--max-error-rate", "2"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("--max-error-rate"), "{err}");
}

#[test]
fn the_api_follows_the_url_then_the_workload_and_contradictions_are_errors() {
    let chat = Workload::load("chat").unwrap();
    let prefix = Workload::load("shared-prefix").unwrap();
    assert_eq!(
        ApiChoice::Auto.resolve("http://x", &chat).unwrap(),
        Api::Chat
    );
    assert_eq!(
        ApiChoice::Auto.resolve("http://x/v1", &prefix).unwrap(),
        Api::Completions
    );
    assert_eq!(
        ApiChoice::Auto
            .resolve("http://x/v1/chat/completions", &prefix)
            .unwrap(),
        Api::Chat
    );
    assert_eq!(
        ApiChoice::Completions.resolve("http://x", &chat).unwrap(),
        Api::Completions
    );
    let err = ApiChoice::Chat
        .resolve("http://x/v1/completions", &chat)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("--api chat") && err.contains("completions"),
        "{err}"
    );
}

#[test]
fn demo_json_and_keep_exclude_each_other_and_capacity_parses() {
    let Command::Demo(d) = parse(&["demo", "--json", "d.json", "--json-requests"])
        .unwrap()
        .command
    else {
        panic!("not demo")
    };
    assert_eq!(d.json, Some(PathBuf::from("d.json")));
    assert!(d.json_requests);
    let err = parse(&["demo", "--keep", "--json", "d.json"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("--keep") && err.contains("--json"), "{err}");
    let Command::Capacity(c) = parse(&["capacity", "--pods", "4", "--load", "0.8", "--rate-only"])
        .unwrap()
        .command
    else {
        panic!("not capacity")
    };
    assert_eq!((c.pods, c.load, c.rate_only), (4, 0.8, true));
    assert_eq!(c.workload, None);
}

#[test]
fn capacity_is_the_demos_own_figure() {
    let w = demo_workload(None).unwrap();
    let per_pod = demo::capacity_per_pod(&w, 1);
    assert!(per_pod > 0.0);
    assert_eq!(per_pod, demo::capacity_per_pod(&w, 1), "deterministic");
}
