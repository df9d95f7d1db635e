//! The HTTP/JSON API (`http_listen`) and the web console, on their own
//! port, over the same engine and galleries as gRPC: handlers validate,
//! authorise (the same API keys), call the transport-free `query` layer
//! and convert. Errors map to statuses through `query::Kind`, with the
//! gRPC messages. The OpenAPI document (`/v1/openapi.json`) is generated
//! from the handlers' annotations.

pub mod console;
pub mod error;
mod extract;
pub mod galleries;
pub mod items;
pub mod openapi;
pub mod router;
pub mod search;
pub mod serve;

use std::sync::Arc;

use crate::config::Config;
use crate::query::service::Service;
use crate::security::auth::ApiKeys;
use crate::store::thumbnail::ThumbnailConfig;

/// What every handler shares: the server's one [`Service`] (the gRPC
/// port has the same) and what only HTTP needs.
#[derive(Clone)]
pub struct App {
    pub service: Arc<Service>,
    pub thumbnails: ThumbnailConfig,
    /// None: no authentication.
    pub keys: Option<Arc<ApiKeys>>,
    /// Largest request body (`max_message_bytes`, as for gRPC).
    pub max_body: usize,
}

impl App {
    pub fn new(service: Arc<Service>, cfg: &Config, keys: Option<ApiKeys>) -> Self {
        Self {
            service,
            thumbnails: cfg.thumbnails.clone(),
            keys: keys.map(Arc::new),
            max_body: cfg.max_message_bytes,
        }
    }
}
