//! The protocol, message by message, against a fake decision maker.

use std::sync::{Arc, Mutex};

use envoy_types::pb::envoy::config::core::v3::{HeaderMap as EnvoyHeaders, HeaderValue, Metadata};
use envoy_types::pb::envoy::service::ext_proc::v3::ProtocolConfiguration;

use super::*;

/// What the fake was asked: headers, body, subset.
type Asked = Arc<Mutex<Vec<(HeaderMap, Vec<u8>, Option<Vec<String>>)>>>;

#[derive(Clone, Default)]
struct Fake {
    refuse: Option<Refusal>,
    seen: Asked,
    done: Arc<Mutex<Vec<uuid::Uuid>>>,
    first: Arc<Mutex<u32>>,
}

const ID: uuid::Uuid = uuid::Uuid::from_u128(7);

impl Decide for Fake {
    fn decide(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        subset: Option<Vec<String>>,
    ) -> Result<Decided, Refusal> {
        self.seen
            .lock()
            .unwrap()
            .push((headers.clone(), body.to_vec(), subset));
        match &self.refuse {
            Some(r) => Err(r.clone()),
            None => Ok(Decided {
                destination: "10.0.0.7:8000".into(),
                decision_id: ID,
            }),
        }
    }
    fn first_byte(&self, _: uuid::Uuid, _: Duration) {
        *self.first.lock().unwrap() += 1;
    }
    fn done(&self, id: uuid::Uuid, _cached_tokens: Option<u32>) {
        self.done.lock().unwrap().push(id);
    }
}

fn headers(pairs: &[(&str, &str)], end_of_stream: bool) -> ProcessingRequest {
    ProcessingRequest {
        request: Some(Request::RequestHeaders(HttpHeaders {
            headers: Some(EnvoyHeaders {
                headers: pairs
                    .iter()
                    .map(|(k, v)| HeaderValue {
                        key: k.to_string(),
                        raw_value: v.as_bytes().to_vec(),
                        ..HeaderValue::default()
                    })
                    .collect(),
            }),
            end_of_stream,
            ..HttpHeaders::default()
        })),
        ..ProcessingRequest::default()
    }
}

fn with_mode(mut msg: ProcessingRequest, mode: BodySendMode) -> ProcessingRequest {
    msg.protocol_config = Some(ProtocolConfiguration {
        request_body_mode: mode as i32,
        response_body_mode: mode as i32,
        ..ProtocolConfiguration::default()
    });
    msg
}

fn body(kind: fn(HttpBody) -> Request, bytes: &[u8], end_of_stream: bool) -> ProcessingRequest {
    ProcessingRequest {
        request: Some(kind(HttpBody {
            body: bytes.to_vec(),
            end_of_stream,
            ..HttpBody::default()
        })),
        ..ProcessingRequest::default()
    }
}

fn destination_of(r: &ProcessingResponse) -> Option<String> {
    let common = match r.response.as_ref()? {
        Response::RequestHeaders(h) => h.response.as_ref()?,
        Response::RequestBody(b) => b.response.as_ref()?,
        _ => return None,
    };
    let set = &common.header_mutation.as_ref()?.set_headers;
    let h = set
        .iter()
        .find(|h| h.header.as_ref().unwrap().key == DESTINATION)?;
    let header = String::from_utf8(h.header.as_ref()?.raw_value.clone()).ok()?;
    let lb = &r.dynamic_metadata.as_ref()?.fields.get(LB_NAMESPACE)?.kind;
    let Some(Kind::StructValue(lb)) = lb else {
        return None;
    };
    let Some(Kind::StringValue(meta)) = &lb.fields.get(DESTINATION)?.kind else {
        return None;
    };
    assert_eq!(
        &header, meta,
        "header and envoy.lb metadata must carry the same value"
    );
    Some(header)
}

fn streamed_body(r: &ProcessingResponse) -> Option<(Vec<u8>, bool)> {
    let common = match r.response.as_ref()? {
        Response::RequestBody(b) | Response::ResponseBody(b) => b.response.as_ref()?,
        _ => return None,
    };
    match common.body_mutation.as_ref()?.mutation.as_ref()? {
        body_mutation::Mutation::StreamedResponse(s) => Some((s.body.clone(), s.end_of_stream)),
        _ => None,
    }
}

const BODY: &[u8] = br#"{"model":"m","prompt":"hello"}"#;

#[test]
fn streamed_mode_holds_the_headers_until_the_body_is_complete() {
    let fake = Fake::default();
    let mut s = Session::new(fake.clone(), false);
    let first = with_mode(
        headers(&[("x-gateway-model-name", "m")], false),
        BodySendMode::FullDuplexStreamed,
    );
    assert!(
        s.on_message(first).is_empty(),
        "headers answered before the body"
    );
    assert!(
        s.on_message(body(Request::RequestBody, &BODY[..10], false))
            .is_empty()
    );
    let out = s.on_message(body(Request::RequestBody, &BODY[10..], true));
    assert_eq!(out.len(), 2);
    assert_eq!(destination_of(&out[0]).as_deref(), Some("10.0.0.7:8000"));
    assert!(matches!(out[0].response, Some(Response::RequestHeaders(_))));
    assert_eq!(
        streamed_body(&out[1]),
        Some((BODY.to_vec(), true)),
        "the body goes on unchanged"
    );
    let seen = fake.seen.lock().unwrap();
    assert_eq!(seen[0].1, BODY);
    assert_eq!(seen[0].0["x-gateway-model-name"], "m");
}

#[test]
fn buffered_mode_answers_headers_then_sets_the_destination_on_the_body() {
    let fake = Fake::default();
    let mut s = Session::new(fake.clone(), true);
    let out = s.on_message(with_mode(headers(&[], false), BodySendMode::Buffered));
    assert_eq!(out.len(), 1);
    assert!(destination_of(&out[0]).is_none());
    let out = s.on_message(body(Request::RequestBody, BODY, true));
    assert_eq!(out.len(), 1);
    assert!(matches!(out[0].response, Some(Response::RequestBody(_))));
    assert_eq!(destination_of(&out[0]).as_deref(), Some("10.0.0.7:8000"));
}

#[test]
fn a_request_without_body_is_decided_on_its_headers() {
    let fake = Fake::default();
    let mut s = Session::new(fake.clone(), true);
    let out = s.on_message(headers(&[], true));
    assert_eq!(destination_of(&out[0]).as_deref(), Some("10.0.0.7:8000"));
}

#[test]
fn refusals_are_immediate_responses_with_status_and_retry_after() {
    let fake = Fake {
        refuse: Some(Refusal {
            status: 429,
            retry_after: Some(2),
            body: crate::openai::error_body(429, "shed", "saturated"),
        }),
        ..Fake::default()
    };
    let mut s = Session::new(fake.clone(), true);
    s.on_message(headers(&[], false));
    let out = s.on_message(body(Request::RequestBody, BODY, true));
    let Some(Response::ImmediateResponse(r)) = &out[0].response else {
        panic!("{out:?}")
    };
    assert_eq!(r.status.as_ref().unwrap().code, 429);
    let set = &r.headers.as_ref().unwrap().set_headers;
    assert!(set.iter().any(|h| {
        let h = h.header.as_ref().unwrap();
        h.key == "retry-after" && h.raw_value == b"2"
    }));
    assert!(String::from_utf8_lossy(&r.body).contains("\"shed\""));
    s.finish();
    assert!(
        fake.done.lock().unwrap().is_empty(),
        "a refused request has no decision to close"
    );
}

#[test]
fn the_subset_hint_comes_from_metadata_or_the_header() {
    let fake = Fake::default();
    let mut s = Session::new(fake.clone(), true);
    let mut msg = headers(&[], true);
    let list = Value {
        kind: Some(Kind::ListValue(ListValue {
            values: vec![Value {
                kind: Some(Kind::StringValue("10.0.0.1:8000".into())),
            }],
        })),
    };
    msg.metadata_context = Some(Metadata {
        filter_metadata: [(
            SUBSET_NAMESPACE.to_string(),
            Struct {
                fields: [(SUBSET.to_string(), list)].into_iter().collect(),
            },
        )]
        .into_iter()
        .collect(),
        ..Metadata::default()
    });
    s.on_message(msg);
    let mut s2 = Session::new(fake.clone(), true);
    s2.on_message(headers(&[(SUBSET, "10.0.0.2:8000, 10.0.0.3:8000")], true));
    let seen = fake.seen.lock().unwrap();
    assert_eq!(
        seen[0].2.as_deref(),
        Some(&["10.0.0.1:8000".to_string()][..])
    );
    assert_eq!(
        seen[1].2.as_deref(),
        Some(&["10.0.0.2:8000".to_string(), "10.0.0.3:8000".to_string()][..])
    );
}

#[test]
fn the_response_path_is_echoed_and_closes_the_decision_once() {
    let fake = Fake::default();
    let mut s = Session::new(fake.clone(), true);
    s.on_message(headers(&[], true));
    let out =
        s.on_message(headers(&[(":status", "200")], false).map_request(Request::ResponseHeaders));
    assert!(matches!(
        out[0].response,
        Some(Response::ResponseHeaders(_))
    ));
    let out = s.on_message(body(Request::ResponseBody, b"data: 1\n\n", false));
    assert_eq!(
        streamed_body(&out[0]),
        Some((b"data: 1\n\n".to_vec(), false))
    );
    assert_eq!(*fake.first.lock().unwrap(), 1);
    s.on_message(body(Request::ResponseBody, b"data: [DONE]\n\n", true));
    s.finish();
    assert_eq!(*fake.done.lock().unwrap(), vec![ID]);
    assert_eq!(
        *fake.first.lock().unwrap(),
        1,
        "only the first chunk is the first token"
    );
}

#[test]
fn a_stream_cut_short_still_closes_the_decision() {
    let fake = Fake::default();
    let mut s = Session::new(fake.clone(), true);
    s.on_message(headers(&[], true));
    s.finish();
    assert_eq!(*fake.done.lock().unwrap(), vec![ID]);
}

#[test]
fn oversized_bodies_are_refused_with_413() {
    let fake = Fake::default();
    let mut s = Session::new(fake.clone(), true);
    s.on_message(headers(&[], false));
    let big = vec![b'x'; MAX_BODY + 1];
    let out = s.on_message(body(Request::RequestBody, &big, false));
    let Some(Response::ImmediateResponse(r)) = &out[0].response else {
        panic!()
    };
    assert_eq!(r.status.as_ref().unwrap().code, 413);
    let error: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(error["error"]["code"], "payload_too_large", "{error}");
    assert!(fake.seen.lock().unwrap().is_empty());
}

trait MapRequest {
    fn map_request(self, f: fn(HttpHeaders) -> Request) -> Self;
}

impl MapRequest for ProcessingRequest {
    fn map_request(mut self, f: fn(HttpHeaders) -> Request) -> Self {
        if let Some(Request::RequestHeaders(h)) = self.request.take() {
            self.request = Some(f(h));
        }
        self
    }
}

#[test]
fn streamed_responses_to_buffered_requests_are_not_echoed() {
    let fake = Fake::default();
    let mut s = Session::new(fake.clone(), true);
    let mut first = headers(&[], false);
    first.protocol_config = Some(ProtocolConfiguration {
        request_body_mode: BodySendMode::Buffered as i32,
        response_body_mode: BodySendMode::Streamed as i32,
        ..ProtocolConfiguration::default()
    });
    s.on_message(first);
    s.on_message(body(Request::RequestBody, BODY, true));
    let out = s.on_message(body(Request::ResponseBody, b"data: 1\n\n", true));
    assert!(
        streamed_body(&out[0]).is_none(),
        "STREAMED mode takes a plain answer, not a streamed body"
    );
    assert!(matches!(out[0].response, Some(Response::ResponseBody(_))));
    assert_eq!(*fake.done.lock().unwrap(), vec![ID]);
}

#[test]
fn usage_cached_tokens_are_found_across_chunks_and_the_last_one_wins() {
    let mut scan = UsageScan::default();
    scan.feed(b"data: {\"choices\":[]}\n\n");
    assert_eq!(scan.cached_tokens(), None);
    // Split inside the key, then inside the number.
    scan.feed(b"data: {\"usage\":{\"prompt_tokens_details\":{\"cach");
    scan.feed(b"ed_tokens\": 12");
    assert_eq!(scan.cached_tokens(), None, "the number may go on");
    scan.feed(b"80}}}\n\n");
    assert_eq!(scan.cached_tokens(), Some(1280));
    scan.feed(b"{\"cached_tokens\":7,\"x\":1}");
    assert_eq!(scan.cached_tokens(), Some(7));
    // Garbage and a huge body keep the state bounded.
    scan.feed(&vec![b'9'; 1 << 20]);
    assert!(scan.tail.len() <= UsageScan::KEEP);
    scan.feed(b"\"cached_tokens\": null");
    assert_eq!(scan.cached_tokens(), Some(7));
}
