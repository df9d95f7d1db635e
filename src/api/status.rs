//! Library errors become gRPC statuses through [`ServiceError`], whose
//! kind holds the one code mapping both transports use; the message is
//! the error's own, written for a person.

use tonic::{Code, Status};

use crate::embed::EmbedError;
use crate::gallery::GalleryError;
use crate::query::online::OnlineError;
use crate::query::ServiceError;

impl From<ServiceError> for Status {
    fn from(e: ServiceError) -> Self {
        let e = e.logged();
        Status::new(e.kind().grpc_code(), e.to_string())
    }
}

macro_rules! via_service_error {
    ($($t:ty),*) => {$(
        impl From<$t> for Status {
            fn from(e: $t) -> Self {
                ServiceError::from(e).into()
            }
        }
    )*};
}
via_service_error!(EmbedError, GalleryError, OnlineError);

/// tonic reports a message over the size limit as OUT_OF_RANGE; gRPC's
/// convention (and our contract) is RESOURCE_EXHAUSTED.
pub fn is_message_too_large(status: &Status) -> bool {
    status.code() == Code::OutOfRange && status.message().contains("message length too large")
}

pub fn too_large(status: &Status) -> Status {
    Status::resource_exhausted(format!(
        "{}; send smaller images or raise max_message_bytes",
        status.message()
    ))
}

/// prost's message for a request that is not valid protobuf.
pub const UNDECODABLE: &str = "failed to decode Protobuf message";

/// tonic reports a request that is not valid protobuf (cut short, a
/// length past its end, groups nested past prost's recursion limit) as
/// INTERNAL, gRPC core's code for it; but the fault is the client's, and
/// INTERNAL reads as a server bug, so lookalike says INVALID_ARGUMENT.
pub fn is_undecodable(status: &Status) -> bool {
    status.code() == Code::Internal && status.message().starts_with(UNDECODABLE)
}

/// A status from reading a request stream, with the codes above.
pub fn request_error(status: Status) -> Status {
    if is_message_too_large(&status) {
        too_large(&status)
    } else if is_undecodable(&status) {
        Status::invalid_argument(status.message())
    } else {
        status
    }
}
