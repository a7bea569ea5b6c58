//! Every setting of the picker, each declared once: its `Settings` field and default, its key in
//! the YAML file, its flag (and so its env var `INFERPICK_<FLAG>`), its kind (parser, accepted
//! range, how its value is shown) and its doc comment, which is its `--help` text and its line in
//! the README's reference. To add a setting, add an entry here.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::declare::settings;
use super::kind::Bound::{Excl, Incl};
use super::kind::{Addr, AddrOrOff, Int, Number, Optional, Path, Profile, Span};
use super::lists::{Cidrs, Objectives, Rewrites};
use crate::scheduler::{Policy, RewriteTarget, Saturation, SchedulerConfig};
use crate::table::{DEFAULT_MAX_ENDPOINTS, TableConfig};
use crate::tls::TlsFiles;
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
    /// Most endpoints the table holds; a report for a new endpoint beyond it is refused with 503
    /// `table_full`.
    max_endpoints: usize = DEFAULT_MAX_ENDPOINTS, {
        "limits.max_endpoints" => Int::range(1, u64::MAX), flag max_endpoints "N";
    }
    /// A client that has not sent a whole request head within this is disconnected, a body not
    /// read within it gets 408, an idle connection is closed after it; it also bounds TLS and
    /// HTTP/2 handshakes.
    request_timeout: Duration = Duration::from_secs(10), {
        "limits.request_timeout" => Span::POSITIVE, flag request_timeout "DURATION";
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
    pub fn table_config(&self) -> TableConfig {
        TableConfig {
            max_report_age: self.max_report_age,
            forget_after: self.forget_after,
            max_endpoints: self.max_endpoints,
            ..TableConfig::default()
        }
    }

    /// The scheduler's part.
    pub fn scheduler_config(&self) -> SchedulerConfig {
        SchedulerConfig {
            objectives: self.objectives.clone(),
            rewrites: self.rewrites.clone(),
            saturation: self.saturation.clone(),
            ..SchedulerConfig::default()
        }
    }
}
