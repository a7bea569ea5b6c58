//! A real agent pushing to a real picker over HTTPS: the picker serves a certificate that a test
//! CA signed (`--tls-cert`, `--tls-key`), the agent trusts that CA (`--ca-file`) and its reports
//! arrive; an agent given another CA refuses the picker's certificate and pushes nothing.

use std::path::{Path, PathBuf};
use std::time::Duration;

use inferpick_tests::procs::{self, AgentProc, EngineProc, PickerProc};
use inferpick_tests::synth::series_value;
use inferpick_tests::{ScratchDir, http_client, wait_until_async};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

const INTERVAL: Duration = Duration::from_millis(100);

/// A new CA; returns it and its PEM written to `<dir>/<name>.pem`.
fn make_ca(dir: &Path, name: &str) -> (CertifiedIssuer<'static, KeyPair>, PathBuf) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, format!("inferpick test CA {name}"));
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
    let path = dir.join(format!("{name}.pem"));
    std::fs::write(&path, ca.pem()).unwrap();
    (ca, path)
}

/// A server certificate for 127.0.0.1 signed by `ca`; returns the cert and key files.
fn server_cert(dir: &Path, ca: &CertifiedIssuer<'static, KeyPair>) -> (PathBuf, PathBuf) {
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .unwrap()
        .signed_by(&key, ca)
        .unwrap();
    let (cert_file, key_file) = (dir.join("picker-cert.pem"), dir.join("picker-key.pem"));
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    (cert_file, key_file)
}

/// The agent's push counter for `target` and `result` (`ok`, `error`), from its own `/metrics`.
async fn pushes(http: &reqwest::Client, agent: &AgentProc, target: &str, result: &str) -> f64 {
    let text = procs::metrics(http, agent.listen).await.unwrap_or_default();
    series_value(
        &text,
        &format!("inferpick_agent_pushes_total{{target=\"{target}\",result=\"{result}\"}}"),
    )
    .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_pushes_to_a_tls_picker_with_its_ca_file() {
    let dir = ScratchDir::new("tls").unwrap();
    let (ca, ca_file) = make_ca(dir.path(), "right-ca");
    let (_, wrong_ca_file) = make_ca(dir.path(), "wrong-ca");
    let (cert, key) = server_cert(dir.path(), &ca);
    let picker = PickerProc::start(
        dir.path(),
        "picker",
        "127.0.0.1:0",
        &[
            format!("--tls-cert={}", cert.display()),
            format!("--tls-key={}", key.display()),
        ],
    )
    .await
    .unwrap();
    let url = format!("https://{}", picker.addr);
    let target = format!("{url}/v1/reports");
    let engine = EngineProc::start(dir.path(), "engine", "tls/model")
        .await
        .unwrap();
    let endpoint = engine.addr.to_string();
    let trusting = AgentProc::start_with(
        dir.path(),
        "agent-right-ca",
        &format!("http://{endpoint}/metrics"),
        &endpoint,
        std::slice::from_ref(&url),
        INTERVAL,
        &[format!("--ca-file={}", ca_file.display())],
    )
    .await
    .unwrap();
    // A second agent for the same engine, trusting another CA: every push must fail.
    let distrusting = AgentProc::start_with(
        dir.path(),
        "agent-wrong-ca",
        &format!("http://{endpoint}/metrics"),
        &endpoint,
        std::slice::from_ref(&url),
        INTERVAL,
        &[format!("--ca-file={}", wrong_ca_file.display())],
    )
    .await
    .unwrap();

    // The picker's table, read over HTTPS with the right CA, has the endpoint ready.
    let https = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .tls_certs_only([reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap()])
        .build()
        .unwrap();
    wait_until_async(
        Duration::from_secs(10),
        "the endpoint ready at the TLS picker",
        || async {
            let table: serde_json::Value = https
                .get(format!("{url}/v1/endpoints"))
                .send()
                .await
                .map_err(|e| format!("{e:#}"))?
                .json()
                .await
                .map_err(|e| format!("{e:#}"))?;
            let entry = procs::entry(&table, &endpoint).ok_or("not in the table")?;
            if entry["state"] == "ready" {
                Ok(())
            } else {
                Err(format!("state {}", entry["state"]))
            }
        },
    )
    .await
    .unwrap();

    let http = http_client(Duration::from_secs(5));
    wait_until_async(
        Duration::from_secs(10),
        "pushes from both agents to be counted",
        || async {
            let ok = pushes(&http, &trusting, &target, "ok").await;
            let refused = pushes(&http, &distrusting, &target, "error").await;
            if ok >= 5.0 && refused >= 1.0 {
                Ok(())
            } else {
                Err(format!(
                    "right CA: {ok} pushes ok; wrong CA: {refused} failed"
                ))
            }
        },
    )
    .await
    .unwrap();
    assert_eq!(
        pushes(&http, &trusting, &target, "error").await,
        0.0,
        "the agent trusting the picker's CA had a failed push"
    );
    assert_eq!(
        pushes(&http, &distrusting, &target, "ok").await,
        0.0,
        "the agent trusting another CA pushed to the picker"
    );
    let log = distrusting.log();
    let failure = log
        .lines()
        .find(|l| l.contains("push failed"))
        .unwrap_or_else(|| panic!("no failed push logged:\n{log}"));
    println!("agent with the wrong CA: {failure}");
    assert!(
        failure.contains("certificate") || failure.contains("UnknownIssuer"),
        "the failed push should name the certificate problem: {failure}"
    );
    // A plain-HTTP client cannot speak to the TLS listener at all.
    let plain = http
        .get(format!("http://{}/healthz", picker.addr))
        .send()
        .await;
    assert!(
        plain.map_or(true, |r| !r.status().is_success()),
        "the TLS listener answered plain HTTP"
    );
}
