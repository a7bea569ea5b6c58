use http::HeaderValue;
use serde_json::json;

use super::*;

fn parse(body: Value) -> PickRequest {
    pick_request(&HeaderMap::new(), body.to_string().as_bytes()).unwrap()
}

fn refused(body: Value) -> String {
    match pick_request(&HeaderMap::new(), body.to_string().as_bytes()) {
        Err(ApiError::InvalidRequest(m)) => m,
        other => panic!("{body} was not refused as invalid: {other:?}"),
    }
}

fn message(role: &str, content: Option<&str>) -> ChatMessage {
    ChatMessage {
        role: role.into(),
        content: content.map(str::to_string),
    }
}

#[test]
fn chat_string_content_is_each_message_and_the_prompt_text() {
    let r = parse(json!({"model": "m", "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hi"}]}));
    assert_eq!(r.model.as_deref(), Some("m"));
    assert_eq!(
        r.messages.unwrap(),
        [
            message("system", Some("You are terse.")),
            message("user", Some("Hi"))
        ]
    );
    assert_eq!(r.prompt.as_deref(), Some("You are terse.\nHi\n"));
    assert_eq!(r.prompt_token_ids, None);
}

#[test]
fn chat_content_parts_give_their_texts_and_skip_other_parts() {
    let r = parse(json!({"messages": [{"role": "user", "content": [
        {"type": "text", "text": "Describe"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        {"type": "text", "text": "briefly."}]}]}));
    assert_eq!(
        r.messages.unwrap(),
        [message("user", Some("Describe\nbriefly."))]
    );
    assert_eq!(r.prompt.as_deref(), Some("Describe\nbriefly.\n"));
    // Only an image: the message has no text.
    let r = parse(json!({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]}));
    assert_eq!(r.messages.unwrap(), [message("user", None)]);
    assert_eq!(r.prompt, None);
}

#[test]
fn a_tool_call_turn_without_content_is_a_message_without_text() {
    let r = parse(json!({"messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function",
            "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "18C"}]}));
    assert_eq!(
        r.messages.unwrap(),
        [
            message("user", Some("Weather in Paris?")),
            message("assistant", None),
            message("tool", Some("18C")),
        ]
    );
    assert_eq!(r.prompt.as_deref(), Some("Weather in Paris?\n18C\n"));
}

#[test]
fn a_string_prompt_is_the_prompt_text() {
    let r = parse(json!({"model": "m", "prompt": "Once upon", "max_tokens": 7}));
    assert_eq!(r.prompt.as_deref(), Some("Once upon"));
    assert_eq!(r.max_tokens, Some(7));
    assert_eq!((r.messages, r.prompt_token_ids), (None, None));
}

#[test]
fn a_batch_of_prompts_is_routed_by_the_first_and_asks_output_for_each() {
    let r = parse(json!({"prompt": ["first prompt", "second"], "max_tokens": 10}));
    assert_eq!(r.prompt.as_deref(), Some("first prompt"));
    assert_eq!(r.max_tokens, Some(20));
}

#[test]
fn token_id_prompts_go_to_prompt_token_ids() {
    let r = parse(json!({"prompt": [101, 2023, 7], "max_tokens": 4}));
    assert_eq!(r.prompt_token_ids, Some(vec![101, 2023, 7]));
    assert_eq!((r.prompt, r.max_tokens), (None, Some(4)));

    let r = parse(json!({"prompt": [[1, 2, 3], [1, 2, 4], [9]], "max_tokens": 4}));
    assert_eq!(r.prompt_token_ids, Some(vec![1, 2, 3]));
    assert_eq!((r.prompt, r.max_tokens), (None, Some(12)));
}

#[test]
fn max_completion_tokens_wins_over_max_tokens_and_n_multiplies_the_output() {
    let r = parse(json!({"prompt": "p", "max_tokens": 100, "max_completion_tokens": 64}));
    assert_eq!(r.max_tokens, Some(64));
    let r = parse(json!({"messages": [], "max_completion_tokens": 64}));
    assert_eq!(r.max_tokens, Some(64));
    let r = parse(json!({"prompt": "p", "max_tokens": 100, "max_completion_tokens": null}));
    assert_eq!(r.max_tokens, Some(100));
    let r = parse(json!({"prompt": "p", "max_tokens": 100, "n": 3}));
    assert_eq!(r.max_tokens, Some(300));
    let r = parse(json!({"prompt": ["a", "b"], "max_tokens": 100, "n": 2}));
    assert_eq!(r.max_tokens, Some(400));
    let r = parse(json!({"prompt": "p", "max_tokens": u32::MAX, "n": 2}));
    assert_eq!(r.max_tokens, Some(u32::MAX));
    // Without a length there is nothing to multiply.
    assert_eq!(parse(json!({"prompt": "p", "n": 4})).max_tokens, None);
}

#[test]
fn an_adapter_named_in_model_is_the_model_asked_for() {
    let r = parse(json!({"model": "sql-lora", "prompt": "SELECT"}));
    assert_eq!(r.model.as_deref(), Some("sql-lora"));
}

#[test]
fn gateway_headers_fill_the_rest_and_the_model_header_wins() {
    let mut headers = HeaderMap::new();
    for (k, v) in [
        (MODEL_HEADER, "header-model"),
        (OBJECTIVE_HEADER, "chat"),
        (PRIORITY_HEADER, " -1 "),
        (SESSION_HEADER, "user-42"),
        (SUBSET_HEADER, "10.0.0.1:8000, ,10.0.0.2:8000"),
    ] {
        headers.insert(k, HeaderValue::from_static(v));
    }
    let r = pick_request(&headers, br#"{"model":"body-model","prompt":"hi"}"#).unwrap();
    assert_eq!(r.model.as_deref(), Some("header-model"));
    assert_eq!(r.objective.as_deref(), Some("chat"));
    assert_eq!(r.priority, Some(-1));
    assert_eq!(r.session.as_deref(), Some("user-42"));
    assert_eq!(
        r.candidates.unwrap(),
        ["10.0.0.1:8000".to_string(), "10.0.0.2:8000".to_string()]
    );
    assert_eq!(r.prompt.as_deref(), Some("hi"));

    let mut bad = HeaderMap::new();
    bad.insert(PRIORITY_HEADER, HeaderValue::from_static("high"));
    let Err(ApiError::InvalidRequest(m)) = pick_request(&bad, b"") else {
        panic!("a non-integer priority was accepted");
    };
    assert!(m.contains(PRIORITY_HEADER) && m.contains("high"), "{m}");
}

#[test]
fn a_body_that_is_not_a_json_object_contributes_nothing() {
    let mut headers = HeaderMap::new();
    headers.insert(MODEL_HEADER, HeaderValue::from_static("m"));
    for body in [&b""[..], b"not json", b"[1,2]", b"\"text\""] {
        let r = pick_request(&headers, body).unwrap();
        assert_eq!(
            r,
            PickRequest {
                model: Some("m".into()),
                ..PickRequest::default()
            },
            "{}",
            String::from_utf8_lossy(body)
        );
    }
}

#[test]
fn misshapen_fields_are_refused_by_name() {
    let cases = [
        (json!({"model": 7}), "model"),
        (json!({"messages": "hi"}), "messages"),
        (json!({"messages": ["hi"]}), "messages[0]"),
        (
            json!({"messages": [{"role": 1, "content": "x"}]}),
            "messages[0].role",
        ),
        (
            json!({"messages": [{"role": "user", "content": 5}]}),
            "messages[0].content",
        ),
        (
            json!({"messages": [{"role": "user", "content": ["x"]}]}),
            "messages[0].content[0]",
        ),
        (
            json!({"messages": [{"role": "user", "content": [{"type": "text"}]}]}),
            "messages[0].content[0].text",
        ),
        (json!({"prompt": 5}), "prompt"),
        (json!({"prompt": []}), "prompt"),
        (json!({"prompt": ["a", 1]}), "prompt[1]"),
        (json!({"prompt": [1, -2]}), "prompt[1]"),
        (json!({"prompt": [1, 4294967296_u64]}), "prompt[1]"),
        (json!({"prompt": [[1], []]}), "prompt[1]"),
        (json!({"prompt": [[1], 2]}), "prompt[1]"),
        (json!({"prompt": [{"a": 1}]}), "prompt"),
        (json!({"max_tokens": -1}), "max_tokens"),
        (
            json!({"max_completion_tokens": "64"}),
            "max_completion_tokens",
        ),
        (json!({"n": 0}), "n"),
        (json!({"n": 1.5}), "n"),
    ];
    for (body, field) in cases {
        let m = refused(body.clone());
        assert!(m.starts_with(&format!("{field}:")), "{body}: {m}");
    }
}

#[test]
fn refusals_are_in_openai_error_shape() {
    let body = error_body(404, "unknown_model", "model \"x\" is not served");
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        v,
        json!({"error": {"message": "model \"x\" is not served", "type": "not_found_error",
            "param": null, "code": "unknown_model"}})
    );
    assert_eq!(error_type(429), "rate_limit_error");
    assert_eq!(error_type(503), "server_error");
    assert_eq!(error_type(400), "invalid_request_error");
    assert_eq!(error_type(401), "authentication_error");
    let e = ApiError::PayloadTooLarge { limit: 10 };
    let v: Value = serde_json::from_slice(&refusal_body(&e)).unwrap();
    assert_eq!(v["error"]["code"], "payload_too_large");
    assert_eq!(v["error"]["message"], e.to_string());
}
