//! Starting real nginx with a config from `deploy/gateways/nginx/`: the `auth_request` configs
//! (headers only) or the njs configs (the picker sees the body), fail-open or fail-closed.
#![allow(dead_code)]

use std::net::SocketAddr;

use inferpick_tests::tool::{NGINX, nginx_njs_module};
use inferpick_tests::{ChildGuard, free_port};

use crate::common::{Failure, Setup, command, gateway_file, render, wait_for_port};

/// How nginx asks the picker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Asks {
    /// `auth_request` (`nginx-fail-*.conf`): the gateway headers only.
    AuthRequest,
    /// njs (`nginx-njs-fail-*.conf`, `inferpick.js`): headers and body.
    Njs,
}

impl Asks {
    /// The config's file name, and the files it includes or imports.
    fn files(self, failure: Failure) -> (String, &'static [&'static str]) {
        let variant = match failure {
            Failure::Open => "fail-open",
            Failure::Closed => "fail-closed",
        };
        match self {
            Asks::AuthRequest => (
                format!("nginx-{variant}.conf"),
                &["inferpick-locations.conf"],
            ),
            Asks::Njs => (
                format!("nginx-njs-{variant}.conf"),
                &["inferpick-njs-locations.conf", "inferpick.js"],
            ),
        }
    }
}

/// Starts nginx in front of `s`'s fleet, filling every placeholder the config has, and waits until
/// it listens. `None` when nginx (or, for njs, its module) is not installed: the test is skipped,
/// or fails with INFERPICK_REQUIRE_E2E=1.
pub async fn start_nginx(
    s: &Setup,
    test: &str,
    asks: Asks,
    failure: Failure,
) -> Option<(ChildGuard, SocketAddr)> {
    let nginx = NGINX.or_skip(test)?;
    let njs_module = match asks {
        Asks::Njs => nginx_njs_module(test)?.display().to_string(),
        Asks::AuthRequest => String::new(),
    };
    let prefix = s.dir.path().to_path_buf();
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port().unwrap())
        .parse()
        .unwrap();
    let fallback: String = s
        .endpoints()
        .iter()
        .map(|e| format!("server {e}; "))
        .collect();
    let (file, includes) = asks.files(failure);
    let template = gateway_file(&format!("nginx/{file}"));
    let vars: Vec<(&str, String)> = [
        ("NJS_MODULE", njs_module),
        ("PREFIX", prefix.display().to_string()),
        ("LISTEN", listen.to_string()),
        ("PICKER", s.picker.addr.to_string()),
        ("FALLBACK_SERVERS", fallback),
    ]
    .into_iter()
    .filter(|(k, _)| template.contains(&format!("{{{{{k}}}}}")))
    .collect();
    let conf = s.dir.write(&file, render(&template, &vars)).unwrap();
    for include in includes {
        s.dir
            .write(include, gateway_file(&format!("nginx/{include}")))
            .unwrap();
    }
    let mut child = ChildGuard::spawn(
        "nginx",
        command(
            &nginx,
            &[
                "-p",
                prefix.to_str().unwrap(),
                "-c",
                conf.to_str().unwrap(),
                "-g",
                "daemon off;",
            ],
        ),
        &prefix,
    )
    .unwrap();
    wait_for_port(listen, &mut child).await;
    Some((child, listen))
}

/// The `error` object of an OpenAI error response (`{"error": {"message", "type", "param",
/// "code"}}`, `application/json`), which LLM clients show; panics on any other shape.
pub async fn openai_error(resp: reqwest::Response) -> serde_json::Value {
    let status = resp.status();
    let content_type = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string());
    let body = resp.text().await.unwrap();
    assert_eq!(
        content_type.as_deref(),
        Some("application/json"),
        "{status}: {body}"
    );
    openai_error_body(&body)
}

/// The `error` object of an OpenAI error body (`param` included, as OpenAI sends it); panics on
/// any other shape.
/// `error` (OpenAI's `error` object) refuses `model` as unknown, naming it in the message.
pub fn assert_unknown_model(error: &serde_json::Value, model: &str) {
    assert_eq!(error["code"], "unknown_model", "{error}");
    assert_eq!(error["type"], "not_found_error", "{error}");
    let quoted = format!("{model:?}");
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|m| m.contains(&quoted)),
        "{error}"
    );
}

pub fn openai_error_body(body: &str) -> serde_json::Value {
    let json: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"));
    let error = &json["error"];
    assert!(error.get("param").is_some(), "error.param missing: {body}");
    for field in ["message", "type", "code"] {
        assert!(
            error[field].as_str().is_some_and(|v| !v.is_empty()),
            "error.{field} missing: {body}"
        );
    }
    error.clone()
}

/// With the picker stopped, a fail-closed nginx answers 503 with Retry-After as an OpenAI error
/// (`no_ready_endpoint`). The picker stays stopped.
pub async fn picker_down_is_an_openai_503(s: &mut Setup, gateway: SocketAddr) {
    s.picker.kill().await;
    let resp = s
        .http
        .post(format!("http://{gateway}/v1/completions"))
        .json(&serde_json::json!({"model": crate::common::MODEL, "prompt": "hi", "max_tokens": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert!(
        resp.headers().contains_key("retry-after"),
        "503 without Retry-After"
    );
    let error = openai_error(resp).await;
    assert_eq!(error["code"], "no_ready_endpoint", "{error}");
    assert_eq!(error["type"], "server_error", "{error}");
}
