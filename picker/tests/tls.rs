//! TLS on both listeners with a certificate from a test CA: HTTPS pushes and picks from a client
//! trusting that CA, a plain-text client refused, ext_proc over TLS; and handshakes that never
//! finish are cut off.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{InProcess, MODEL, exchange, free_port, h2, report, request, start};
use envoy_types::pb::envoy::config::core::v3::{HeaderMap as EnvoyHeaders, HeaderValue};
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_client::ExternalProcessorClient;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_response::Response;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    HttpHeaders, ProcessingRequest, ProcessingResponse,
};
use inferpick_picker::Settings;
use inferpick_picker::tls::TlsFiles;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls_pki_types::ServerName;
use rustls_pki_types::pem::PemObject;
use serde_json::json;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

const REQUEST_TIMEOUT: Duration = Duration::from_millis(300);
const ENDPOINT: &str = "127.0.0.1:18001";

/// A test CA and a server certificate for 127.0.0.1 it signed, written as PEM files.
struct Pki {
    ca_pem: String,
    files: TlsFiles,
}

fn make_pki(name: &str) -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "inferpick test CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let dir: PathBuf =
        std::env::temp_dir().join(format!("inferpick-tls-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let files = TlsFiles {
        cert_file: dir.join("cert.pem"),
        key_file: dir.join("key.pem"),
    };
    std::fs::write(&files.cert_file, cert.pem()).unwrap();
    std::fs::write(&files.key_file, key.serialize_pem()).unwrap();
    Pki {
        ca_pem: ca.pem(),
        files,
    }
}

fn client_config(pki: &Pki, alpn: &[&[u8]]) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(pki.ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config
}

async fn tls_picker(pki: &Pki) -> (InProcess, SocketAddr) {
    let grpc = free_port();
    let picker = start(Settings {
        grpc_listen: Some(grpc),
        tls: Some(pki.files.clone()),
        request_timeout: REQUEST_TIMEOUT,
        max_report_age: Duration::from_secs(60),
        shutdown_delay: Duration::ZERO,
        ..Settings::default()
    })
    .await;
    (picker, grpc)
}

/// One ext_proc exchange over TLS: request headers naming the model, end of stream.
async fn ext_proc_over_tls(pki: &Pki, grpc: SocketAddr) -> ProcessingResponse {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config(pki, &[b"h2"])));
    let tcp = TcpStream::connect(grpc).await.unwrap();
    let tls = connector
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
        .expect("TLS handshake with the gRPC listener");
    let origin: http::Uri = format!("https://{grpc}").parse().unwrap();
    let mut client = ExternalProcessorClient::with_origin(h2(tls).await, origin);
    let headers = ProcessingRequest {
        request: Some(Request::RequestHeaders(HttpHeaders {
            headers: Some(EnvoyHeaders {
                headers: vec![HeaderValue {
                    key: "x-gateway-model-name".into(),
                    raw_value: MODEL.as_bytes().to_vec(),
                    ..HeaderValue::default()
                }],
            }),
            end_of_stream: true,
            ..HttpHeaders::default()
        })),
        ..ProcessingRequest::default()
    };
    let mut responses = client
        .process(tokio_stream::iter(vec![headers]))
        .await
        .expect("ext_proc stream over TLS")
        .into_inner();
    tokio::time::timeout(Duration::from_secs(10), responses.message())
        .await
        .expect("an ext_proc answer within 10 s")
        .unwrap()
        .expect("one response")
}

fn destination(r: &ProcessingResponse) -> Option<String> {
    let Some(Response::RequestHeaders(h)) = r.response.as_ref() else {
        return None;
    };
    let set = &h.response.as_ref()?.header_mutation.as_ref()?.set_headers;
    set.iter().find_map(|h| {
        let h = h.header.as_ref()?;
        (h.key == "x-gateway-destination-endpoint")
            .then(|| String::from_utf8_lossy(&h.raw_value).into_owned())
    })
}

#[tokio::test]
async fn https_and_ext_proc_over_tls_work_with_the_ca_and_plain_text_is_refused() {
    let pki = make_pki("serve");
    let (picker, grpc) = tls_picker(&pki).await;
    let base = format!("https://{}", picker.addr);
    let client = reqwest::Client::builder()
        .tls_backend_preconfigured(client_config(&pki, &[b"h2", b"http/1.1"]))
        .build()
        .unwrap();
    let r = client
        .post(format!("{base}/v1/reports"))
        .json(&report(ENDPOINT, 1, true))
        .send()
        .await
        .expect("an HTTPS push");
    assert_eq!(r.status(), 204, "{}", r.text().await.unwrap());
    let r = client
        .post(format!("{base}/v1/pick"))
        .json(&json!({"model": MODEL}))
        .send()
        .await
        .expect("an HTTPS pick");
    assert_eq!(r.status(), 200);
    let decision: serde_json::Value = r.json().await.unwrap();
    assert_eq!(decision["endpoint"], ENDPOINT);

    // Plain HTTP to the TLS port: no HTTP response, and the table is untouched.
    let plain = exchange(picker.addr, request("GET", "/v1/endpoints", &[], b"")).await;
    assert!(plain.is_none(), "plain HTTP got an answer: {plain:?}");
    assert!(
        reqwest::Client::builder()
            .tls_backend_preconfigured(client_config(&pki, &[b"http/1.1"]))
            .build()
            .unwrap()
            .get(format!("http://{}/healthz", picker.addr))
            .send()
            .await
            .is_err()
    );
    // A client that does not trust the CA cannot connect.
    let other = make_pki("other");
    let untrusting = reqwest::Client::builder()
        .tls_backend_preconfigured(client_config(&other, &[b"http/1.1"]))
        .build()
        .unwrap();
    assert!(
        untrusting
            .get(format!("{base}/healthz"))
            .send()
            .await
            .is_err()
    );

    let answer = ext_proc_over_tls(&pki, grpc).await;
    assert_eq!(
        destination(&answer).as_deref(),
        Some(ENDPOINT),
        "{answer:?}"
    );
}

/// Waits until the server closes `stream`; how long that took, or `None` within 5 s.
async fn time_to_close(mut stream: TcpStream) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 512];
    loop {
        match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => {}
            Err(_) => return None,
        }
    }
}

#[tokio::test]
async fn handshakes_that_never_finish_are_cut_off_after_the_request_timeout() {
    let pki = make_pki("stall");
    let (tls_picker, tls_grpc) = tls_picker(&pki).await;
    let plain_grpc = free_port();
    let plain = start(Settings {
        grpc_listen: Some(plain_grpc),
        request_timeout: REQUEST_TIMEOUT,
        shutdown_delay: Duration::ZERO,
        ..Settings::default()
    })
    .await;
    // Silent clients on the TLS listeners, and a half-sent HTTP/2 preface on the plain gRPC one.
    let mut stalled = vec![
        TcpStream::connect(tls_picker.addr).await.unwrap(),
        TcpStream::connect(tls_grpc).await.unwrap(),
    ];
    let mut half = TcpStream::connect(plain_grpc).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut half, b"PRI * HTTP/2.0\r\n")
        .await
        .unwrap();
    stalled.push(half);
    for (i, s) in stalled.into_iter().enumerate() {
        let took = time_to_close(s)
            .await
            .unwrap_or_else(|| panic!("connection {i} still open after 5 s"));
        assert!(
            took < REQUEST_TIMEOUT * 10,
            "connection {i} closed after {took:?}"
        );
    }
    drop(plain);
}
