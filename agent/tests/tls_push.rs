//! Pushes to `https://` pickers: a tokio-rustls test picker whose certificate an rcgen CA signed.
//! With that CA in `--ca-file` the reports arrive; a certificate from another CA is refused, said
//! so in the log, and an http picker beside it gets every report regardless.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

const VLLM: &str = "vllm:num_requests_waiting{model_name=\"m\"} 2\nvllm:num_requests_running{model_name=\"m\"} 1\n";

/// A test CA and one server certificate it signed.
struct Pki {
    ca_pem: String,
    cert: CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
}

fn pki(ca_name: &str, server_names: &[&str]) -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, ca_name);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let names: Vec<String> = server_names.iter().map(|s| s.to_string()).collect();
    let cert = CertificateParams::new(names)
        .unwrap()
        .signed_by(&server_key, &ca)
        .unwrap();
    Pki {
        ca_pem: ca.pem(),
        cert: cert.der().clone(),
        key: PrivatePkcs8KeyDer::from(server_key.serialize_der()),
    }
}

/// A picker serving HTTPS with `pki`'s certificate; records reports and failed handshakes.
struct TlsPicker {
    addr: SocketAddr,
    received: Received,
    failed_handshakes: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl TlsPicker {
    async fn start(pki: &Pki) -> Self {
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![pki.cert.clone()],
            PrivateKeyDer::Pkcs8(pki.key.clone_key()),
        )
        .unwrap();
        // Like a real picker: offers both; the agent's pushes settle on HTTP/1.1.
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let received: Received = Arc::new(Mutex::new(Vec::new()));
        let failed_handshakes = Arc::new(AtomicUsize::new(0));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = picker_app(received.clone(), false);
        let failed = failed_handshakes.clone();
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let (acceptor, app, failed) = (acceptor.clone(), app.clone(), failed.clone());
                connections.spawn(async move {
                    let Ok(tls) = acceptor.accept(stream).await else {
                        failed.fetch_add(1, Ordering::Relaxed);
                        return;
                    };
                    let service = TowerToHyperService::new(app);
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        TlsPicker {
            addr,
            received,
            failed_handshakes,
            task,
        }
    }

    fn count(&self) -> usize {
        self.received.lock().unwrap().len()
    }
}

impl Drop for TlsPicker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn write_ca(name: &str, pem: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("inferpick-tls-push-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, pem).unwrap();
    path
}

/// An agent scraping `engine` every 50 ms and pushing to `pickers`, trusting only `ca`.
async fn pushing_with_ca(engine: &FakeEngine, pickers: &str, ca: &std::path::Path) -> Agent {
    let ca = ca.to_str().unwrap();
    let args = ["--interval", "50ms", "--picker", pickers, "--ca-file", ca];
    Agent::start(&engine.url(), &args).await
}

async fn pushes_total(agent: &Agent, target: &str, result: &str) -> f64 {
    let text = reqwest::get(format!("http://{}/metrics", agent.addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let series = format!("inferpick_agent_pushes_total{{target=\"{target}\",result=\"{result}\"}}");
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

#[tokio::test]
async fn https_push_with_the_ca_file_arrives_beside_an_http_target() {
    let engine = FakeEngine::start(Behavior::Serve(VLLM.into())).await;
    let pki = pki("inferpick test CA", &["127.0.0.1", "localhost"]);
    let secure = TlsPicker::start(&pki).await;
    let plain = FakePicker::start().await;
    let ca = write_ca("good-ca.pem", &pki.ca_pem);
    let pickers = format!("https://127.0.0.1:{},{}", secure.addr.port(), plain.url());
    let agent = pushing_with_ca(&engine, &pickers, &ca).await;
    wait_until(Duration::from_secs(10), "5 reports at each picker", || {
        secure.count() >= 5 && plain.count() >= 5
    })
    .await;
    assert_eq!(secure.failed_handshakes.load(Ordering::Relaxed), 0);
    let target = format!("https://127.0.0.1:{}/v1/reports", secure.addr.port());
    assert!(pushes_total(&agent, &target, "ok").await >= 5.0);
    agent.stop().await;
}

#[tokio::test]
async fn dns_https_checks_the_certificate_against_the_name() {
    let engine = FakeEngine::start(Behavior::Serve(VLLM.into())).await;
    // Only the name: reaching an address must still verify against "localhost".
    let pki = pki("inferpick test CA", &["localhost"]);
    let secure = TlsPicker::start(&pki).await;
    let ca = write_ca("dns-ca.pem", &pki.ca_pem);
    let picker = format!("dns+https://localhost:{}", secure.addr.port());
    let agent = pushing_with_ca(&engine, &picker, &ca).await;
    wait_until(Duration::from_secs(10), "5 reports over dns+https", || {
        secure.count() >= 5
    })
    .await;
    agent.stop().await;
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused_and_the_http_target_is_unaffected() {
    let engine = FakeEngine::start(Behavior::Serve(VLLM.into())).await;
    let trusted = pki("the CA the agent trusts", &["127.0.0.1"]);
    let other = pki("some other CA", &["127.0.0.1"]);
    let impostor = TlsPicker::start(&other).await;
    let plain = FakePicker::start().await;
    let ca = write_ca("trusted-ca.pem", &trusted.ca_pem);
    let pickers = format!("https://127.0.0.1:{},{}", impostor.addr.port(), plain.url());
    let agent = pushing_with_ca(&engine, &pickers, &ca).await;
    wait_until(Duration::from_secs(10), "refused handshakes", || {
        impostor.failed_handshakes.load(Ordering::Relaxed) >= 2
    })
    .await;
    // The http target keeps the agent's schedule: at 50 ms, 20 reports take about a second.
    let from = plain.count();
    wait_until(Duration::from_secs(10), "20 more reports over http", || {
        plain.count() >= from + 20
    })
    .await;
    let received = plain.received.lock().unwrap().clone();
    let gaps: Vec<Duration> = received[from..]
        .windows(2)
        .map(|w| w[1].2 - w[0].2)
        .collect();
    assert!(
        gaps.iter().all(|g| *g < Duration::from_millis(500)),
        "http pushes stalled beside the refused https target: {gaps:?}"
    );
    assert_eq!(impostor.count(), 0, "a report reached the impostor");
    let target = format!("https://127.0.0.1:{}/v1/reports", impostor.addr.port());
    assert!(pushes_total(&agent, &target, "error").await >= 2.0);
    assert_eq!(pushes_total(&agent, &target, "ok").await, 0.0);
    agent.stop().await;
}

#[tokio::test]
async fn without_a_ca_file_a_private_ca_is_not_trusted() {
    let engine = FakeEngine::start(Behavior::Serve(VLLM.into())).await;
    let pki = pki("inferpick test CA", &["127.0.0.1"]);
    let secure = TlsPicker::start(&pki).await;
    let picker = format!("https://127.0.0.1:{}", secure.addr.port());
    let agent = Agent::start(&engine.url(), &["--interval", "50ms", "--picker", &picker]).await;
    wait_until(Duration::from_secs(10), "refused handshakes", || {
        secure.failed_handshakes.load(Ordering::Relaxed) >= 2
    })
    .await;
    assert_eq!(secure.count(), 0);
    agent.stop().await;
}

#[tokio::test]
async fn a_refused_certificate_is_logged_as_such() {
    let engine = FakeEngine::start(Behavior::Serve(VLLM.into())).await;
    let trusted = pki("the CA the agent trusts", &["127.0.0.1"]);
    let other = pki("some other CA", &["127.0.0.1"]);
    let impostor = TlsPicker::start(&other).await;
    let ca = write_ca("logged-ca.pem", &trusted.ca_pem);
    let impostor_url = format!("https://127.0.0.1:{}", impostor.addr.port());
    let ca = ca.to_str().unwrap();
    let extra = [
        "--interval",
        "50ms",
        "--picker",
        &impostor_url,
        "--ca-file",
        ca,
    ];
    let mut child = AgentProcess::spawn(&engine.url(), &extra, Stdio::piped());
    wait_until(Duration::from_secs(20), "5 refused handshakes", || {
        impostor.failed_handshakes.load(Ordering::Relaxed) >= 5
    })
    .await;
    child.0.kill().unwrap();
    let stderr = child.0.stderr.take().unwrap();
    let lines: Vec<String> = tokio::task::spawn_blocking(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .collect()
    })
    .await
    .unwrap();
    let failures: Vec<&String> = lines.iter().filter(|l| l.contains("push failed")).collect();
    // Rate-limited: the first failure is logged, not every one of the five.
    assert_eq!(failures.len(), 1, "{lines:#?}");
    assert!(
        failures[0].contains("certificate") && failures[0].contains("--ca-file"),
        "{}",
        failures[0]
    );
}
