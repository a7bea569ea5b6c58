//! inferpick's picker: ingests load reports and decides which endpoint serves each LLM request.
//!
//! Module map, in layers (a module imports only from its own layer or those below it; there is
//! no import cycle):
//! - core, no I/O, time is an argument:
//!   - [`prefix`]: prompt block hashing (chained 64-byte blocks) and the approximate prefix index.
//!   - [`tokenize`]: the models' tokenizers (a prompt's leading token ids).
//!   - [`table`]: the endpoint table — snapshots of the latest reports, ingest rules, per-endpoint
//!     counters, the ledger of open decisions, the capacity estimate, one approximate prefix index
//!     and one token-exact index (from the engines' KV events) per model.
//!   - [`scheduler`]: the pick pipeline (resolve → affinity → candidates → score → saturation →
//!     choose → record) around one profile per policy.
//! - shared state: [`config`] (flags over the YAML file, each setting declared once), [`trust`]
//!   (who may report for which endpoint), [`tls`], [`clock`], [`metrics`] (the
//!   `inferpick_picker_*` families), [`state`] (`AppState`: table, scheduler, settings, tokens,
//!   metrics), [`error`] (`ApiError`: code and status of every refusal).
//! - transports: [`openai`] (an OpenAI request and its gateway headers as a pick request; refusals
//!   as OpenAI clients read them), [`front`] (authenticate, decide, close — the same for every
//!   transport), then [`http`] (`router(state)`, the JSON API) and
//!   [`extproc`] (Envoy ext_proc, the Gateway API Inference Extension's protocol), siblings that
//!   never call each other, over [`server`] (accept loops, TLS, timeouts, the connection cap).
//! - [`service`]: on top — both listeners, the background tasks, reload, and the shutdown sequence.
//!
//! The library and the service share one rule: the scheduler reads no clock and does no I/O, so the
//! lab's simulator drives exactly the code the service runs.
pub mod clock;
pub mod config;
pub mod error;
pub mod extproc;
pub mod front;
mod hashing;
pub mod http;
pub mod metrics;
pub mod openai;
pub mod prefix;
pub mod scheduler;
pub mod server;
pub mod service;
pub mod state;
pub mod table;
pub mod tls;
pub mod tokenize;
pub mod trust;

pub use clock::Clock;
pub use config::{Args, Settings};
pub use http::router;
pub use service::{RunError, run, serve};
pub use state::AppState;
