//! `/metrics` in each engine's own dialect: the names, labels and types the real servers expose
//! (ENGINES.md and the fixtures under tests/fixtures/metrics), so the real agent can scrape an
//! emulator as it scrapes the engine.

use std::fmt::Write as _;

use inferpick_schema::EngineKind;

use crate::engine::EngineState;

/// A Prometheus histogram with fixed bounds.
#[derive(Debug, Clone)]
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    /// An empty histogram with these upper bounds (ascending; `+Inf` is implied).
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    /// Adds one observation.
    pub fn observe(&mut self, v: f64) {
        for (b, c) in self.bounds.iter().zip(self.counts.iter_mut()) {
            if v <= *b {
                *c += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.count
    }
}

/// vLLM's TTFT buckets (seconds).
pub const TTFT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
];
/// vLLM's end-to-end latency buckets (seconds).
pub const E2E_BUCKETS: &[f64] = &[
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
    480.0, 960.0, 1920.0, 7680.0,
];
/// Token-count buckets (TGI's input length and generated tokens).
pub const TOKEN_BUCKETS: &[f64] = &[
    1.0, 16.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0, 32768.0,
];

/// Everything an exposition shows, beyond the engine's own state.
#[derive(Debug, Clone)]
pub struct Observed {
    /// The served base model.
    pub model: String,
    /// Tokens per KV block.
    pub block_tokens: u32,
    /// LoRA slots.
    pub max_loras: u32,
    /// Unix seconds at start (the `_created` samples).
    pub started_unix: f64,
    /// Unix seconds now.
    pub now_unix: f64,
    /// Requests received.
    pub requests_received: u64,
    /// Time to first token, seconds.
    pub ttft: Histogram,
    /// Arrival to last token, seconds.
    pub e2e: Histogram,
    /// Prompt lengths of finished requests.
    pub input_length: Histogram,
    /// Output lengths of finished requests.
    pub generated: Histogram,
    /// vLLM's `lora_requests_info`: every (running, waiting) label pair seen, with when it was last
    /// current; the real gauge keeps every combination as its own series.
    pub lora_info: Vec<(String, String, f64)>,
}

/// Running and waiting adapter names.
#[derive(Debug, Clone, Default)]
pub struct AdapterNames {
    /// Adapters with running requests.
    pub running: Vec<String>,
    /// Adapters queued requests wait for.
    pub waiting: Vec<String>,
}

/// The `Content-Type` of every dialect: the classic text format, as the real servers send it.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"{}\"", escape(v));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {}", number(value));
    }

    /// A one-sample family.
    fn one(&mut self, name: &str, kind: &str, help: &str, labels: &[(&str, &str)], v: f64) {
        self.family(name, kind, help);
        self.sample(name, labels, v);
    }

    fn histogram(&mut self, name: &str, help: &str, labels: &[(&str, &str)], h: &Histogram) {
        self.family(name, "histogram", help);
        let bucket = format!("{name}_bucket");
        for (b, c) in h.bounds.iter().zip(&h.counts) {
            let le = number(*b);
            let mut l = labels.to_vec();
            l.push(("le", &le));
            self.sample(&bucket, &l, *c as f64);
        }
        let mut l = labels.to_vec();
        l.push(("le", "+Inf"));
        self.sample(&bucket, &l, h.count as f64);
        self.sample(&format!("{name}_count"), labels, h.count as f64);
        self.sample(&format!("{name}_sum"), labels, h.sum);
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.1}")
    } else {
        format!("{v}")
    }
}

/// Renders the exposition of `kind` for this state.
pub fn render(kind: EngineKind, s: &EngineState, names: &AdapterNames, o: &Observed) -> String {
    let mut out = Out(String::with_capacity(8192));
    match kind {
        EngineKind::Vllm | EngineKind::Unknown => vllm(&mut out, s, names, o),
        EngineKind::Sglang => sglang(&mut out, s, o),
        EngineKind::Tgi => tgi(&mut out, s, o),
        EngineKind::TritonTrtllm => triton(&mut out, s, o),
        EngineKind::TrtllmServe => trtllm_serve(&mut out, s, o),
        EngineKind::Llamacpp => llamacpp(&mut out, s, o),
        EngineKind::Lmdeploy => lmdeploy(&mut out, s, o),
    }
    out.0
}

fn kv_tokens(s: &EngineState, o: &Observed) -> (f64, f64) {
    let bt = f64::from(o.block_tokens);
    (s.kv_used_blocks as f64 * bt, s.kv_total_blocks as f64 * bt)
}

fn vllm(out: &mut Out, s: &EngineState, names: &AdapterNames, o: &Observed) {
    let c = &s.counters;
    let m: &[(&str, &str)] = &[("engine", "0"), ("model_name", &o.model)];
    let blocks = s.kv_total_blocks.to_string();
    let bt = o.block_tokens.to_string();
    out.one(
        "vllm:cache_config_info",
        "gauge",
        "Information of the LLMEngine CacheConfig",
        &[
            ("block_size", &bt),
            ("cache_dtype", "auto"),
            ("calculate_kv_scales", "False"),
            ("cpu_offload_gb", "0"),
            ("enable_prefix_caching", "True"),
            ("engine", "0"),
            ("gpu_memory_utilization", "0.9"),
            ("is_attention_free", "False"),
            ("num_cpu_blocks", "None"),
            ("num_gpu_blocks", &blocks),
            ("num_gpu_blocks_override", "None"),
            ("prefix_caching_hash_algo", "sha256"),
            ("sliding_window", "None"),
            ("swap_space", "4"),
            ("swap_space_bytes", "4294967296"),
        ],
        1.0,
    );
    let gauge = |out: &mut Out, name: &str, help: &str, v: f64| out.one(name, "gauge", help, m, v);
    gauge(
        out,
        "vllm:num_requests_running",
        "Number of requests in model execution batches.",
        f64::from(s.running),
    );
    gauge(
        out,
        "vllm:num_requests_waiting",
        "Number of requests waiting to be processed.",
        f64::from(s.waiting),
    );
    gauge(
        out,
        "vllm:kv_cache_usage_perc",
        "KV-cache usage. 1 means 100 percent usage.",
        s.kv_utilization(),
    );
    let counter = |out: &mut Out, base: &str, help: &str, v: u64| {
        out.family(base, "counter", help);
        out.sample(&format!("{base}_total"), m, v as f64);
        out.sample(&format!("{base}_created"), m, o.started_unix);
    };
    counter(
        out,
        "vllm:num_preemptions",
        "Cumulative number of preemption from the engine.",
        c.preemptions,
    );
    counter(
        out,
        "vllm:prefix_cache_queries",
        "Prefix cache queries, in terms of number of queried tokens.",
        c.prefix_queries,
    );
    counter(
        out,
        "vllm:prefix_cache_hits",
        "Prefix cache hits, in terms of number of cached tokens.",
        c.prefix_hits,
    );
    counter(
        out,
        "vllm:prompt_tokens",
        "Number of prefill tokens processed.",
        c.prompt_tokens,
    );
    counter(
        out,
        "vllm:generation_tokens",
        "Number of generation tokens processed.",
        c.generation_tokens,
    );
    out.family(
        "vllm:request_success",
        "counter",
        "Count of successfully processed requests.",
    );
    for reason in ["stop", "length", "abort"] {
        let v = if reason == "length" { c.finished } else { 0 };
        let l = [m[0], m[1], ("finished_reason", reason)];
        out.sample("vllm:request_success_total", &l, v as f64);
        out.sample("vllm:request_success_created", &l, o.started_unix);
    }
    if o.max_loras > 0 && !o.lora_info.is_empty() {
        out.family(
            "vllm:lora_requests_info",
            "gauge",
            "Running stats on lora requests.",
        );
        let max = o.max_loras.to_string();
        for (running, waiting, at) in &o.lora_info {
            out.sample(
                "vllm:lora_requests_info",
                &[
                    ("max_lora", &max),
                    ("running_lora_adapters", running),
                    ("waiting_lora_adapters", waiting),
                ],
                *at,
            );
        }
    }
    let _ = names;
    out.histogram(
        "vllm:time_to_first_token_seconds",
        "Histogram of time to first token in seconds.",
        m,
        &o.ttft,
    );
    out.histogram(
        "vllm:e2e_request_latency_seconds",
        "Histogram of e2e request latency in seconds.",
        m,
        &o.e2e,
    );
}

fn sglang(out: &mut Out, s: &EngineState, o: &Observed) {
    let c = &s.counters;
    let m: &[(&str, &str)] = &[("model_name", &o.model)];
    let (used, total) = kv_tokens(s, o);
    let hit = if c.prefix_queries > 0 {
        c.prefix_hits as f64 / c.prefix_queries as f64
    } else {
        0.0
    };
    for (name, help, v) in [
        (
            "sglang:num_running_reqs",
            "The number of running requests.",
            f64::from(s.running),
        ),
        ("sglang:num_used_tokens", "The number of used tokens.", used),
        ("sglang:token_usage", "The token usage.", s.kv_utilization()),
        (
            "sglang:num_queue_reqs",
            "The number of requests in the waiting queue.",
            f64::from(s.waiting),
        ),
        ("sglang:cache_hit_rate", "The prefix cache hit rate.", hit),
        (
            "sglang:max_total_num_tokens",
            "Maximum total number of tokens in the KV cache pool.",
            total,
        ),
    ] {
        out.one(name, "gauge", help, m, v);
    }
    out.one(
        "sglang:prompt_tokens_total",
        "counter",
        "Number of prefill tokens processed.",
        m,
        c.prompt_tokens as f64,
    );
    out.one(
        "sglang:generation_tokens_total",
        "counter",
        "Number of generation tokens processed.",
        m,
        c.generation_tokens as f64,
    );
    out.histogram(
        "sglang:time_to_first_token_seconds",
        "Histogram of time to first token in seconds.",
        m,
        &o.ttft,
    );
    out.histogram(
        "sglang:e2e_request_latency_seconds",
        "Histogram of End-to-end request latency in seconds",
        m,
        &o.e2e,
    );
}

fn tgi(out: &mut Out, s: &EngineState, o: &Observed) {
    let c = &s.counters;
    let (used, total) = kv_tokens(s, o);
    out.one(
        "tgi_batch_current_max_tokens",
        "gauge",
        "Maximum tokens for the current batch",
        &[],
        used,
    );
    out.one(
        "tgi_batch_current_size",
        "gauge",
        "Current batch size",
        &[],
        f64::from(s.running),
    );
    out.one(
        "tgi_batch_max_total_tokens",
        "gauge",
        "Maximum amount of tokens in total.",
        &[],
        total,
    );
    out.one(
        "tgi_queue_size",
        "gauge",
        "Current queue size",
        &[],
        f64::from(s.waiting),
    );
    out.one(
        "tgi_request_count",
        "counter",
        "Total number of requests",
        &[],
        o.requests_received as f64,
    );
    out.one(
        "tgi_request_success",
        "counter",
        "Number of successful requests",
        &[],
        c.finished as f64,
    );
    out.histogram(
        "tgi_request_input_length",
        "Input token length per request",
        &[],
        &o.input_length,
    );
    out.histogram(
        "tgi_request_generated_tokens",
        "Generated tokens per request",
        &[],
        &o.generated,
    );
}

fn triton(out: &mut Out, s: &EngineState, o: &Observed) {
    let model = o.model.as_str();
    let m = |extra: (&'static str, &'static str)| [("model", model), extra, ("version", "1")];
    out.one(
        "nv_inference_request_success",
        "counter",
        "Number of successful inference requests, all batch sizes",
        &[("model", model), ("version", "1")],
        s.counters.finished as f64,
    );
    out.family(
        "nv_trt_llm_request_metrics",
        "gauge",
        "TRT LLM request metrics",
    );
    let running = f64::from(s.running);
    for (kind, v) in [
        ("context", 0.0),
        ("scheduled", running),
        ("max", 256.0),
        ("active", running + f64::from(s.waiting)),
        ("waiting", f64::from(s.waiting)),
    ] {
        out.sample("nv_trt_llm_request_metrics", &m(("request_type", kind)), v);
    }
    out.family(
        "nv_trt_llm_kv_cache_block_metrics",
        "gauge",
        "TRT LLM KV cache block metrics",
    );
    let used = s.kv_used_blocks as f64;
    let total = s.kv_total_blocks as f64;
    for (kind, v) in [
        ("fraction", s.kv_utilization()),
        ("tokens_per", f64::from(o.block_tokens)),
        ("used", used),
        ("free", total - used),
        ("max", total),
    ] {
        out.sample(
            "nv_trt_llm_kv_cache_block_metrics",
            &m(("kv_cache_block_type", kind)),
            v,
        );
    }
}

fn trtllm_serve(out: &mut Out, s: &EngineState, o: &Observed) {
    let c = &s.counters;
    let m: &[(&str, &str)] = &[("engine_type", "trtllm"), ("model_name", &o.model)];
    out.family(
        "trtllm_request_success_total",
        "counter",
        "Count of successfully processed requests.",
    );
    out.sample(
        "trtllm_request_success_total",
        &[m[0], m[1], ("finished_reason", "length")],
        c.finished as f64,
    );
    out.one(
        "trtllm_prompt_tokens_total",
        "counter",
        "Number of prefill tokens processed.",
        m,
        c.prompt_tokens as f64,
    );
    out.one(
        "trtllm_generation_tokens_total",
        "counter",
        "Number of generation tokens processed.",
        m,
        c.generation_tokens as f64,
    );
    let hit = if c.prefix_queries > 0 {
        c.prefix_hits as f64 / c.prefix_queries as f64
    } else {
        0.0
    };
    for (name, help, v) in [
        ("trtllm_kv_cache_hit_rate", "KV cache hit rate.", hit),
        (
            "trtllm_kv_cache_utilization",
            "KV cache utilization.",
            s.kv_utilization(),
        ),
        (
            "trtllm_num_requests_running",
            "Number of requests running.",
            f64::from(s.running),
        ),
        (
            "trtllm_num_requests_waiting",
            "Number of requests waiting.",
            f64::from(s.waiting),
        ),
        (
            "trtllm_kv_cache_max_blocks",
            "Maximum number of KV cache blocks.",
            s.kv_total_blocks as f64,
        ),
        (
            "trtllm_kv_cache_tokens_per_block",
            "Tokens per KV cache block.",
            f64::from(o.block_tokens),
        ),
    ] {
        out.one(name, "gauge", help, m, v);
    }
    out.histogram(
        "trtllm_time_to_first_token_seconds",
        "Histogram of time to first token in seconds.",
        m,
        &o.ttft,
    );
}

fn llamacpp(out: &mut Out, s: &EngineState, o: &Observed) {
    let c = &s.counters;
    let (_, total) = kv_tokens(s, o);
    for (name, kind, help, v) in [
        (
            "llamacpp:prompt_tokens_total",
            "counter",
            "Number of prompt tokens processed.",
            (c.prompt_tokens - c.prefix_hits) as f64,
        ),
        (
            "llamacpp:tokens_predicted_total",
            "counter",
            "Number of generation tokens processed.",
            c.generation_tokens as f64,
        ),
        (
            "llamacpp:prompt_tokens_cached_total",
            "counter",
            "Number of prompt tokens served from the cache.",
            c.prefix_hits as f64,
        ),
        (
            "llamacpp:n_tokens_max",
            "counter",
            "Largest observed n_tokens.",
            total,
        ),
        (
            "llamacpp:requests_processing",
            "gauge",
            "Number of requests processing.",
            f64::from(s.running),
        ),
        (
            "llamacpp:requests_deferred",
            "gauge",
            "Number of requests deferred.",
            f64::from(s.waiting),
        ),
    ] {
        out.one(name, kind, help, &[], v);
    }
}

fn lmdeploy(out: &mut Out, s: &EngineState, o: &Observed) {
    let c = &s.counters;
    let m: &[(&str, &str)] = &[("model_name", &o.model)];
    for (name, kind, help, v) in [
        (
            "lmdeploy:num_requests_running",
            "gauge",
            "Number of requests currently running.",
            f64::from(s.running),
        ),
        (
            "lmdeploy:num_requests_waiting",
            "gauge",
            "Number of requests waiting.",
            f64::from(s.waiting),
        ),
        (
            "lmdeploy:gpu_cache_usage_perc",
            "gauge",
            "GPU KV-cache usage. 1 means 100 percent usage.",
            s.kv_utilization(),
        ),
        (
            "lmdeploy:prompt_tokens_total",
            "counter",
            "Number of prefill tokens processed.",
            c.prompt_tokens as f64,
        ),
        (
            "lmdeploy:generation_tokens_total",
            "counter",
            "Number of generation tokens processed.",
            c.generation_tokens as f64,
        ),
    ] {
        out.one(name, kind, help, m, v);
    }
}
