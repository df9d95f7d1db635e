//! Checkpoint readers. Everything is converted to f32 `HostTensor`s keyed by the
//! PyTorch state_dict name.
pub mod pickle;
pub mod safetensors;
pub mod torch;
pub mod zip;

use std::collections::BTreeMap;
use std::path::Path;

use crate::model::error::{ModelError, Result};
use crate::model::tensor::HostTensor;

pub type StateDict = BTreeMap<String, HostTensor>;

/// Loads `.safetensors`, or a torch `.pth/.pt/.bin` (zip or legacy), sniffing the content.
pub fn load_weights(path: &Path) -> Result<StateDict> {
    let buf = std::fs::read(path).map_err(|e| ModelError::io(path, e))?;
    if zip::is_zip(&buf) || buf.starts_with(b"\x80\x02\x8a\x0a") {
        torch::load_torch(&buf)
    } else if safetensors::is_safetensors(&buf) {
        safetensors::load_safetensors(&buf)
    } else {
        Err(ModelError::UnknownFormat(path.to_path_buf()))
    }
}
