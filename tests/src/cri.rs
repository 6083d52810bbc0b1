//! The few CRI (runtime.v1) calls the containerd test makes, by hand: the messages are the
//! fields of `k8s.io/cri-api/pkg/apis/runtime/v1/api.proto` that the test sets or reads,
//! with the proto's field numbers (protobuf skips the rest), and the client is tonic's
//! generic unary call. Generating them would need `protoc` at build time for four RPCs.

use std::collections::HashMap;

use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;

#[derive(Clone, PartialEq, prost::Message)]
pub struct PodSandboxMetadata {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub uid: String,
    #[prost(string, tag = "3")]
    pub namespace: String,
    #[prost(uint32, tag = "4")]
    pub attempt: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct LinuxPodSandboxConfig {
    #[prost(string, tag = "1")]
    pub cgroup_parent: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PodSandboxConfig {
    #[prost(message, optional, tag = "1")]
    pub metadata: Option<PodSandboxMetadata>,
    #[prost(string, tag = "2")]
    pub hostname: String,
    #[prost(string, tag = "3")]
    pub log_directory: String,
    #[prost(map = "string, string", tag = "6")]
    pub labels: HashMap<String, String>,
    #[prost(map = "string, string", tag = "7")]
    pub annotations: HashMap<String, String>,
    #[prost(message, optional, tag = "8")]
    pub linux: Option<LinuxPodSandboxConfig>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct RunPodSandboxRequest {
    #[prost(message, optional, tag = "1")]
    pub config: Option<PodSandboxConfig>,
    #[prost(string, tag = "2")]
    pub runtime_handler: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct RunPodSandboxResponse {
    #[prost(string, tag = "1")]
    pub pod_sandbox_id: String,
}

/// The request of StopPodSandbox and RemovePodSandbox (both: `pod_sandbox_id = 1`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct PodSandboxIdRequest {
    #[prost(string, tag = "1")]
    pub pod_sandbox_id: String,
}

/// StopPodSandboxResponse and RemovePodSandboxResponse: empty.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Empty {}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PodSandboxStatusRequest {
    #[prost(string, tag = "1")]
    pub pod_sandbox_id: String,
    #[prost(bool, tag = "2")]
    pub verbose: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PodSandboxNetworkStatus {
    #[prost(string, tag = "1")]
    pub ip: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PodSandboxStatus {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(message, optional, tag = "5")]
    pub network: Option<PodSandboxNetworkStatus>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PodSandboxStatusResponse {
    #[prost(message, optional, tag = "1")]
    pub status: Option<PodSandboxStatus>,
    #[prost(map = "string, string", tag = "2")]
    pub info: HashMap<String, String>,
}

/// A RuntimeService client over a connected channel.
pub struct RuntimeService {
    grpc: tonic::client::Grpc<Channel>,
}

impl RuntimeService {
    pub fn new(channel: Channel) -> RuntimeService {
        RuntimeService {
            grpc: tonic::client::Grpc::new(channel),
        }
    }

    async fn unary<Req, Resp>(
        &mut self,
        method: &'static str,
        req: Req,
    ) -> Result<Resp, tonic::Status>
    where
        Req: prost::Message + Send + Sync + 'static,
        Resp: prost::Message + Default + Send + Sync + 'static,
    {
        self.grpc
            .ready()
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let codec = tonic_prost::ProstCodec::<Req, Resp>::default();
        self.grpc
            .unary(
                tonic::Request::new(req),
                PathAndQuery::from_static(method),
                codec,
            )
            .await
            .map(tonic::Response::into_inner)
    }

    pub async fn run_pod_sandbox(
        &mut self,
        r: RunPodSandboxRequest,
    ) -> Result<RunPodSandboxResponse, tonic::Status> {
        self.unary("/runtime.v1.RuntimeService/RunPodSandbox", r)
            .await
    }

    pub async fn pod_sandbox_status(
        &mut self,
        r: PodSandboxStatusRequest,
    ) -> Result<PodSandboxStatusResponse, tonic::Status> {
        self.unary("/runtime.v1.RuntimeService/PodSandboxStatus", r)
            .await
    }

    pub async fn stop_pod_sandbox(&mut self, id: &str) -> Result<Empty, tonic::Status> {
        let r = PodSandboxIdRequest {
            pod_sandbox_id: id.to_string(),
        };
        self.unary("/runtime.v1.RuntimeService/StopPodSandbox", r)
            .await
    }

    pub async fn remove_pod_sandbox(&mut self, id: &str) -> Result<Empty, tonic::Status> {
        let r = PodSandboxIdRequest {
            pod_sandbox_id: id.to_string(),
        };
        self.unary("/runtime.v1.RuntimeService/RemovePodSandbox", r)
            .await
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    /// The bytes worked out by hand from api.proto's field numbers and wire types: a wrong
    /// tag here would be a field containerd silently ignores.
    #[test]
    fn run_pod_sandbox_request_encodes_as_the_proto_says() {
        let r = RunPodSandboxRequest {
            config: Some(PodSandboxConfig {
                metadata: Some(PodSandboxMetadata {
                    name: "a".into(),
                    uid: "u".into(),
                    namespace: "d".into(),
                    attempt: 1,
                }),
                hostname: "a".into(),
                linux: Some(LinuxPodSandboxConfig::default()),
                ..Default::default()
            }),
            runtime_handler: String::new(),
        };
        let want: &[u8] = &[
            0x0a, 0x12, // config (1), 18 bytes
            0x0a, 0x0b, 0x0a, 0x01, b'a', 0x12, 0x01, b'u', 0x1a, 0x01, b'd', 0x20,
            0x01, // metadata
            0x12, 0x01, b'a', // hostname (2)
            0x42, 0x00, // linux (8), empty
        ];
        assert_eq!(r.encode_to_vec(), want);
    }
}
