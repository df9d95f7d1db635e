//! lookalike: image retrieval over gRPC. Images are embedded by an ONNX
//! ensemble ([`embed`]), kept in durable named galleries ([`store`],
//! [`gallery`]) indexed by HNSW ([`index`]), handled transport-free by
//! [`query`] (one `query::service::Service` per server) and served over
//! gRPC ([`api`]), HTTP/JSON ([`http`]) and the admin port ([`admin`]),
//! all bound by [`server`]. [`rerank`] holds the post-processing stages,
//! [`eval`] the metrics.
//! Definitions of every stage: `shared/spec/retrieval-pipeline.md`.

pub mod admin;
pub mod api;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod embed;
pub mod eval;
pub mod gallery;
pub mod http;
pub mod index;
pub mod model;
pub mod query;
pub mod rerank;
pub mod security;
pub mod server;
pub mod store;
pub mod telemetry;
