//! Checks a query or an item must pass against a gallery and the limits.

use super::ServiceError;
use crate::embed::Engine;
use crate::gallery::Gallery;

/// A client-supplied descriptor; an empty fingerprint is not checked.
#[derive(Debug, Clone, Default)]
pub struct Descriptor {
    pub values: Vec<f32>,
    pub model_fingerprint: String,
}

/// Image queries and items need the gallery to be of the serving model.
pub fn check_model(engine: &Engine, g: &Gallery) -> Result<(), ServiceError> {
    if g.meta().model_fingerprint != engine.fingerprint() {
        return Err(ServiceError::Precondition(format!(
            "gallery {:?} was built with model {}, but the server runs model {}; \
             query it with descriptors of that model or re-index it",
            g.name(),
            g.meta().model_fingerprint,
            engine.fingerprint()
        )));
    }
    Ok(())
}

/// A client descriptor: fingerprint (if given) and dims must match; the
/// result is unit length.
pub fn check_descriptor(g: &Gallery, d: &Descriptor) -> Result<Vec<f32>, ServiceError> {
    if !d.model_fingerprint.is_empty() && d.model_fingerprint != g.meta().model_fingerprint {
        return Err(ServiceError::Precondition(format!(
            "descriptor is from model {}, gallery {:?} holds model {}",
            d.model_fingerprint,
            g.name(),
            g.meta().model_fingerprint
        )));
    }
    Ok(g.prepare(&d.values)?)
}

/// A request's `top_k`: 0 is the server default, above the cap is refused.
pub fn top_k(k: u32, default: u32, max: u32) -> Result<usize, ServiceError> {
    match k {
        0 => Ok(default as usize),
        k if k > max => Err(ServiceError::Invalid(format!(
            "top_k {k} is over the limit of {max}"
        ))),
        k => Ok(k as usize),
    }
}

/// A request's `ef_search`: 0 is the gallery default.
pub fn ef_search(ef: u32, g: &Gallery, max: u32) -> Result<usize, ServiceError> {
    match ef {
        0 => Ok(g.default_ef()),
        ef if ef > max => Err(ServiceError::Invalid(format!(
            "ef_search {ef} is over the limit of {max} (index.max_ef_search)"
        ))),
        ef => Ok(ef as usize),
    }
}

/// The item `id` of gallery `g`, or NOT_FOUND.
pub fn item(g: &Gallery, id: &str) -> Result<crate::gallery::Entry, ServiceError> {
    g.get(id).ok_or_else(|| {
        ServiceError::NotFound(format!("item {id:?} is not in gallery {:?}", g.name()))
    })
}
