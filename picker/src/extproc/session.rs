//! One ext_proc stream (one HTTP request through Envoy) as a state machine: each message Envoy
//! sends becomes the responses to send back. No I/O, so every path is unit-tested.
//!
//! The two request-body modes of the endpoint-picker protocol:
//! - `FULL_DUPLEX_STREAMED` (what Gateway API Inference Extension gateways configure): Envoy streams
//!   headers and body chunks without waiting. The session holds its answer to the headers until
//!   the body is complete, decides, then answers the headers (setting the destination) and sends
//!   the body back in one streamed chunk.
//! - `BUFFERED`: Envoy waits for the answer to the headers before it sends the whole body, so the
//!   headers are answered at once and the destination is set with the answer to the body.
//!
//! On the response path the session passes everything through (echoing streamed chunks), notes
//! the first body chunk (time to first token) and closes the decision at the end of the stream.

use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::{
    HeaderValue, HeaderValueOption, header_value_option,
};
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::processing_mode::BodySendMode;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    BodyMutation, BodyResponse, CommonResponse, HeaderMutation, HeadersResponse, HttpBody,
    HttpHeaders, ImmediateResponse, ProcessingRequest, ProcessingResponse, StreamedBodyResponse,
    TrailersResponse, body_mutation, processing_request::Request, processing_response::Response,
};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use envoy_types::pb::google::protobuf::{ListValue, Struct, Value, value::Kind};
use http::{HeaderMap, HeaderName, HeaderValue as HttpHeaderValue};

/// The header (and `envoy.lb` metadata key) that carries the chosen endpoint.
pub const DESTINATION: &str = "x-gateway-destination-endpoint";
/// The candidate list, as a header or under metadata namespace `envoy.lb.subset_hint`.
pub const SUBSET: &str = "x-gateway-destination-endpoint-subset";
/// The metadata namespace Envoy's ORIGINAL_DST and GIE gateways read the destination from.
pub const LB_NAMESPACE: &str = "envoy.lb";
/// The metadata namespace of the subset hint.
pub const SUBSET_NAMESPACE: &str = "envoy.lb.subset_hint";

/// A decision, as the session needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct Decided {
    /// The value of the destination header and metadata: the primary, or `primary,fallback,…`.
    pub destination: String,
    /// Identifies the decision when it is closed.
    pub decision_id: uuid::Uuid,
}

/// A refusal, sent to the client as an immediate response.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    /// HTTP status (400, 401, 404, 413, 429, 503).
    pub status: u16,
    /// Seconds, for 429.
    pub retry_after: Option<u64>,
    /// The error body, in OpenAI's shape (the client is an LLM client).
    pub body: Vec<u8>,
}

/// What a session asks of the picker.
pub trait Decide: Send + Sync + 'static {
    /// Decides for a request with these headers and body, restricted to `subset` when given.
    fn decide(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        subset: Option<Vec<String>>,
    ) -> Result<Decided, Refusal>;
    /// The response's first body chunk arrived `after` the decision.
    fn first_byte(&self, decision: uuid::Uuid, after: Duration);
    /// The request is over: close its in-flight accounting. `cached_tokens` is the engine's
    /// `usage.prompt_tokens_details.cached_tokens`, when the response said it.
    fn done(&self, decision: uuid::Uuid, cached_tokens: Option<u32>);
}

/// Largest request body the session buffers to read the model and prompt from.
pub const MAX_BODY: usize = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the request headers.
    Start,
    /// Streamed mode: headers held, body accumulating.
    Collecting,
    /// Decided (or refused); the response path remains.
    Decided,
}

/// One stream's state.
pub struct Session<D: Decide> {
    decide: D,
    streamed: bool,
    /// Responses in FULL_DUPLEX_STREAMED mode: every chunk is sent back.
    response_streamed: bool,
    phase: Phase,
    headers: HeaderMap,
    subset: Option<Vec<String>>,
    body: Vec<u8>,
    decision: Option<(uuid::Uuid, Instant)>,
    saw_first_byte: bool,
    usage: UsageScan,
    closed: bool,
}

/// Finds `"cached_tokens": N` in a response body as its chunks go by, keeping the last one (a
/// streamed response states its usage in its last event). Keeps only a few bytes between chunks,
/// so a key split across two chunks is still found.
#[derive(Debug, Default)]
pub(crate) struct UsageScan {
    tail: Vec<u8>,
    cached: Option<u32>,
}

impl UsageScan {
    const KEY: &'static [u8] = b"\"cached_tokens\"";
    /// Enough for the key, spacing and a 10-digit number.
    const KEEP: usize = 40;

    pub(crate) fn feed(&mut self, chunk: &[u8]) {
        if chunk.is_empty() {
            return;
        }
        let mut window = std::mem::take(&mut self.tail);
        window.extend_from_slice(&chunk[chunk.len().saturating_sub(64 << 10)..]);
        let mut from = 0;
        let mut pending = None;
        while let Some(at) = find(&window[from..], Self::KEY).map(|i| from + i) {
            let mut i = at + Self::KEY.len();
            while i < window.len() && matches!(window[i], b' ' | b'\t' | b'\n' | b'\r' | b':') {
                i += 1;
            }
            let digits = window[i..]
                .iter()
                .take_while(|b| b.is_ascii_digit())
                .count();
            if i + digits == window.len() {
                pending = Some(at); // the number may go on in the next chunk
                break;
            }
            if digits > 0
                && let Ok(n) = std::str::from_utf8(&window[i..i + digits])
                    .unwrap_or("")
                    .parse()
            {
                self.cached = Some(n);
            }
            from = i + digits;
        }
        let keep_from = pending.unwrap_or(window.len().saturating_sub(Self::KEEP));
        self.tail = window[keep_from..].to_vec();
        self.tail.truncate(Self::KEEP);
    }

    pub(crate) fn cached_tokens(&self) -> Option<u32> {
        self.cached
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

impl<D: Decide> Session<D> {
    /// A session; `streamed` is the default request-body mode until Envoy says otherwise.
    pub fn new(decide: D, streamed: bool) -> Self {
        Session {
            decide,
            streamed,
            response_streamed: streamed,
            phase: Phase::Start,
            headers: HeaderMap::new(),
            subset: None,
            body: Vec::new(),
            decision: None,
            saw_first_byte: false,
            usage: UsageScan::default(),
            closed: false,
        }
    }

    /// The responses to one message from Envoy.
    pub fn on_message(&mut self, msg: ProcessingRequest) -> Vec<ProcessingResponse> {
        if let Some(pc) = &msg.protocol_config {
            let duplex = BodySendMode::FullDuplexStreamed as i32;
            self.streamed = pc.request_body_mode == duplex;
            self.response_streamed = pc.response_body_mode == duplex;
        }
        if let Some(hint) = subset_from_metadata(&msg) {
            self.subset = Some(hint);
        }
        let Some(request) = msg.request else {
            return Vec::new();
        };
        match request {
            Request::RequestHeaders(h) => self.on_request_headers(h),
            Request::RequestBody(b) => self.on_request_body(b),
            Request::RequestTrailers(_) => {
                let mut out = Vec::new();
                if self.phase == Phase::Collecting {
                    out = self.decide_now();
                }
                if !matches!(
                    out.last().and_then(|r| r.response.as_ref()),
                    Some(Response::ImmediateResponse(_))
                ) {
                    out.push(respond(Response::RequestTrailers(
                        TrailersResponse::default(),
                    )));
                }
                out
            }
            Request::ResponseHeaders(h) => {
                if h.end_of_stream {
                    self.close();
                }
                vec![respond(Response::ResponseHeaders(
                    HeadersResponse::default(),
                ))]
            }
            Request::ResponseBody(b) => self.on_response_body(b),
            Request::ResponseTrailers(_) => {
                self.close();
                vec![respond(Response::ResponseTrailers(
                    TrailersResponse::default(),
                ))]
            }
        }
    }

    /// The stream ended (Envoy closed it, or the client went away): close the decision.
    pub fn finish(&mut self) {
        self.close();
    }

    fn on_request_headers(&mut self, h: HttpHeaders) -> Vec<ProcessingResponse> {
        self.headers = to_header_map(&h);
        if self.subset.is_none() {
            self.subset = self
                .headers
                .get(SUBSET)
                .and_then(|v| v.to_str().ok())
                .map(crate::openai::split_list);
        }
        if h.end_of_stream {
            // No body (a GET): decide from the headers alone.
            return match self.run_decision() {
                Ok(d) => vec![with_destination(
                    Response::RequestHeaders(headers_mutation(&d)),
                    &d,
                )],
                Err(r) => vec![immediate(&r)],
            };
        }
        if self.streamed {
            self.phase = Phase::Collecting;
            Vec::new()
        } else {
            vec![respond(
                Response::RequestHeaders(HeadersResponse::default()),
            )]
        }
    }

    fn on_request_body(&mut self, b: HttpBody) -> Vec<ProcessingResponse> {
        if self.phase == Phase::Decided {
            // Body chunks after a decision (a refusal already answered) need no further work;
            // in streamed mode they still have to be passed through.
            return if self.streamed {
                vec![streamed(Response::RequestBody, b.body, b.end_of_stream)]
            } else {
                vec![respond(Response::RequestBody(BodyResponse::default()))]
            };
        }
        if self.body.len() + b.body.len() > MAX_BODY {
            self.phase = Phase::Decided;
            return vec![immediate(&Refusal {
                status: 413,
                retry_after: None,
                body: crate::openai::error_body(
                    413,
                    "payload_too_large",
                    &format!(
                        "the request body is larger than {MAX_BODY} bytes, the most the picker reads"
                    ),
                ),
            })];
        }
        self.body.extend_from_slice(&b.body);
        if !b.end_of_stream {
            return if self.streamed {
                Vec::new()
            } else {
                // Buffered mode sends the whole body at once; a partial one is answered and waited on.
                vec![respond(Response::RequestBody(BodyResponse::default()))]
            };
        }
        self.decide_now()
    }

    /// Decides with what has arrived and answers: headers and body in streamed mode, the body in
    /// buffered mode.
    fn decide_now(&mut self) -> Vec<ProcessingResponse> {
        match self.run_decision() {
            Ok(d) if self.streamed => {
                let body = std::mem::take(&mut self.body);
                vec![
                    with_destination(Response::RequestHeaders(headers_mutation(&d)), &d),
                    streamed(Response::RequestBody, body, true),
                ]
            }
            Ok(d) => {
                let common = common_with_destination(&d);
                vec![with_destination(
                    Response::RequestBody(BodyResponse {
                        response: Some(common),
                    }),
                    &d,
                )]
            }
            Err(r) => vec![immediate(&r)],
        }
    }

    fn run_decision(&mut self) -> Result<Decided, Refusal> {
        self.phase = Phase::Decided;
        let d = self
            .decide
            .decide(&self.headers, &self.body, self.subset.clone())?;
        self.decision = Some((d.decision_id, Instant::now()));
        Ok(d)
    }

    fn on_response_body(&mut self, b: HttpBody) -> Vec<ProcessingResponse> {
        if !self.saw_first_byte
            && !b.body.is_empty()
            && let Some((id, at)) = self.decision
        {
            self.saw_first_byte = true;
            self.decide.first_byte(id, at.elapsed());
        }
        if self.decision.is_some() {
            self.usage.feed(&b.body);
        }
        let eos = b.end_of_stream;
        let out = if self.response_streamed {
            streamed(Response::ResponseBody, b.body, eos)
        } else {
            respond(Response::ResponseBody(BodyResponse::default()))
        };
        if eos {
            self.close();
        }
        vec![out]
    }

    fn close(&mut self) {
        if !self.closed
            && let Some((id, _)) = self.decision
        {
            self.closed = true;
            self.decide.done(id, self.usage.cached_tokens());
        }
    }
}

fn respond(response: Response) -> ProcessingResponse {
    ProcessingResponse {
        response: Some(response),
        ..ProcessingResponse::default()
    }
}

fn streamed(
    wrap: fn(BodyResponse) -> Response,
    body: Vec<u8>,
    end_of_stream: bool,
) -> ProcessingResponse {
    respond(wrap(BodyResponse {
        response: Some(CommonResponse {
            body_mutation: Some(BodyMutation {
                mutation: Some(body_mutation::Mutation::StreamedResponse(
                    StreamedBodyResponse {
                        body,
                        end_of_stream,
                        ..StreamedBodyResponse::default()
                    },
                )),
            }),
            ..CommonResponse::default()
        }),
    }))
}

fn set_header(key: &str, value: &str) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.to_string(),
            raw_value: value.as_bytes().to_vec(),
            ..HeaderValue::default()
        }),
        append_action: header_value_option::HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        ..HeaderValueOption::default()
    }
}

fn common_with_destination(d: &Decided) -> CommonResponse {
    CommonResponse {
        header_mutation: Some(HeaderMutation {
            set_headers: vec![
                set_header(DESTINATION, &d.destination),
                set_header("x-inferpick-decision-id", &d.decision_id.to_string()),
            ],
            ..HeaderMutation::default()
        }),
        // Routes may match on the destination header (a fail-open fallback route, say).
        clear_route_cache: true,
        ..CommonResponse::default()
    }
}

fn headers_mutation(d: &Decided) -> HeadersResponse {
    HeadersResponse {
        response: Some(common_with_destination(d)),
    }
}

/// Adds the `envoy.lb` dynamic metadata that ORIGINAL_DST clusters and GIE gateways read.
fn with_destination(response: Response, d: &Decided) -> ProcessingResponse {
    let string = |s: &str| Value {
        kind: Some(Kind::StringValue(s.to_string())),
    };
    let lb = Struct {
        fields: [(DESTINATION.to_string(), string(&d.destination))]
            .into_iter()
            .collect(),
    };
    ProcessingResponse {
        response: Some(response),
        dynamic_metadata: Some(Struct {
            fields: [(
                LB_NAMESPACE.to_string(),
                Value {
                    kind: Some(Kind::StructValue(lb)),
                },
            )]
            .into_iter()
            .collect(),
        }),
        ..ProcessingResponse::default()
    }
}

fn immediate(r: &Refusal) -> ProcessingResponse {
    let mut headers = vec![set_header("content-type", "application/json")];
    if let Some(s) = r.retry_after {
        headers.push(set_header("retry-after", &s.to_string()));
    }
    respond(Response::ImmediateResponse(ImmediateResponse {
        status: Some(HttpStatus {
            code: i32::from(r.status),
        }),
        headers: Some(HeaderMutation {
            set_headers: headers,
            ..HeaderMutation::default()
        }),
        body: r.body.clone(),
        details: "inferpick".to_string(),
        ..ImmediateResponse::default()
    }))
}

/// Envoy's headers as an `http::HeaderMap`; pseudo-headers and invalid ones are skipped.
fn to_header_map(h: &HttpHeaders) -> HeaderMap {
    let mut map = HeaderMap::new();
    for hv in h.headers.iter().flat_map(|m| &m.headers) {
        if hv.key.starts_with(':') {
            continue;
        }
        let value = if hv.raw_value.is_empty() {
            hv.value.as_bytes()
        } else {
            &hv.raw_value
        };
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(hv.key.as_bytes()),
            HttpHeaderValue::from_bytes(value),
        ) {
            map.append(name, value);
        }
    }
    map
}

/// The subset hint in metadata: `envoy.lb.subset_hint` → `x-gateway-destination-endpoint-subset`,
/// a list of strings (or one comma-separated string).
fn subset_from_metadata(msg: &ProcessingRequest) -> Option<Vec<String>> {
    let ns = msg
        .metadata_context
        .as_ref()?
        .filter_metadata
        .get(SUBSET_NAMESPACE)?;
    match ns.fields.get(SUBSET)?.kind.as_ref()? {
        Kind::ListValue(ListValue { values }) => Some(
            values
                .iter()
                .filter_map(|v| match &v.kind {
                    Some(Kind::StringValue(s)) => Some(s.clone()),
                    _ => None,
                })
                .collect(),
        ),
        Kind::StringValue(s) => Some(crate::openai::split_list(s)),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
