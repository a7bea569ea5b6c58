//! The built-in gateway: a small reverse proxy for OpenAI-style requests. Per request it either asks
//! a picker (`POST /v1/pick`, then `POST /v1/done` when the response ends) or takes the next
//! endpoint in turn (round robin, like a Kubernetes Service), and streams the engine's answer back.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use inferpick_picker::http::ApiError;
use inferpick_schema::{Decision, DoneRequest, ErrorBody, PickRequest};
use tokio::net::TcpListener;

/// How the gateway chooses an endpoint.
#[derive(Debug, Clone)]
pub enum Route {
    /// Each endpoint in turn.
    RoundRobin(Vec<String>),
    /// Ask the picker at this base URL.
    Picker(String),
}

impl Route {
    /// A short name for tables.
    pub fn name(&self) -> &'static str {
        match self {
            Route::RoundRobin(_) => "round-robin",
            Route::Picker(_) => "inferpick",
        }
    }
}

#[derive(Debug)]
struct Inner {
    route: Route,
    next: AtomicUsize,
    client: reqwest::Client,
}

/// The gateway's shared state.
#[derive(Debug, Clone)]
pub struct Gateway(Arc<Inner>);

/// Largest request body the gateway reads.
const MAX_BODY: usize = 8 << 20;

impl Gateway {
    /// A gateway that routes by `route`.
    pub fn new(route: Route) -> Self {
        Self(Arc::new(Inner {
            route,
            next: AtomicUsize::new(0),
            client: reqwest::Client::builder()
                .pool_max_idle_per_host(1024)
                .build()
                .expect("a plain HTTP client builds"),
        }))
    }
}

/// The gateway's routes: every path is proxied.
pub fn router(gw: Gateway) -> Router {
    Router::new().fallback(proxy).with_state(gw)
}

/// Serves `gw` on `listener` until `shutdown` resolves.
pub async fn serve(
    gw: Gateway,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(gw))
        .with_graceful_shutdown(shutdown)
        .await
}

/// A refusal in OpenAI's error shape: the gateway's clients are OpenAI clients, whose SDKs show
/// `error.message`.
fn error(status: StatusCode, code: &str, message: impl AsRef<str>) -> Response {
    let body = inferpick_picker::openai::error_body(status.as_u16(), code, message.as_ref());
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// What the picker needs from a request: the picker's own reading of an OpenAI body and the
/// gateway headers, without fallbacks (the gateway tries one endpoint).
fn pick_request(body: &[u8], headers: &HeaderMap) -> Result<PickRequest, ApiError> {
    let mut ask = inferpick_picker::openai::pick_request(headers, body)?;
    ask.fallbacks = Some(0);
    Ok(ask)
}

/// A request the gateway refuses before asking the picker (a misshapen body or header).
fn refused(e: ApiError) -> Response {
    error(e.status(), e.code(), e.to_string())
}

/// The picker's refusal (404 unknown model, 429 shed, 503 nothing ready), passed on with its
/// status, code, message and `Retry-After` in OpenAI's shape.
async fn picker_refusal(r: reqwest::Response) -> Response {
    let status = StatusCode::from_u16(r.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let retry = r.headers().get(header::RETRY_AFTER).cloned();
    let text = r.text().await.unwrap_or_default();
    let mut resp = match serde_json::from_str::<ErrorBody>(&text) {
        Ok(e) => error(status, &e.error, e.message),
        Err(_) => error(
            status,
            "picker",
            format!("the picker answered {status}: {text}"),
        ),
    };
    if let Some(retry) = retry {
        resp.headers_mut().insert(header::RETRY_AFTER, retry);
    }
    resp
}

async fn proxy(State(gw): State<Gateway>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(e) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                e.to_string(),
            );
        }
    };
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let (endpoint, decision) = match &gw.0.route {
        Route::RoundRobin(eps) => {
            let i = gw.0.next.fetch_add(1, Ordering::Relaxed) % eps.len();
            (eps[i].clone(), None)
        }
        Route::Picker(picker) => {
            let ask = match pick_request(&body, &parts.headers) {
                Ok(ask) => ask,
                Err(e) => return refused(e),
            };
            match gw
                .0
                .client
                .post(format!("{picker}/v1/pick"))
                .json(&ask)
                .send()
                .await
            {
                Ok(r) if r.status().is_success() => match r.json::<Decision>().await {
                    Ok(d) => (d.endpoint.clone(), Some(d.decision_id)),
                    Err(e) => return error(StatusCode::BAD_GATEWAY, "picker", e.to_string()),
                },
                Ok(r) => return picker_refusal(r).await,
                Err(e) => {
                    return error(
                        StatusCode::BAD_GATEWAY,
                        "picker",
                        format!("picker unreachable: {e}"),
                    );
                }
            }
        }
    };
    let upstream =
        gw.0.client
            .request(parts.method.clone(), format!("http://{endpoint}{path}"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await;
    let upstream = match upstream {
        Ok(u) => u,
        Err(e) => {
            gw.done(decision, Some(502));
            return error(
                StatusCode::BAD_GATEWAY,
                "upstream",
                format!("{endpoint}: {e}"),
            );
        }
    };
    let status = upstream.status().as_u16();
    let mut builder = Response::builder().status(status);
    if let Some(ct) = upstream.headers().get(header::CONTENT_TYPE) {
        builder = builder.header(header::CONTENT_TYPE, ct.clone());
    }
    builder = builder.header("x-inferpick-endpoint", endpoint.as_str());
    // Closes the decision when the response body ends or the client goes away.
    let guard = DoneGuard {
        gw: gw.clone(),
        decision,
        status,
    };
    let stream = upstream.bytes_stream().map(move |chunk| {
        let _keep = &guard;
        chunk.map_err(std::io::Error::other)
    });
    builder
        .body(Body::from_stream(stream))
        .unwrap_or_else(|e| error(StatusCode::BAD_GATEWAY, "upstream", e.to_string()))
}

impl Gateway {
    fn done(&self, decision: Option<String>, status: Option<u16>) {
        let (Route::Picker(picker), Some(decision_id)) = (&self.0.route, decision) else {
            return;
        };
        let url = format!("{picker}/v1/done");
        let client = self.0.client.clone();
        tokio::spawn(async move {
            let body = DoneRequest {
                decision_id,
                status,
                ..DoneRequest::default()
            };
            if let Err(e) = client.post(url).json(&body).send().await {
                tracing::debug!(error = %e, "done feedback failed");
            }
        });
    }
}

struct DoneGuard {
    gw: Gateway,
    decision: Option<String>,
    status: u16,
}

impl Drop for DoneGuard {
    fn drop(&mut self) {
        self.gw.done(self.decision.take(), Some(self.status));
    }
}

/// A running gateway and its address; stops when dropped.
#[derive(Debug)]
pub struct RunningGateway {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RunningGateway {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.task.abort();
    }
}

/// Starts a gateway on `listener`.
pub fn spawn(gw: Gateway, listener: TcpListener) -> std::io::Result<RunningGateway> {
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        if let Err(e) = serve(gw, listener, async {
            let _ = stopped.await;
        })
        .await
        {
            tracing::warn!(error = %e, "gateway stopped");
        }
    });
    Ok(RunningGateway {
        addr,
        stop: Some(stop),
        task,
    })
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;
    use serde_json::json;

    use super::*;

    /// The built-in gateway, ext_proc and `/v1/authz` (which reads a request with
    /// `openai::pick_request` as it is) ask the picker the same thing for the same request; the
    /// gateway only asks for no fallbacks.
    #[test]
    fn the_gateway_ext_proc_and_authz_read_a_request_alike() {
        let mut headers = HeaderMap::new();
        headers.insert("x-session-id", HeaderValue::from_static("user-7"));
        headers.insert("x-inferpick-priority", HeaderValue::from_static("-1"));
        headers.insert(
            "x-gateway-inference-objective",
            HeaderValue::from_static("batch"),
        );
        headers.insert(
            "x-gateway-destination-endpoint-subset",
            HeaderValue::from_static("10.0.0.1:8000,10.0.0.2:8000"),
        );
        let bodies = [
            json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}),
            json!({"model": "m", "max_completion_tokens": 64, "messages": [
                {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
                {"role": "assistant", "content": null, "tool_calls": []},
                {"role": "user", "content": [{"type": "text", "text": "Why?"},
                    {"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]}),
            json!({"model": "sql-lora", "prompt": "SELECT", "max_tokens": 8, "n": 2}),
            json!({"model": "m", "prompt": ["a", "b"], "max_tokens": 8}),
            json!({"model": "m", "prompt": [1, 2, 3]}),
            json!({"model": "m", "prompt": [[1, 2], [3]]}),
        ];
        for body in bodies {
            let bytes = body.to_string().into_bytes();
            let gateway = pick_request(&bytes, &headers).unwrap();
            let ext_proc = inferpick_picker::extproc::pick_request(&headers, &bytes, None).unwrap();
            let authz = inferpick_picker::openai::pick_request(&headers, &bytes).unwrap();
            assert_eq!(ext_proc, authz, "{body}");
            assert_eq!(
                gateway,
                PickRequest {
                    fallbacks: Some(0),
                    ..authz
                },
                "{body}"
            );
            assert!(
                gateway.prompt.is_some() || gateway.prompt_token_ids.is_some(),
                "the gateway saw no prompt in {body}"
            );
        }
    }

    #[tokio::test]
    async fn a_misshapen_body_is_refused_in_openai_shape_naming_the_field() {
        let refusal = refused(pick_request(br#"{"prompt": 5}"#, &HeaderMap::new()).unwrap_err());
        assert_eq!(refusal.status(), StatusCode::BAD_REQUEST);
        assert_eq!(refusal.headers()[header::CONTENT_TYPE], "application/json");
        let body = axum::body::to_bytes(refusal.into_body(), usize::MAX)
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["code"], "invalid_request", "{v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with("prompt:"),
            "{v}"
        );
    }
}
