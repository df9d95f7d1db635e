//! How the client commands reach the server: plaintext or TLS (with the
//! CA file given, and a client certificate when the server asks for one),
//! and the API key sent as `authorization: Bearer` on every call.

use std::path::PathBuf;

use anyhow::{bail, Context};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::api::pb::retrieval_client::RetrievalClient;

/// Where the server is and how to authenticate.
#[derive(clap::Args, Clone, Default)]
pub struct Connection {
    /// Server address (https:// for TLS).
    #[arg(
        long,
        env = "LOOKALIKE_SERVER",
        default_value = "http://127.0.0.1:50051"
    )]
    pub server: String,
    /// API key, sent as `authorization: Bearer <key>`.
    #[arg(long, env = "LOOKALIKE_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// CA certificate (PEM) that signed the server's certificate.
    #[arg(long, env = "LOOKALIKE_CA")]
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM), for servers that require one.
    #[arg(long, env = "LOOKALIKE_CLIENT_CERT", requires = "client_key")]
    pub client_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, env = "LOOKALIKE_CLIENT_KEY", requires = "client_cert")]
    pub client_key: Option<PathBuf>,
}

/// Adds the API key to every request.
#[derive(Clone)]
pub struct ApiKey(Option<MetadataValue<Ascii>>);

impl tonic::service::Interceptor for ApiKey {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

pub type Authed = InterceptedService<Channel, ApiKey>;
pub type Client = RetrievalClient<Authed>;

/// Messages up to this size are accepted from the server.
pub(crate) const MAX_MESSAGE: usize = 64 << 20;

impl Connection {
    pub async fn channel(&self) -> anyhow::Result<Authed> {
        let mut ep = Endpoint::from_shared(self.server.clone())
            .with_context(|| format!("server address {:?}", self.server))?;
        if self.server.starts_with("https://") {
            let Some(ca) = &self.ca else {
                bail!("{} is TLS: pass the CA certificate with --ca", self.server);
            };
            let read =
                |p: &PathBuf| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
            let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca)?));
            if let (Some(cert), Some(key)) = (&self.client_cert, &self.client_key) {
                tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
            }
            ep = ep.tls_config(tls)?;
        }
        let channel = ep.connect().await.with_context(|| {
            format!(
                "connecting to {} (is `lookalike serve` running?)",
                self.server
            )
        })?;
        let key = match &self.api_key {
            Some(k) => Some(
                format!("Bearer {k}")
                    .parse()
                    .context("the API key must be printable ASCII")?,
            ),
            None => None,
        };
        Ok(InterceptedService::new(channel, ApiKey(key)))
    }

    pub async fn client(&self) -> anyhow::Result<Client> {
        Ok(RetrievalClient::new(self.channel().await?)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE))
    }
}
