//! The kubelet pod-resources API (`/v1.PodResourcesLister/List` on a Unix socket): which
//! `nvidia.com/gpu` devices the kubelet gave this pod. NVML reports host PIDs, so inside a
//! container this is the robust way to know a pod's GPUs (dcgm-exporter does the same).
//!
//! No crate wraps this API; the few messages it needs are described here with prost derives, and
//! later fields of the real protocol are ignored by protobuf's rules.

use std::path::{Path, PathBuf};
use std::time::Duration;

use http::uri::PathAndQuery;
use hyper_util::rt::TokioIo;
use tonic::transport::Endpoint;

/// The resource name of NVIDIA GPUs in the device plugin.
pub const NVIDIA_GPU: &str = "nvidia.com/gpu";

/// `v1.ListPodResourcesRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ListPodResourcesRequest {}

/// `v1.ListPodResourcesResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ListPodResourcesResponse {
    /// Every pod on the node with its devices.
    #[prost(message, repeated, tag = "1")]
    pub pod_resources: Vec<PodResources>,
}

/// `v1.PodResources`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PodResources {
    /// Pod name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Pod namespace.
    #[prost(string, tag = "2")]
    pub namespace: String,
    /// Its containers.
    #[prost(message, repeated, tag = "3")]
    pub containers: Vec<ContainerResources>,
}

/// `v1.ContainerResources`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ContainerResources {
    /// Container name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Devices assigned to it.
    #[prost(message, repeated, tag = "2")]
    pub devices: Vec<ContainerDevices>,
}

/// `v1.ContainerDevices`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ContainerDevices {
    /// Resource name (`nvidia.com/gpu`).
    #[prost(string, tag = "1")]
    pub resource_name: String,
    /// Device plugin IDs (GPU UUIDs for NVIDIA).
    #[prost(string, repeated, tag = "2")]
    pub device_ids: Vec<String>,
}

/// Why the pod-resources API could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum PodResourcesError {
    /// The socket did not take a gRPC connection.
    #[error("cannot connect: {0}")]
    Connect(#[source] tonic::transport::Error),
    /// The call failed.
    #[error("List failed: {0}")]
    Call(#[source] tonic::Status),
    /// The kubelet did not answer in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// The `nvidia.com/gpu` device IDs of pod `namespace/pod`, over all its containers.
pub async fn gpus_of_pod(
    socket: &Path,
    namespace: &str,
    pod: &str,
) -> Result<Vec<String>, PodResourcesError> {
    let timeout = Duration::from_secs(5);
    let response = tokio::time::timeout(timeout, list(socket.to_path_buf()))
        .await
        .map_err(|_| PodResourcesError::Timeout(timeout))??;
    Ok(response
        .pod_resources
        .iter()
        .filter(|p| p.namespace == namespace && p.name == pod)
        .flat_map(|p| &p.containers)
        .flat_map(|c| &c.devices)
        .filter(|d| d.resource_name == NVIDIA_GPU)
        .flat_map(|d| d.device_ids.iter().cloned())
        .collect())
}

async fn list(socket: PathBuf) -> Result<ListPodResourcesResponse, PodResourcesError> {
    // The URI is required by the API but unused: the connector always dials the socket.
    let channel = Endpoint::from_static("http://kubelet.local")
        .connect_with_connector(tower::service_fn(move |_: http::Uri| {
            let socket = socket.clone();
            async move {
                tokio::net::UnixStream::connect(socket)
                    .await
                    .map(TokioIo::new)
            }
        }))
        .await
        .map_err(PodResourcesError::Connect)?;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| PodResourcesError::Call(tonic::Status::unavailable(e.to_string())))?;
    let codec =
        tonic_prost::ProstCodec::<ListPodResourcesRequest, ListPodResourcesResponse>::default();
    let response = grpc
        .unary(
            tonic::Request::new(ListPodResourcesRequest {}),
            PathAndQuery::from_static("/v1.PodResourcesLister/List"),
            codec,
        )
        .await
        .map_err(PodResourcesError::Call)?;
    Ok(response.into_inner())
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::future::Future;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use super::*;

    /// A fake kubelet lister serving one fixed answer on a Unix socket.
    #[derive(Clone)]
    struct FakeLister(ListPodResourcesResponse);

    impl tonic::server::NamedService for FakeLister {
        const NAME: &'static str = "v1.PodResourcesLister";
    }

    struct ListCall(ListPodResourcesResponse);

    impl tonic::server::UnaryService<ListPodResourcesRequest> for ListCall {
        type Response = ListPodResourcesResponse;
        type Future = std::future::Ready<Result<tonic::Response<Self::Response>, tonic::Status>>;

        fn call(&mut self, _: tonic::Request<ListPodResourcesRequest>) -> Self::Future {
            std::future::ready(Ok(tonic::Response::new(self.0.clone())))
        }
    }

    impl tower::Service<http::Request<tonic::body::Body>> for FakeLister {
        type Response = http::Response<tonic::body::Body>;
        type Error = Infallible;
        type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
            let answer = self.0.clone();
            Box::pin(async move {
                assert_eq!(req.uri().path(), "/v1.PodResourcesLister/List");
                let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
                Ok(grpc.unary(ListCall(answer), req).await)
            })
        }
    }

    fn devices(resource: &str, ids: &[&str]) -> ContainerDevices {
        ContainerDevices {
            resource_name: resource.into(),
            device_ids: ids.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[tokio::test]
    async fn lists_only_this_pods_gpus() {
        let dir = std::env::temp_dir().join(format!("inferpick-podres-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("kubelet.sock");
        let _ = std::fs::remove_file(&socket);
        let listener = tokio::net::UnixListener::bind(&socket).unwrap();
        let answer = ListPodResourcesResponse {
            pod_resources: vec![
                PodResources {
                    name: "vllm-0".into(),
                    namespace: "llm".into(),
                    containers: vec![
                        ContainerResources {
                            name: "vllm".into(),
                            devices: vec![
                                devices(NVIDIA_GPU, &["GPU-aaa", "GPU-bbb"]),
                                devices("example.com/nic", &["nic0"]),
                            ],
                        },
                        ContainerResources {
                            name: "inferpick-agent".into(),
                            devices: vec![],
                        },
                    ],
                },
                PodResources {
                    name: "vllm-0".into(),
                    namespace: "other".into(),
                    containers: vec![ContainerResources {
                        name: "vllm".into(),
                        devices: vec![devices(NVIDIA_GPU, &["GPU-ccc"])],
                    }],
                },
            ],
        };
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(FakeLister(answer))
                .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener)),
        );
        let ids = gpus_of_pod(&socket, "llm", "vllm-0").await.unwrap();
        assert_eq!(ids, ["GPU-aaa", "GPU-bbb"]);
        assert!(
            gpus_of_pod(&socket, "llm", "absent")
                .await
                .unwrap()
                .is_empty()
        );
        server.abort();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_missing_socket_is_a_connect_error() {
        let err = gpus_of_pod(Path::new("/nonexistent/kubelet.sock"), "ns", "p")
            .await
            .unwrap_err();
        assert!(matches!(err, PodResourcesError::Connect(_)), "{err}");
    }
}
