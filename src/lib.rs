//! lookalike: image retrieval over gRPC. Images are embedded by an ONNX
//! ensemble ([`embed`]), kept in durable named galleries ([`store`],
//! [`gallery`]) indexed by HNSW ([`index`]), and served by [`api`].
//! [`rerank`] holds the post-processing stages, [`eval`] the metrics.
//! Definitions of every stage: `shared/spec/retrieval-pipeline.md`.

pub mod admin;
pub mod api;
pub mod cli;
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
pub mod store;
pub mod telemetry;
