//! What can go wrong between a replica and the NATS cluster, as a client
//! must tell it apart (mapped to a kind once, in `query::error`).

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// Not connected: nothing was published.
    #[error("the NATS cluster is unreachable ({0}): nothing was written; retry once it is back")]
    Unreachable(String),
    /// Published, but no acknowledgement in time: it may or may not be
    /// stored. A retry with the same content is safe.
    #[error("JetStream did not acknowledge the write in {ms} ms ({why}); it may or may not be stored: send it again")]
    NotAcknowledged { ms: u64, why: String },
    #[error("this replica is at sequence {applied} of gallery {gallery:?}, {behind} behind the {wanted} asked for, after waiting {waited_ms} ms; retry, or read from the replica that took the write")]
    Behind {
        gallery: String,
        applied: u64,
        wanted: u64,
        behind: u64,
        waited_ms: u64,
    },
    #[error("gallery {gallery:?} was created for model {theirs} ({dims} dims); this replica serves {ours}: it does not serve that gallery (run one model per deployment, or upgrade replicas by creating a new gallery)")]
    OtherModel {
        gallery: String,
        theirs: String,
        dims: u32,
        ours: String,
    },
    #[error("item {id:?} is {bytes} bytes as a stream message, over the NATS max_payload of {max}: send a smaller descriptor or fewer metadata")]
    TooLarge {
        id: String,
        bytes: usize,
        max: usize,
    },
    #[error(
        "gallery {0:?} was changed by another replica meanwhile (dropped or created again); retry"
    )]
    Changed(String),
    #[error("gallery {0:?} was created on this server before it joined the cluster: it stays readable here but is not replicated; drop it to serve the cluster's gallery of that name")]
    LocalOnly(String),
    /// This replica's own store or gallery failed while applying.
    #[error("this replica's copy: {0}")]
    Local(String),
    /// This replica does not serve the gallery (`OtherModel`, ...).
    #[error("{0}")]
    Refused(String),
    #[error("the cluster took the change, but this replica had not applied it after {0} ms; it will shortly")]
    NotApplied(u64),
    #[error(transparent)]
    Gallery(#[from] crate::gallery::GalleryError),
    #[error("NATS: {0}")]
    Nats(String),
    #[error("connecting to NATS: {0}")]
    Connect(String),
}

impl ClusterError {
    pub fn nats(e: impl std::fmt::Display) -> Self {
        ClusterError::Nats(e.to_string())
    }
}
