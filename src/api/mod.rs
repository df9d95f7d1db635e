//! The gRPC transport: generated types, the Retrieval service, status
//! mapping, and the server (with health and reflection).

mod batch;
pub mod convert;
pub mod health;
mod ingest;
pub mod server;
pub mod service;
pub mod status;

/// Generated protobuf and tonic types of `lookalike.v1`.
pub mod pb {
    #![allow(clippy::all)]
    tonic::include_proto!("lookalike.v1");

    /// Encoded descriptor set, served by gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("lookalike_descriptor");
}
