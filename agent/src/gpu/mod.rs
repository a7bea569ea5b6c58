//! The pod's GPUs: which ones ([`GpuSpec`], the kubelet pod-resources API) and what NVML says of
//! them (or, for emulated fleets, a URL: [`StateUrlSource`]), behind [`GpuSource`] so that
//! everything above it is tested without a GPU.

mod nvml;
pub mod pod_resources;
pub mod reading;
mod state_url;

use std::path::Path;

use inferpick_schema::Gpu;

pub use nvml::NvmlSource;
pub use state_url::StateUrlSource;

/// Reads the current state of the selected GPUs. Blocking: call it off the async runtime.
pub trait GpuSource: Send + Sync {
    /// One sample of every selected GPU.
    fn read(&self) -> Vec<Gpu>;
}

/// One GPU named on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GpuId {
    /// NVML index on the node.
    Index(u32),
    /// NVML UUID (`GPU-…` or `MIG-…`).
    Uuid(String),
}

/// `--gpu`: which GPUs belong to this pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GpuSpec {
    /// The pod-resources API if its socket exists, else every visible GPU.
    Auto,
    /// Report no GPUs and do not load NVML.
    None,
    /// Every GPU NVML sees.
    All,
    /// These GPUs.
    List(Vec<GpuId>),
}

impl std::str::FromStr for GpuSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "auto" => Ok(GpuSpec::Auto),
            "none" => Ok(GpuSpec::None),
            "all" => Ok(GpuSpec::All),
            "" => Err("empty: expected auto, none, all, or GPU UUIDs or indexes".into()),
            list => list
                .split(',')
                .map(|item| {
                    let item = item.trim();
                    if let Ok(i) = item.parse::<u32>() {
                        Ok(GpuId::Index(i))
                    } else if item.starts_with("GPU-") || item.starts_with("MIG-") {
                        Ok(GpuId::Uuid(item.to_string()))
                    } else {
                        Err(format!(
                            "{item:?} is neither a GPU index nor a UUID (GPU-… or MIG-…); \
                             expected auto, none, all, or a comma list of those"
                        ))
                    }
                })
                .collect::<Result<_, _>>()
                .map(GpuSpec::List),
        }
    }
}

/// Kubelet device IDs as NVML UUIDs: time-sliced GPUs are advertised as `GPU-…::N` replicas.
pub fn device_ids_to_uuids(ids: &[String]) -> Vec<GpuId> {
    let mut out: Vec<GpuId> = Vec::new();
    for id in ids {
        let uuid = id.split("::").next().unwrap_or(id).to_string();
        let id = GpuId::Uuid(uuid);
        if !out.contains(&id) {
            out.push(id);
        }
    }
    out
}

/// The source the configuration asks for: `--gpu-state-url` if given, else NVML as [`open`]
/// resolves `--gpu`.
pub async fn open_configured(config: &crate::config::Config) -> Option<Box<dyn GpuSource>> {
    if let Some(url) = &config.gpu_state_url {
        tracing::info!(%url, "GPUs read from a GPU state URL, not NVML");
        return Some(Box::new(StateUrlSource::new(
            url.clone(),
            config.gpu_state_timeout,
        )));
    }
    open(
        &config.gpu,
        &config.pod_resources_socket,
        config.namespace.as_deref(),
        config.pod.as_deref(),
    )
    .await
}

/// Resolves `spec` into a source, or `None` when no GPU is to be (or can be) read. Logs one line
/// saying what was chosen, or why GPU fields are omitted.
pub async fn open(
    spec: &GpuSpec,
    socket: &Path,
    namespace: Option<&str>,
    pod: Option<&str>,
) -> Option<Box<dyn GpuSource>> {
    let selection = match spec {
        GpuSpec::None => return None,
        GpuSpec::All => None,
        GpuSpec::List(ids) => Some(ids.clone()),
        GpuSpec::Auto if socket.exists() => match (namespace, pod) {
            (Some(ns), Some(pod)) => match pod_resources::gpus_of_pod(socket, ns, pod).await {
                Ok(ids) => {
                    tracing::info!(pod, namespace = ns, gpus = ?ids, "GPUs from the kubelet pod-resources API");
                    Some(device_ids_to_uuids(&ids))
                }
                Err(e) => {
                    tracing::warn!(
                        "pod-resources API at {} failed: {e}; reporting every visible GPU",
                        socket.display()
                    );
                    None
                }
            },
            _ => {
                tracing::warn!(
                    "pod-resources socket exists but POD_NAME/POD_NAMESPACE are unset; reporting every visible GPU"
                );
                None
            }
        },
        GpuSpec::Auto => None,
    };
    if selection.as_ref().is_some_and(Vec::is_empty) {
        tracing::info!(
            "the kubelet assigned this pod no nvidia.com/gpu devices; GPU fields omitted"
        );
        return None;
    }
    let opened = tokio::task::spawn_blocking(move || NvmlSource::open(selection)).await;
    match opened {
        Ok(Ok(source)) => Some(Box::new(source)),
        Ok(Err(e)) => {
            tracing::warn!("NVML not available: {e}; GPU fields omitted");
            None
        }
        Err(e) => {
            tracing::warn!("NVML not available: {e}; GPU fields omitted");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse() {
        assert_eq!("auto".parse::<GpuSpec>().unwrap(), GpuSpec::Auto);
        assert_eq!("none".parse::<GpuSpec>().unwrap(), GpuSpec::None);
        assert_eq!(
            "0, GPU-ab,MIG-cd".parse::<GpuSpec>().unwrap(),
            GpuSpec::List(vec![
                GpuId::Index(0),
                GpuId::Uuid("GPU-ab".into()),
                GpuId::Uuid("MIG-cd".into())
            ])
        );
        let err = "0,gpu0".parse::<GpuSpec>().unwrap_err();
        assert!(err.contains("\"gpu0\""), "{err}");
    }

    #[test]
    fn time_sliced_replicas_map_to_one_gpu() {
        let ids = vec!["GPU-a::0".to_string(), "GPU-a::1".into(), "GPU-b".into()];
        assert_eq!(
            device_ids_to_uuids(&ids),
            vec![GpuId::Uuid("GPU-a".into()), GpuId::Uuid("GPU-b".into())]
        );
    }
}
