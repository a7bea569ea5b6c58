//! The Gateway API Inference Extension's endpoint-picker protocol over Envoy ext_proc (gRPC on
//! `--grpc-listen`), with the gRPC health service beside it.
//!
//! [`session`] holds the protocol (both request-body modes, the response path); this module
//! connects it to the picker: decisions through the same code as `/v1/authz`, and the end of each
//! stream closes its decision in the table exactly.

pub mod session;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::{
    ExternalProcessor, ExternalProcessorServer,
};
use envoy_types::pb::envoy::service::ext_proc::v3::{ProcessingRequest, ProcessingResponse};
use futures::Stream;
use http::HeaderMap;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::error::ApiError;
use crate::state::{AppState, Scope};
use crate::{front, openai};
use session::{Decide, Decided, Refusal, Session};

/// The pick request for one ext_proc stream: the OpenAI body and gateway headers read as
/// `/v1/authz` and the built-in gateway read them, with the subset hint from Envoy's metadata
/// (when it sent one) in place of the header's.
pub fn pick_request(
    headers: &HeaderMap,
    body: &[u8],
    subset: Option<Vec<String>>,
) -> Result<inferpick_schema::PickRequest, ApiError> {
    let mut request = openai::pick_request(headers, body)?;
    if subset.is_some() {
        request.candidates = subset;
    }
    Ok(request)
}

/// The picker as a [`Decide`]: the same decisions as `/v1/authz`.
#[derive(Clone)]
pub struct PickerDecide {
    state: AppState,
}

impl Decide for PickerDecide {
    fn decide(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        subset: Option<Vec<String>>,
    ) -> Result<Decided, Refusal> {
        let refusal = |e: ApiError| Refusal {
            status: e.status().as_u16(),
            retry_after: e.retry_after().map(|d| d.as_secs().max(1)),
            body: openai::refusal_body(&e),
        };
        front::authorize(&self.state, headers, Scope::Pick).map_err(refusal)?;
        let request = pick_request(headers, body, subset)
            .map_err(|e| refusal(front::refuse_invalid(&self.state, e)))?;
        let pick = front::decide(&self.state, &request, false).map_err(refusal)?;
        let extra = self.state.settings().extproc_fallbacks as usize;
        let mut destination = pick.endpoint.to_string();
        for f in pick.fallbacks.iter().take(extra) {
            destination.push(',');
            destination.push_str(f);
        }
        Ok(Decided {
            destination,
            decision_id: pick.decision_id,
        })
    }

    fn first_byte(&self, _decision: uuid::Uuid, after: Duration) {
        self.state.metrics().first_byte(after);
    }

    fn done(&self, decision: uuid::Uuid, cached_tokens: Option<u32>) {
        front::done(&self.state, decision, "extproc", cached_tokens);
    }
}

/// The ext_proc service.
#[derive(Clone)]
pub struct ExtProc {
    decide: PickerDecide,
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<ProcessingResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ExternalProcessor for ExtProc {
    type ProcessStream = ResponseStream;

    async fn process(
        &self,
        request: Request<Streaming<ProcessingRequest>>,
    ) -> Result<Response<Self::ProcessStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        // FULL_DUPLEX_STREAMED is what the protocol requires; Envoy's protocol_config overrides it.
        let mut session = Session::new(self.decide.clone(), true);
        tokio::spawn(async move {
            loop {
                match inbound.message().await {
                    Ok(Some(msg)) => {
                        for response in session.on_message(msg) {
                            if tx.send(Ok(response)).await.is_err() {
                                session.finish();
                                return;
                            }
                        }
                    }
                    Ok(None) => break,
                    Err(status) => {
                        tracing::debug!("ext_proc stream ended: {status}");
                        break;
                    }
                }
            }
            session.finish();
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// The gRPC health service and the handle that flips it to NOT_SERVING when the picker drains.
pub fn health() -> (
    tonic_health::server::HealthReporter,
    tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
) {
    tonic_health::server::health_reporter()
}

/// Marks ext_proc and the server as a whole NOT_SERVING (readiness drops before a shutdown).
pub async fn set_not_serving(health: &tonic_health::server::HealthReporter) {
    health
        .set_not_serving::<ExternalProcessorServer<ExtProc>>()
        .await;
    health
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;
}

/// Serves ext_proc and gRPC health on `listener` until `shutdown` resolves, then waits for the
/// streams in flight. `tls` is the server configuration when the listener serves TLS; a client
/// whose TLS and HTTP/2 handshakes do not finish within `handshake_timeout` is disconnected.
pub async fn serve<H: tonic_health::pb::health_server::Health>(
    state: AppState,
    listener: tokio::net::TcpListener,
    tls: Option<std::sync::Arc<rustls::ServerConfig>>,
    handshake_timeout: Duration,
    (health, health_service): (
        tonic_health::server::HealthReporter,
        tonic_health::pb::health_server::HealthServer<H>,
    ),
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    health
        .set_serving::<ExternalProcessorServer<ExtProc>>()
        .await;
    let max_connections = state.settings().max_connections;
    let service = ExternalProcessorServer::new(ExtProc {
        decide: PickerDecide { state },
    });
    let addr: Option<SocketAddr> = listener.local_addr().ok();
    tracing::info!(
        ?addr,
        tls = tls.is_some(),
        "ext_proc (endpoint-picker protocol) listening"
    );
    // The accept loop stops with the server: tonic stops polling it on `shutdown`.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let shutdown = async move {
        shutdown.await;
        let _ = stop.send(true);
    };
    let incoming = crate::server::accept_grpc(
        listener,
        tls.map(tokio_rustls::TlsAcceptor::from),
        handshake_timeout,
        max_connections,
        stopped,
    );
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(handshake_timeout))
        .add_service(health_service)
        .add_service(service)
        .serve_with_incoming_shutdown(ReceiverStream::new(incoming), shutdown)
        .await
}

/// How often an idle ext_proc connection is pinged, so a vanished peer is noticed while its
/// stream (which lives as long as the proxied response) has no deadline of its own.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
