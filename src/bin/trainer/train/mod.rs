//! Offline training on tch (feature `train`): labelled photos in, a checkpoint with the
//! export's own parameter names out, and from it the ONNX model the server loads.
//! The network is the one `model::forward` composes; only the backend differs.
pub mod augment;
pub mod chart;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod device;
pub mod error;
pub mod export;
pub mod images;
pub mod loader;
pub mod loss;
pub mod optim;
pub mod params;
pub mod run;
pub mod schedule;
pub mod validate;
