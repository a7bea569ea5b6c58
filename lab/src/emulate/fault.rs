//! Faults on command, so the lab can show a GPU going bad in the middle of a run:
//!
//! - `POST /lab/degrade` with `{"speed": 0.5}` throttles the engine (every step takes `1 / speed`
//!   as long), `{"lost": true}` fails it like a GPU that fell off the bus; `{"speed": 1}` and
//!   `{"lost": false}` recover. It answers the condition now.
//! - `GET /lab/gpus` answers the GPU an agent would read through NVML in that condition, as a JSON
//!   array of the report's `Gpu` objects (what `inferpick-agent --gpu-state-url` reads).
//!
//! A lost engine answers what a vLLM whose GPU fell off the bus answers: its engine core dies
//! (CUDA errors), the API server fails the requests in flight and new ones with a 500
//! (`EngineDeadError`), `/health` says 503, and then the server exits, so `/metrics` stops
//! answering too. The emulator keeps its port for the `/lab/` routes, so every other route
//! answers 500 (503 for `/health`) until it recovers.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use inferpick_schema::{Gpu, GpuHealth, ThrottleReason};
use serde::Serialize;
use serde_json::Value;

use super::Emulator;
use super::openai::ApiError;

/// The GPU every emulated pod reports: its NVML name, memory and SM clock ceiling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GpuIdentity {
    /// NVML's product name.
    pub name: &'static str,
    /// Memory on the card, bytes (NVML's total, a little under the marketed size).
    pub memory_total_bytes: u64,
    /// The SM clock's maximum, MHz.
    pub sm_clock_max_mhz: u32,
}

/// An H100 SXM 80GB as NVML reports it: 81,559 MiB, SM clock up to 1,980 MHz.
pub const H100: GpuIdentity = GpuIdentity {
    name: "NVIDIA H100 80GB HBM3",
    memory_total_bytes: 81_559 * 1024 * 1024,
    sm_clock_max_mhz: 1980,
};

/// Share of GPU memory vLLM takes at start (`--gpu-memory-utilization`, default 0.9): weights and
/// the preallocated KV cache, in use however many requests run.
const MEMORY_UTILIZATION: f64 = 0.9;

/// How an emulated engine's GPU is doing.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Condition {
    /// Fraction of full speed, in (0, 1].
    pub speed: f64,
    /// The GPU is lost: the engine serves nothing.
    pub lost: bool,
}

impl Default for Condition {
    fn default() -> Self {
        Self {
            speed: 1.0,
            lost: false,
        }
    }
}

/// A change of condition, as `POST /lab/degrade` takes it; absent fields keep their value.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Degrade {
    /// New speed.
    pub speed: Option<f64>,
    /// Lost or back.
    pub lost: Option<bool>,
}

impl Degrade {
    /// Reads a `POST /lab/degrade` body; the error names the key or value that is wrong.
    pub fn parse(body: &[u8]) -> Result<Degrade, String> {
        let value: Value =
            serde_json::from_slice(body).map_err(|e| format!("the body is not JSON: {e}"))?;
        let Value::Object(map) = value else {
            return Err(format!(
                "expected a JSON object such as {{\"speed\": 0.5}} or {{\"lost\": true}}, got {value}"
            ));
        };
        let mut out = Degrade::default();
        for (key, v) in &map {
            match key.as_str() {
                "speed" => out.speed = Some(speed_of(v)?),
                "lost" => {
                    out.lost = Some(
                        v.as_bool()
                            .ok_or_else(|| format!("lost: expected true or false, got {v}"))?,
                    )
                }
                other => {
                    return Err(format!(
                        "unknown key {other:?}: expected \"speed\" (0 < speed ≤ 1) or \"lost\" (true or false)"
                    ));
                }
            }
        }
        if out == Degrade::default() {
            return Err("nothing to change: give \"speed\" or \"lost\"".into());
        }
        Ok(out)
    }
}

fn speed_of(v: &Value) -> Result<f64, String> {
    match v.as_f64() {
        Some(s) if s > 0.0 && s <= 1.0 => Ok(s),
        Some(s) => Err(format!(
            "speed = {s}: must be above 0 and at most 1 (a fraction of full speed)"
        )),
        None => Err(format!("speed: expected a number in (0, 1], got {v}")),
    }
}

/// The GPU state NVML would show for `condition`: clocks at the maximum when healthy, held at
/// `speed` × maximum with a hardware thermal slowdown when throttled, only "lost" when lost (NVML
/// reads nothing else from a GPU off the bus).
pub fn gpus(identity: &GpuIdentity, uuid: &str, condition: Condition) -> Vec<Gpu> {
    let health = if condition.lost {
        GpuHealth {
            lost: true,
            ..GpuHealth::default()
        }
    } else {
        let throttled = condition.speed < 1.0;
        let max = identity.sm_clock_max_mhz;
        GpuHealth {
            throttle: if throttled {
                vec![ThrottleReason::HwThermal]
            } else {
                Vec::new()
            },
            sm_clock_mhz: Some((condition.speed * f64::from(max)).round() as u32),
            sm_clock_max_mhz: Some(max),
            ..GpuHealth::default()
        }
    };
    let readable = !condition.lost;
    vec![Gpu {
        uuid: uuid.to_string(),
        index: Some(0),
        name: Some(identity.name.to_string()),
        memory_used_bytes: readable
            .then_some((identity.memory_total_bytes as f64 * MEMORY_UTILIZATION) as u64),
        memory_total_bytes: readable.then_some(identity.memory_total_bytes),
        utilization_percent: None,
        temperature_celsius: None,
        power_watts: None,
        health: Some(health),
    }]
}

/// The `/lab/` routes, merged into the emulator's router.
pub(super) fn routes() -> Router<Emulator> {
    Router::new()
        .route("/lab/degrade", post(degrade))
        .route("/lab/gpus", get(lab_gpus))
}

async fn degrade(State(em): State<Emulator>, body: Bytes) -> Response {
    match Degrade::parse(&body) {
        Ok(change) => axum::Json(em.degrade(change)).into_response(),
        Err(message) => ApiError::bad(format!("POST /lab/degrade: {message}")).into_response(),
    }
}

async fn lab_gpus(State(em): State<Emulator>) -> Response {
    axum::Json(em.gpus()).into_response()
}

/// In front of every route: notes each generation request's arrival (served or not, so the lab
/// can count what was routed to a lost engine), and while the GPU is lost fails every route but
/// `/lab/…` as a dead vLLM does (see the module).
pub(super) async fn gate(State(em): State<Emulator>, request: Request, next: Next) -> Response {
    let path = request.uri().path();
    if request.method() == axum::http::Method::POST
        && matches!(path, "/v1/completions" | "/v1/chat/completions")
    {
        em.note_arrival();
    }
    if !em.condition().lost || path.starts_with("/lab/") {
        return next.run(request).await;
    }
    if path == "/health" {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    ApiError::engine_dead().into_response()
}
