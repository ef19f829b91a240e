//! A minimal CRI client: drives a container runtime's pod sandbox calls over its Unix socket
//! exactly as kubelet does (CRI v1), so tests can exercise a runtime's CNI integration without
//! crictl (not packaged in Debian 12).
//!
//! Every command prints one JSON document on stdout: `run-pod` prints `{"pod_sandbox_id": ..}`,
//! `pod-status` prints the runtime's `PodSandboxStatusResponse`, `status` its `StatusResponse`,
//! `stop-pod`/`remove-pod`/`update-runtime-config` print `{}`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use hyper_util::rt::TokioIo;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    LinuxPodSandboxConfig, LinuxSandboxSecurityContext, NamespaceMode, NamespaceOption,
    NetworkConfig, PodSandboxConfig, PodSandboxMetadata, PodSandboxStatusRequest,
    RemovePodSandboxRequest, RunPodSandboxRequest, RuntimeConfig, StatusRequest,
    StopPodSandboxRequest, UpdateRuntimeConfigRequest, VersionRequest,
};
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

#[derive(Parser)]
#[command(about = "Minimal CRI v1 client for pod sandboxes")]
struct Cli {
    /// The runtime's CRI socket, e.g. /run/containerd/containerd.sock.
    #[arg(long)]
    socket: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// `Version`: the runtime's name and CRI API version.
    Version,
    /// `RunPodSandbox` with a pod network namespace, as kubelet sends it for a non-hostNetwork pod.
    RunPod {
        /// Pod name (`K8S_POD_NAME` in the CNI_ARGS the runtime sends).
        #[arg(long)]
        name: String,
        /// Pod namespace (`K8S_POD_NAMESPACE`).
        #[arg(long)]
        namespace: String,
        /// Pod UID (`K8S_POD_UID`).
        #[arg(long)]
        uid: String,
        /// Directory the runtime may write container logs to.
        #[arg(long)]
        log_directory: Option<String>,
    },
    /// `PodSandboxStatus` (verbose), printed as JSON.
    PodStatus { id: String },
    /// `StopPodSandbox`: the runtime tears the pod network down (CNI DEL).
    StopPod { id: String },
    /// `RemovePodSandbox`.
    RemovePod { id: String },
    /// `Status`: the runtime's conditions (`RuntimeReady`, `NetworkReady`), printed as JSON.
    Status,
    /// `UpdateRuntimeConfig` with the node's pod CIDR, as kubelet sends it once the Node has
    /// `spec.podCIDRs` (containerd renders its CNI `conf_template` from it).
    UpdateRuntimeConfig {
        /// The pod CIDR; dual-stack nodes give both, comma-separated, as kubelet does
        /// (`10.244.7.0/24,fd00:10:244:7::/64`).
        #[arg(long)]
        pod_cidr: String,
    },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let mut client = RuntimeServiceClient::new(connect(cli.socket.clone()).await?);
    let output = match cli.command {
        Command::Version => {
            let response = client
                .version(VersionRequest::default())
                .await
                .context("Version")?;
            serde_json::to_value(response.into_inner())?
        }
        Command::RunPod {
            name,
            namespace,
            uid,
            log_directory,
        } => {
            let config = PodSandboxConfig {
                metadata: Some(PodSandboxMetadata {
                    name: name.clone(),
                    uid,
                    namespace,
                    attempt: 0,
                }),
                hostname: name,
                log_directory: log_directory.unwrap_or_default(),
                linux: Some(LinuxPodSandboxConfig {
                    security_context: Some(LinuxSandboxSecurityContext {
                        namespace_options: Some(NamespaceOption {
                            network: NamespaceMode::Pod.into(),
                            pid: NamespaceMode::Container.into(),
                            ipc: NamespaceMode::Pod.into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            };
            let response = client
                .run_pod_sandbox(RunPodSandboxRequest {
                    config: Some(config),
                    runtime_handler: String::new(),
                })
                .await
                .context("RunPodSandbox")?;
            serde_json::json!({ "pod_sandbox_id": response.into_inner().pod_sandbox_id })
        }
        Command::PodStatus { id } => {
            let response = client
                .pod_sandbox_status(PodSandboxStatusRequest {
                    pod_sandbox_id: id,
                    verbose: true,
                })
                .await
                .context("PodSandboxStatus")?;
            serde_json::to_value(response.into_inner())?
        }
        Command::StopPod { id } => {
            client
                .stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: id })
                .await
                .context("StopPodSandbox")?;
            serde_json::json!({})
        }
        Command::RemovePod { id } => {
            client
                .remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: id })
                .await
                .context("RemovePodSandbox")?;
            serde_json::json!({})
        }
        Command::Status => {
            let response = client
                .status(StatusRequest { verbose: false })
                .await
                .context("Status")?;
            serde_json::to_value(response.into_inner())?
        }
        Command::UpdateRuntimeConfig { pod_cidr } => {
            client
                .update_runtime_config(UpdateRuntimeConfigRequest {
                    runtime_config: Some(RuntimeConfig {
                        network_config: Some(NetworkConfig { pod_cidr }),
                    }),
                })
                .await
                .context("UpdateRuntimeConfig")?;
            serde_json::json!({})
        }
    };
    println!("{output}");
    Ok(())
}

/// How long one call may take: a runtime stuck in a CNI plugin fails the call instead of hanging
/// its caller (kubelet's default runtime request timeout is 2 minutes too).
const CALL_TIMEOUT: Duration = Duration::from_secs(120);

/// Opens a gRPC channel over the runtime's Unix socket (the URI is a placeholder tonic requires).
async fn connect(socket: PathBuf) -> Result<Channel> {
    let what = format!("connecting to the CRI socket {}", socket.display());
    Endpoint::try_from("http://[::]:0")?
        .timeout(CALL_TIMEOUT)
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(socket).await?)) }
        }))
        .await
        .context(what)
}
