//! Prefix scoring at 1,000 endpoints on a 4k-token prompt: the token-exact index (every endpoint's
//! KV events applied, the prompt sent as token ids) against the approximate index (the prompt sent
//! as text) on the same fleet, as single-pick p50/p99 and their ratio; then the tokenizer's cost on
//! its own (a byte-level BPE trained here on generated text, as no tokenizer may be downloaded) for
//! a 4k-token prompt and for a 100k-token one, which the picker cuts to its first 8,192 tokens.

use std::hint::black_box;
use std::time::{Duration, Instant};

use inferpick_picker::scheduler::{Policy, Scheduler, SchedulerConfig};
use inferpick_picker::table::{Table, TableConfig};
use inferpick_picker::tokenize::ModelTokenizer;
use inferpick_schema::kv::{BASE_ROOT, block_keys};
use inferpick_schema::{KvEvents, KvGroup, KvStreamState, PickRequest};
use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{
    AddedToken, DecoderWrapper, NormalizerWrapper, PostProcessorWrapper, PreTokenizerWrapper,
    TokenizerBuilder,
};

mod fleet;
use fleet::{MODEL, report};

const ENDPOINTS: usize = 1_000;
const PROMPT_TOKENS: usize = 4_096;
/// Prompt families: each endpoint holds the first half of one family's prompt.
const FAMILIES: usize = 64;
const NOW: Duration = Duration::from_secs(10);

fn address(i: usize) -> String {
    format!("10.{}.{}.{}:8000", i / 65536, (i / 256) % 256, i % 256)
}

/// Family `f`'s prompt as token ids, and request `i`'s own tail after it.
fn ids(f: usize, i: usize) -> Vec<u32> {
    let mut ids: Vec<u32> = (0..PROMPT_TOKENS - 64)
        .map(|t| (f * 7919 + t * 31) as u32 % 50_000)
        .collect();
    ids.extend((0..64).map(|t| (i * 131 + t) as u32 % 50_000));
    ids
}

/// The same prompt as text, about 4 characters a token.
fn text(f: usize, i: usize) -> String {
    ids(f, i)
        .iter()
        .map(|t| format!("w{:02x} ", t % 256))
        .collect()
}

fn table(exact: bool) -> Table {
    let t = Table::new(TableConfig::default());
    t.ingest_batch((0..ENDPOINTS).map(|i| report(i, 1)).collect(), NOW)
        .unwrap();
    if exact {
        for i in 0..ENDPOINTS {
            let f = i % FAMILIES;
            let held = block_keys(BASE_ROOT, &ids(f, 0), 16, PROMPT_TOKENS / 32);
            let msg = KvEvents {
                schema_version: inferpick_schema::SCHEMA_VERSION,
                endpoint: address(i),
                stream: format!("bench-{i}"),
                seq: 0,
                state: KvStreamState::Live,
                block_size: 16,
                reset: true,
                cleared: false,
                groups: vec![KvGroup {
                    adapter: None,
                    stored: held,
                    removed: vec![],
                }],
            };
            assert!(!t.ingest_kv(msg, NOW).unwrap().refused);
        }
    }
    t
}

fn requests(exact: bool) -> Vec<PickRequest> {
    (0..256)
        .map(|i| {
            let f = i % FAMILIES;
            PickRequest {
                model: Some(MODEL.into()),
                prompt_token_ids: exact.then(|| ids(f, i)),
                prompt: (!exact).then(|| text(f, i)),
                max_tokens: Some(256),
                ..PickRequest::default()
            }
        })
        .collect()
}

fn percentiles(mut times: Vec<f64>) -> (f64, f64) {
    times.sort_by(f64::total_cmp);
    (times[times.len() / 2], times[times.len() * 99 / 100])
}

/// Median and p99 of single picks, in µs.
fn picks(exact: bool, n: usize) -> (f64, f64) {
    let t = table(exact);
    let s = Scheduler::new(
        Policy::Inferpick,
        SchedulerConfig {
            seed: Some(1),
            ..SchedulerConfig::default()
        },
    );
    let reqs = requests(exact);
    for r in reqs.iter().take(n / 10) {
        black_box(s.pick(&t, r, NOW).unwrap());
    }
    percentiles(
        (0..n)
            .map(|i| {
                let start = Instant::now();
                black_box(s.pick(&t, &reqs[i % reqs.len()], NOW).unwrap());
                start.elapsed().as_secs_f64() * 1e6
            })
            .collect(),
    )
}

/// A byte-level BPE of 16k tokens trained on generated English-like text, written as a
/// `tokenizer.json` and read back as the picker reads one.
fn tokenizer() -> (ModelTokenizer, Vec<String>) {
    let words = [
        "the",
        "model",
        "serves",
        "requests",
        "with",
        "a",
        "cache",
        "of",
        "prefix",
        "blocks",
        "and",
        "routing",
        "keeps",
        "them",
        "warm",
        "across",
        "many",
        "pods",
        "while",
        "load",
        "balancing",
        "decides",
        "where",
        "each",
        "prompt",
        "goes",
        "system",
        "user",
        "assistant",
        "question",
        "answer",
        "document",
        "retrieval",
        "context",
        "token",
        "engine",
    ];
    let mut corpus = Vec::new();
    let mut x: u64 = 42;
    for _ in 0..2_000 {
        let mut line = String::new();
        for _ in 0..200 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let w = words[(x >> 33) as usize % words.len()];
            line.push_str(w);
            line.push(if (x >> 20).is_multiple_of(13) {
                '.'
            } else {
                ' '
            });
            if (x >> 12).is_multiple_of(17) {
                line.push_str(&format!("{} ", (x >> 40) % 1000));
            }
        }
        corpus.push(line);
    }
    let mut trainer = BpeTrainerBuilder::new()
        .vocab_size(16_000)
        .show_progress(false)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .special_tokens(vec![AddedToken::from("<s>", true)])
        .build();
    let mut tok = TokenizerBuilder::<
        BPE,
        NormalizerWrapper,
        PreTokenizerWrapper,
        PostProcessorWrapper,
        DecoderWrapper,
    >::new()
    .with_model(BPE::default())
    .with_pre_tokenizer(Some(ByteLevel::default().into()))
    .with_decoder(Some(ByteLevel::default().into()))
    .build()
    .unwrap();
    tok.train(&mut trainer, corpus.iter()).unwrap();
    let dir = std::env::temp_dir().join(format!("inferpick-bench-tok-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tokenizer.json");
    tok.save(&path, false).unwrap();
    (ModelTokenizer::load(&path).unwrap(), corpus)
}

fn main() {
    let n = 20_000;
    let approx = picks(false, n);
    let exact = picks(true, n);
    println!(
        "\nprefix scoring at {ENDPOINTS} endpoints, {PROMPT_TOKENS}-token prompts, single-pick µs"
    );
    println!(
        "{:>12} {:>9} {:>9} {:>10} {:>10}",
        "index", "p50", "p99", "p50/approx", "p99/approx"
    );
    println!(
        "{:>12} {:>9.2} {:>9.2} {:>10.2} {:>10.2}",
        "approximate", approx.0, approx.1, 1.0, 1.0
    );
    println!(
        "{:>12} {:>9.2} {:>9.2} {:>10.2} {:>10.2}",
        "exact",
        exact.0,
        exact.1,
        exact.0 / approx.0,
        exact.1 / approx.1
    );

    let (tok, corpus) = tokenizer();
    let mut prompt = String::new();
    let mut i = 0;
    while tok.leading_tokens(&prompt, usize::MAX).len() < PROMPT_TOKENS {
        prompt.push_str(&corpus[i % corpus.len()]);
        i += 1;
    }
    let huge: String = corpus.iter().cycle().take(25 * i).cloned().collect();
    let max = SchedulerConfig::default().prefix_max_tokens;
    // Chunked tokenizing gives the engine's tokens (the whole text tokenized at once).
    assert_eq!(
        tok.leading_tokens(&prompt, usize::MAX / 8),
        tok.tokens_uncached(&prompt),
        "chunked tokenizing differs from the whole text's"
    );
    let time = |f: &dyn Fn()| {
        percentiles(
            (0..200)
                .map(|_| {
                    let start = Instant::now();
                    f();
                    start.elapsed().as_secs_f64() * 1e6
                })
                .collect(),
        )
    };
    // The same head with a new last question: what a conversation's next turn looks like.
    let turns: Vec<String> = (0..200)
        .map(|k| format!("{prompt} and question {k} "))
        .collect();
    let next = std::cell::Cell::new(0);
    println!("\ntokenizing (byte-level BPE, 16k vocabulary), µs");
    for (name, (p50, p99)) in [
        (
            "4k tokens, cold",
            time(&|| drop(black_box(tok.tokens_uncached(&prompt)))),
        ),
        (
            "4k, head cached",
            time(&|| {
                let k = next.get();
                next.set(k + 1);
                drop(black_box(tok.leading_tokens(&turns[k % turns.len()], max)))
            }),
        ),
        (
            "100k, cut, cold",
            time(&|| {
                let cut = &huge[..huge.len().min(max * 8)];
                drop(black_box(tok.tokens_uncached(cut)))
            }),
        ),
        (
            "100k, cached",
            time(&|| drop(black_box(tok.leading_tokens(&huge, max)))),
        ),
    ] {
        println!(
            "{name:>18}: p50 {p50:>7.0}, p99 {p99:>7.0} ({:.1}× an exact pick's p50)",
            p50 / exact.0
        );
    }
}
