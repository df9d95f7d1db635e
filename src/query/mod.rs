//! Transport-free request handling shared by the gRPC and HTTP APIs: the
//! [`service::Service`] both are handed, resolving a query (image,
//! descriptor or stored item) against a gallery, validating search options
//! into a plan and running it (`online`: the per-request re-ranking
//! stages over the gallery's reads), SearchBatch, adding items, and the
//! one error type whose kind both transports map to their status codes.

pub mod add;
pub mod admission;
pub mod batch;
pub mod checks;
pub mod error;
pub mod gallery;
pub mod item;
pub mod online;
pub mod plan;
pub mod search;
pub mod service;
pub mod timing;

pub use error::{Kind, ServiceError};
