//! The built-in workloads.

use std::time::Duration;

use super::{
    AdapterMix, Arrival, Class, Conversation, Dist, DocumentOrder, Documents, Pods, SharedPrefix,
    Workload,
};

/// Names of the built-in workloads.
pub const BUILTIN: [&str; 7] = [
    "chat",
    "shared-prefix",
    "multi-lora",
    "mixed",
    "bursty",
    "multi-turn",
    "rag",
];

fn class(weight: f64, priority: i32, prompt: Dist, output: Dist) -> Class {
    Class {
        weight,
        priority,
        prompt_tokens: prompt,
        output_tokens: output,
        shared_prefix: None,
        adapters: None,
        conversation: None,
        documents: None,
    }
}

/// ShareGPT-like chat: prompts log-normal around 500 tokens with a long tail (p99 ≈ 4k), outputs 50–500.
fn chat_class() -> Class {
    class(
        1.0,
        0,
        Dist::Lognormal {
            median: 500.0,
            sigma: 0.9,
            max: Some(16_000),
        },
        Dist::Uniform([50, 500]),
    )
}

fn workload(name: &str, arrival: Arrival, classes: Vec<Class>, pods: Pods) -> Workload {
    Workload {
        name: name.into(),
        arrival,
        duration: Some(Duration::from_secs(600)),
        classes,
        pods,
    }
}

/// The built-in workload called `name`.
pub fn get(name: &str) -> Option<Workload> {
    let poisson = Arrival::Poisson { rate_per_pod: 8.0 };
    Some(match name {
        "chat" => workload(name, poisson, vec![chat_class()], Pods::default()),
        // llm-d's "B2B" shape: 150 customers, each with a ~6k-token system prefix, ~1.2k-token queries.
        "shared-prefix" => workload(
            name,
            Arrival::Poisson { rate_per_pod: 4.0 },
            vec![Class {
                shared_prefix: Some(SharedPrefix {
                    groups: 150,
                    tokens: 6000,
                }),
                ..class(
                    1.0,
                    0,
                    Dist::Lognormal {
                        median: 7200.0,
                        sigma: 0.08,
                        max: Some(9000),
                    },
                    Dist::Uniform([100, 300]),
                )
            }],
            Pods::default(),
        ),
        // As GIE's regression tests: 15 adapters over pods with 3 slots each.
        "multi-lora" => workload(
            name,
            poisson,
            vec![Class {
                adapters: Some(AdapterMix {
                    count: 15,
                    zipf: 1.0,
                }),
                ..chat_class()
            }],
            Pods {
                max_loras: Some(3),
                ..Pods::default()
            },
        ),
        // Interactive chat (priority 10), long-document summarization (0), batch jobs (−1).
        "mixed" => workload(
            name,
            Arrival::Poisson { rate_per_pod: 4.0 },
            vec![
                Class {
                    weight: 70.0,
                    ..class(
                        70.0,
                        10,
                        Dist::Lognormal {
                            median: 300.0,
                            sigma: 0.7,
                            max: Some(4000),
                        },
                        Dist::Uniform([30, 300]),
                    )
                },
                class(
                    20.0,
                    0,
                    Dist::Lognormal {
                        median: 6000.0,
                        sigma: 0.4,
                        max: Some(24_000),
                    },
                    Dist::Uniform([100, 400]),
                ),
                class(
                    10.0,
                    -1,
                    Dist::Lognormal {
                        median: 1500.0,
                        sigma: 0.5,
                        max: Some(8000),
                    },
                    Dist::Uniform([200, 800]),
                ),
            ],
            Pods::default(),
        ),
        "bursty" => workload(
            name,
            Arrival::Bursty {
                rate_per_pod: 8.0,
                burst_factor: 2.0,
                period: Duration::from_secs(30),
            },
            vec![chat_class()],
            Pods::default(),
        ),
        // Chat assistants: every turn resends the conversation so far. ShareGPT and LMSYS-Chat
        // conversations have a few turns (mean about 4), user messages of ~100 tokens with a long
        // tail, answers of a few hundred; one of 20 system prompts of ~1k tokens (one per app).
        "multi-turn" => workload(
            name,
            Arrival::Poisson { rate_per_pod: 4.0 },
            vec![Class {
                shared_prefix: Some(SharedPrefix {
                    groups: 20,
                    tokens: 1000,
                }),
                conversation: Some(Conversation {
                    turns: Dist::Uniform([1, 8]),
                    think_seconds: Dist::Lognormal {
                        median: 20.0,
                        sigma: 0.6,
                        max: Some(180),
                    },
                    max_context_tokens: 16_000,
                }),
                ..class(
                    1.0,
                    0,
                    Dist::Lognormal {
                        median: 120.0,
                        sigma: 0.9,
                        max: Some(2000),
                    },
                    Dist::Uniform([100, 400]),
                )
            }],
            Pods::default(),
        ),
        // Retrieval-augmented generation: a 500-token system prompt, then 4 of 1,000 chunks of
        // ~600 tokens retrieved by Zipf popularity, in retrieval order, then a short question.
        "rag" => workload(
            name,
            Arrival::Poisson { rate_per_pod: 3.0 },
            vec![Class {
                shared_prefix: Some(SharedPrefix {
                    groups: 1,
                    tokens: 500,
                }),
                documents: Some(Documents {
                    count: 1000,
                    per_request: 4,
                    tokens: Dist::Lognormal {
                        median: 600.0,
                        sigma: 0.3,
                        max: Some(1500),
                    },
                    zipf: 1.1,
                    order: DocumentOrder::Retrieval,
                }),
                ..class(
                    1.0,
                    0,
                    Dist::Lognormal {
                        median: 60.0,
                        sigma: 0.5,
                        max: Some(400),
                    },
                    Dist::Uniform([100, 300]),
                )
            }],
            Pods::default(),
        ),
        _ => return None,
    })
}
