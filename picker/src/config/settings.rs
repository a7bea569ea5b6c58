//! Every setting of the picker, each declared once: its `Settings` field and default, its key in
//! the YAML file, its flag (and so its env var `INFERPICK_<FLAG>`), its kind (parser, accepted
//! range, how its value is shown) and its doc comment, which is its `--help` text and its line in
//! the README's reference. To add a setting, add an entry here.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::declare::settings;
use super::kind::Bound::{Excl, Incl, Open};
use super::kind::{Addr, AddrOrOff, Int, Number, Optional, Path, Profile, Span};
use super::lists::{CapacityPins, Cidrs, Objectives, Rewrites, TokenizerFiles};
use crate::scheduler::{CostModel, Policy, RewriteTarget, Saturation, SchedulerConfig};
use crate::table::{CapacityPin, DEFAULT_MAX_ENDPOINTS, TableConfig};
use crate::tls::TlsFiles;
use crate::tokenize::Tokenizers;
use crate::trust::Cidr;

settings! {
    /// HTTP API and `/metrics`.
    listen: SocketAddr = SocketAddr::from(([0, 0, 0, 0], 9000)), {
        "listen" => Addr, flag listen "ADDR";
    }
    /// Envoy ext_proc (the Gateway API Inference Extension's endpoint-picker protocol) and gRPC
    /// health, or `off`.
    grpc_listen: Option<SocketAddr> = Some(SocketAddr::from(([0, 0, 0, 0], 9002))), {
        "grpc_listen" => AddrOrOff, flag grpc_listen "ADDR|off";
    }
    /// ext_proc: how many fallbacks to append to the destination header and `envoy.lb` metadata
    /// (0 = the primary alone, what an ORIGINAL_DST cluster needs).
    extproc_fallbacks: u32 = 0, {
        "extproc_fallbacks" => Int::range(0, 16), flag extproc_fallbacks "N";
    }
    /// If set, `POST /v1/reports` requires `Authorization: Bearer <token>`; re-read when it
    /// changes.
    report_token_file: Option<PathBuf> = None, {
        "auth.report_token_file" => Optional(Path), flag report_token_file "PATH";
    }
    /// If set, pick, authz, done and ext_proc calls require `Authorization: Bearer <token>`.
    pick_token_file: Option<PathBuf> = None, {
        "auth.pick_token_file" => Optional(Path), flag pick_token_file "PATH";
    }
    /// Peers allowed to push reports for endpoints other than their own IP (proxies, meshes); any
    /// other peer may only report for its own address.
    trusted_proxies: Vec<Cidr> = Vec::new(), {
        "auth.trusted_proxies" => Cidrs, flag trusted_proxies "CIDR[,CIDR…]";
    }
    /// An endpoint whose last report arrived longer ago is not picked.
    max_report_age: Duration = Duration::from_secs(1), {
        "staleness.max_report_age" => Span::POSITIVE, flag max_report_age "DURATION";
    }
    /// An endpoint silent this long is dropped from the table.
    forget_after: Duration = Duration::from_secs(60), {
        "staleness.forget_after" => Span::POSITIVE, flag forget_after "DURATION";
    }
    /// An endpoint whose KV-event stream was last heard live longer ago is routed on the
    /// approximate prefix index.
    kv_max_age: Duration = TableConfig::default().kv_max_age, {
        "staleness.kv_max_age" => Span::POSITIVE, flag kv_max_age "DURATION";
    }
    /// Scheduling profile: how endpoints are scored and one is chosen.
    policy: Policy = Policy::Inferpick, {
        "policy" => Profile, flag policy "NAME";
    }
    /// Named objectives (like GIE's InferenceObjective): name → priority, set on a request by
    /// `objective` or `x-gateway-inference-objective`.
    objectives: HashMap<String, i32> = HashMap::new(), {
        "objectives" => Objectives;
    }
    /// When an endpoint counts as saturated: negative priority is shed only when all are.
    saturation: Saturation = Saturation::default(), {
        /// Waiting requests (plus routed in flight, for `inferpick`) at or above this saturate an
        /// endpoint.
        "saturation.queue_depth_threshold" .queue_depth_threshold => Int::range(1, 1_000_000);
        /// KV cache utilization at or above this saturates an endpoint.
        "saturation.kv_cache_threshold" .kv_cache_threshold => Number::within(Excl(0.0), Incl(1.0));
    }
    /// Model rewrites (like GIE's InferenceModelRewrite): a requested name → weighted targets.
    rewrites: HashMap<String, Vec<RewriteTarget>> = HashMap::new(), {
        "models" => Rewrites;
    }
    /// Each model's tokenizer (`tokenizer.json`), for token-exact prefix routing on its engines'
    /// KV events. A model without one is routed on the approximate prefix index.
    tokenizers: Tokenizers = Tokenizers::default(), {
        "tokenizers" => TokenizerFiles;
    }
    /// Prefill rates fixed by hand (tokens/s at full clock) for the endpoints one rule matches —
    /// by `address`, `pod_prefix` or `gpu` product name; the first match wins. Picks otherwise
    /// learn each endpoint's rate from its reports and its hardware.
    capacity_pins: Vec<CapacityPin> = Vec::new(), {
        "capacity.pins" => CapacityPins;
    }
    /// The `inferpick` profile's cost model: predicted seconds to first token on each endpoint.
    /// The defaults are calibrated for an 8B model on one H100 (10–20k prefill tokens/s, 10–30 ms
    /// decode steps); the other profiles ignore it.
    cost: CostModel = CostModel::default(), {
        /// Prompt tokens assumed per waiting request, and for a request that sends neither its
        /// prompt nor an estimate.
        "cost.default_prompt_tokens" .default_prompt_tokens => Int::range(0, 10_000_000);
        /// Characters per token, to estimate a prompt's tokens from its text.
        "cost.chars_per_token" .chars_per_token => Number::POSITIVE;
        /// Prefill throughput assumed until an endpoint has shown more (tokens/s).
        "cost.prefill_floor_tokens_per_second" .prefill_floor_tokens_per_second
            => Number::POSITIVE;
        /// A routed prompt stays in its endpoint's backlog for this fraction of its costed
        /// prefill time; below 1 because throughput is measured over steps that also decode, and
        /// at 1 a sustained load can make the backlog outgrow what endpoints actually hold.
        "cost.routed_prefill_drain_ratio" .routed_prefill_drain_ratio
            => Number::within(Incl(0.0), Incl(1.0));
        /// Uncached prompt tokens are costed at 1 plus the pool's mean waiting requests times
        /// their prefill time, that mean taken at most this: under queueing a cache miss delays
        /// the requests behind it too, and keeping caches is keeping capacity. 0 costs them once.
        "cost.miss_weight_max_waiting" .miss_weight_max_waiting => Number::NON_NEGATIVE;
        /// Time-to-first-token slowdown per running request (seconds): decode steps share the
        /// batch.
        "cost.seconds_per_running_request" .seconds_per_running_request => Number::NON_NEGATIVE;
        /// Scale of the KV pressure term k/(1−k), which grows without bound as the cache fills
        /// (seconds).
        "cost.kv_pressure_seconds" .kv_pressure_seconds => Number::NON_NEGATIVE;
        /// Cost of loading the requested LoRA adapter into a free slot (seconds; half of it while
        /// the adapter is already waiting to load).
        "cost.adapter_load_seconds" .adapter_load_seconds => Number::NON_NEGATIVE;
        /// Cost of waiting for an adapter slot when every slot is busy (seconds).
        "cost.adapter_slot_wait_seconds" .adapter_slot_wait_seconds => Number::NON_NEGATIVE;
        /// Credit for the endpoint that served this session before (seconds).
        "cost.session_affinity_seconds" .session_affinity_seconds => Number::NON_NEGATIVE;
        /// Imbalance guard: an endpoint loses its prefix and session credit when its load exceeds
        /// both this multiple of the pool's least-loaded endpoint and that load plus
        /// `prefix_imbalance_requests`.
        "cost.prefix_imbalance_ratio" .prefix_imbalance_ratio
            => Number::within(Incl(1.0), Open);
        /// Imbalance guard: the margin in requests over the pool's least-loaded endpoint (see
        /// `prefix_imbalance_ratio`).
        "cost.prefix_imbalance_requests" .prefix_imbalance_requests
            => Int::range(0, 1_000_000);
        /// How many near-best endpoints are sampled; the cheapest of the sample is picked (power
        /// of k choices).
        "cost.power_of_k" .power_of_k => Int::range(1, 1024);
        /// Near-best: a cost within best × (1 + this), or within best + `near_best_seconds`,
        /// whichever is wider.
        "cost.near_best_ratio" .near_best_ratio => Number::NON_NEGATIVE;
        /// Near-best: the absolute margin over the best cost (seconds; see `near_best_ratio`).
        "cost.near_best_seconds" .near_best_seconds => Number::NON_NEGATIVE;
        /// Pools larger than this are scored on a random window of this many ready endpoints,
        /// plus every endpoint the prefix index or the session names (shedding is still decided
        /// on the whole pool); 0 scores every endpoint.
        "cost.scan_limit" .scan_limit => Int::range(0, u64::MAX);
    }
    /// Most endpoints the table holds; a report for a new endpoint beyond it is refused with 503
    /// `table_full`.
    max_endpoints: usize = DEFAULT_MAX_ENDPOINTS, {
        "limits.max_endpoints" => Int::range(1, u64::MAX), flag max_endpoints "N";
    }
    /// Most connections each listener (HTTP, gRPC) holds at once; at the cap it stops accepting
    /// until one closes, and new clients wait in the kernel's listen backlog. Each connection
    /// costs a file descriptor and buffers, so the cap keeps a flood of connections inside the
    /// process's descriptor limit and bounded memory; 10000 leaves room for a fleet of thousands
    /// of agents (each holds one keep-alive connection to the HTTP listener) plus its gateways.
    /// With a fleet near `--max-endpoints`, raise it too. Read at start.
    max_connections: usize = 10_000, {
        "limits.max_connections" => Int::range(1, 10_000_000), flag max_connections "N";
    }
    /// A client that has not sent a whole request head within this is disconnected, a body not
    /// read within it gets 408, an idle connection is closed after it; it also bounds TLS and
    /// HTTP/2 handshakes.
    request_timeout: Duration = Duration::from_secs(10), {
        "limits.request_timeout" => Span::POSITIVE, flag request_timeout "DURATION";
    }
    /// Most decisions kept open for `POST /v1/done` feedback; beyond it the oldest are dropped,
    /// and a `done` for one of them changes nothing.
    max_open_decisions: usize = TableConfig::default().max_open_decisions, {
        "limits.max_open_decisions" => Int::range(1, 100_000_000);
    }
    /// Most KV blocks the token-exact index keeps per endpoint, from its engine's KV events
    /// (about 100 bytes each); blocks stored past it are not recorded.
    exact_blocks_per_endpoint: usize = TableConfig::default().exact_blocks_per_endpoint, {
        "limits.exact_blocks_per_endpoint" => Int::range(1, 100_000_000);
    }
    /// Most KV blocks the token-exact index keeps over every endpoint (about 100 bytes each: the
    /// default is about 400 MiB); blocks stored past it are not recorded.
    exact_blocks_total: usize = TableConfig::default().exact_blocks_total, {
        "limits.exact_blocks_total" => Int::range(1, 1_000_000_000);
    }
    /// Most prompt blocks (64 bytes of prompt each) the prefix index remembers per endpoint and
    /// model, least recently seen dropped first. A reload applies a new bound at each endpoint's
    /// next insert.
    prefix_blocks_per_endpoint: usize = TableConfig::default().prefix_blocks_per_endpoint, {
        "limits.prefix_blocks_per_endpoint" => Int::range(1, 100_000_000);
    }
    /// TLS for both listeners; `None` serves plain text.
    tls: Option<TlsFiles> = None, {
        /// PEM certificate chain: with the key, the HTTP listener serves HTTPS and the gRPC
        /// listener TLS.
        "tls.cert_file" => Path, flag tls_cert "PATH",
            via |s: &Settings| s.tls.as_ref().map(|t| &t.cert_file),
                |s: &mut Settings, path| tls_files(s).cert_file = path;
        /// PEM private key of the certificate.
        "tls.key_file" => Path, flag tls_key "PATH",
            via |s: &Settings| s.tls.as_ref().map(|t| &t.key_file),
                |s: &mut Settings, path| tls_files(s).key_file = path;
    }
    /// On SIGTERM, keep serving this long with `/readyz` at 503 so load balancers stop sending new
    /// requests.
    shutdown_delay: Duration = Duration::from_secs(2), {
        "lifecycle.shutdown_delay" => Span::ZERO_OK, flag shutdown_delay "DURATION";
    }
    /// After the shutdown delay, wait at most this long for requests and ext_proc streams in
    /// flight before exiting.
    drain_timeout: Duration = Duration::from_secs(30), {
        "lifecycle.drain_timeout" => Span::POSITIVE, flag drain_timeout "DURATION";
    }
}

/// The TLS files, created empty when the first of the two is given (the other is checked for).
fn tls_files(s: &mut Settings) -> &mut TlsFiles {
    s.tls.get_or_insert_with(|| TlsFiles {
        cert_file: PathBuf::new(),
        key_file: PathBuf::new(),
    })
}

impl Settings {
    /// The table's part.
    // Every field is set today; the update keeps this compiling when the table gains one.
    #[allow(clippy::needless_update)]
    pub fn table_config(&self) -> TableConfig {
        TableConfig {
            max_report_age: self.max_report_age,
            forget_after: self.forget_after,
            max_endpoints: self.max_endpoints,
            max_open_decisions: self.max_open_decisions,
            prefix_blocks_per_endpoint: self.prefix_blocks_per_endpoint,
            exact_blocks_per_endpoint: self.exact_blocks_per_endpoint,
            exact_blocks_total: self.exact_blocks_total,
            kv_max_age: self.kv_max_age,
            capacity_pins: self.capacity_pins.clone(),
            ..TableConfig::default()
        }
    }

    /// The scheduler's part.
    pub fn scheduler_config(&self) -> SchedulerConfig {
        SchedulerConfig {
            objectives: self.objectives.clone(),
            rewrites: self.rewrites.clone(),
            saturation: self.saturation.clone(),
            cost: self.cost.clone(),
            tokenizers: self.tokenizers.clone(),
            ..SchedulerConfig::default()
        }
    }
}
