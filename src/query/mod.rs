//! Transport-free request handling shared by the gRPC and HTTP APIs:
//! resolving a query (image, descriptor or stored item) against a gallery,
//! validating search options into a plan, preparing items to add, and the
//! one error type whose kind both transports map to their status codes.

pub mod add;
pub mod admission;
pub mod checks;
pub mod error;
pub mod gallery;
pub mod item;
pub mod plan;
pub mod search;

pub use error::{Kind, ServiceError};
