//! The `openai` Python SDK, as an LLM client uses it, through every gateway path in front of a
//! fleet: the lab's built-in gateway, Envoy with ext_proc, Envoy with ext_authz and nginx with njs
//! (nginx's `auth_request` cannot show the picker a model named only in the body). A chat request
//! with content parts and a completion with a token-id prompt are served; an unknown model raises
//! `NotFoundError` carrying the picker's message, and a shed request `RateLimitError` with the
//! message and `Retry-After` — what the SDK can show only when the refusal is in OpenAI's shape.

#[path = "gateways/common.rs"]
mod common;
#[path = "gateways/nginx.rs"]
mod nginx;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use inferpick_lab::demo::gateway::{self, Gateway, Route};
use inferpick_tests::repo_root;
use inferpick_tests::tool::skip;
use serde_json::{Value, json};

/// One call through the SDK: `argv` is the base URL, the model, the case and extra headers as
/// JSON. Prints what the SDK returned or raised, as JSON.
const CLIENT: &str = r#"
import json, sys
import openai

base_url, model, case, headers = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
# No retries: a 429 is to be seen, not waited out.
client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=60)
try:
    if case == "chat_parts":
        r = client.chat.completions.create(
            model=model,
            max_completion_tokens=4,
            messages=[
                {"role": "system", "content": [{"type": "text", "text": "Answer briefly."}]},
                {"role": "user", "content": [
                    {"type": "text", "text": "Where is"},
                    {"type": "text", "text": "New York?"},
                ]},
            ],
            extra_headers=headers,
        )
        out = {"ok": True, "text": r.choices[0].message.content}
    else:
        prompt = [101, 2073, 2003, 2047, 2259, 1029] if case == "token_ids" else "Where is New York?"
        r = client.completions.create(model=model, prompt=prompt, max_tokens=4, extra_headers=headers)
        out = {"ok": True, "text": r.choices[0].text}
except openai.APIStatusError as e:
    out = {
        "ok": False,
        "class": type(e).__name__,
        "status": e.status_code,
        "message": e.message,
        "body": e.body,
        "code": e.code,
        "retry_after": e.response.headers.get("retry-after"),
        "content_type": e.response.headers.get("content-type"),
    }
print(json.dumps(out))
"#;

/// A Python with the `openai` package: `INFERPICK_PYTHON`, else `<repo>/.venv/bin/python3`.
fn openai_python(test: &str) -> Option<PathBuf> {
    let python = std::env::var_os("INFERPICK_PYTHON")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".venv/bin/python3"));
    let has_openai = Command::new(&python)
        .args(["-c", "import openai"])
        .output()
        .is_ok_and(|o| o.status.success());
    if has_openai {
        return Some(python);
    }
    skip(
        test,
        &format!(
            "{} cannot import openai (INFERPICK_PYTHON, .venv/bin/python3)",
            python.display()
        ),
        "python3 -m venv .venv && .venv/bin/pip install openai",
    );
    None
}

/// Runs one [`CLIENT`] case against the gateway at `addr`.
async fn sdk(python: &Path, addr: SocketAddr, model: &str, case: &str, headers: Value) -> Value {
    let mut command = tokio::process::Command::new(python);
    command.args([
        "-c",
        CLIENT,
        &format!("http://{addr}/v1"),
        model,
        case,
        &headers.to_string(),
    ]);
    let out = command.output().await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the openai client failed on {case}: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

/// What the picker itself answers `/v1/pick` for `model`: its refusal message.
async fn picker_message(s: &Setup, model: &str) -> String {
    let r: Value = s
        .http
        .post(format!("http://{}/v1/pick", s.picker.addr))
        .json(&json!({"model": model}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    r["message"].as_str().unwrap().to_string()
}

/// The SDK's view of every case through the gateway at `addr`.
async fn an_openai_client_sees_answers_and_refusals(s: &Setup, python: &Path, addr: SocketAddr) {
    for case in ["chat_parts", "token_ids"] {
        let r = sdk(python, addr, MODEL, case, json!({})).await;
        assert_eq!(r["ok"], true, "{case}: {r}");
        assert!(
            r["text"].as_str().is_some_and(|t| !t.is_empty()),
            "{case}: {r}"
        );
    }

    let unknown = "no-such-model";
    let expected = picker_message(s, unknown).await;
    let r = sdk(python, addr, unknown, "completion", json!({})).await;
    assert_eq!(r["class"], "NotFoundError", "{r}");
    assert_eq!(r["status"], 404, "{r}");
    assert_eq!(r["code"], "unknown_model", "{r}");
    assert_eq!(r["body"]["message"], expected.as_str(), "{r}");
    assert!(
        r["message"].as_str().unwrap().contains(unknown),
        "the SDK's message does not name the model: {r}"
    );
    assert!(
        r["content_type"]
            .as_str()
            .is_some_and(|t| t.starts_with("application/json")),
        "{r}"
    );

    let background = saturate(s).await;
    let r = sdk(
        python,
        addr,
        MODEL,
        "completion",
        json!({"x-inferpick-priority": "-1"}),
    )
    .await;
    for b in background {
        b.abort();
    }
    assert_eq!(r["class"], "RateLimitError", "{r}");
    assert_eq!(r["status"], 429, "{r}");
    assert_eq!(r["code"], "shed", "{r}");
    let message = r["body"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("saturated") && message.contains("sheddable"),
        "the picker's shed message did not reach the client: {r}"
    );
    let retry = r["retry_after"]
        .as_str()
        .and_then(|v| v.parse::<u64>().ok());
    assert!(
        retry.is_some_and(|s| s >= 1),
        "429 without Retry-After: {r}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_client_through_the_built_in_gateway() {
    let Some(python) = openai_python("openai_client_through_the_built_in_gateway") else {
        return;
    };
    let s = setup().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let route = Route::Picker(format!("http://{}", s.picker.addr));
    let gw = gateway::spawn(Gateway::new(route), listener).unwrap();
    an_openai_client_sees_answers_and_refusals(&s, &python, gw.addr).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_client_through_envoy_ext_proc() {
    let test = "openai_client_through_envoy_ext_proc";
    let Some(python) = openai_python(test) else {
        return;
    };
    let s = setup().await;
    let Some((_envoy, addr)) = start_envoy(&s, test, "envoy-ext-proc", Failure::Closed).await
    else {
        return;
    };
    an_openai_client_sees_answers_and_refusals(&s, &python, addr).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_client_through_envoy_ext_authz() {
    let test = "openai_client_through_envoy_ext_authz";
    let Some(python) = openai_python(test) else {
        return;
    };
    let s = setup().await;
    let Some((_envoy, addr)) = start_envoy(&s, test, "envoy-ext-authz", Failure::Closed).await
    else {
        return;
    };
    an_openai_client_sees_answers_and_refusals(&s, &python, addr).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_client_through_nginx_njs() {
    let test = "openai_client_through_nginx_njs";
    let Some(python) = openai_python(test) else {
        return;
    };
    let s = setup().await;
    let Some((_nginx, addr)) =
        nginx::start_nginx(&s, test, nginx::Asks::Njs, Failure::Closed).await
    else {
        return;
    };
    an_openai_client_sees_answers_and_refusals(&s, &python, addr).await;
}
