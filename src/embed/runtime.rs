//! ONNX Runtime: loading the shared library once, choosing the execution
//! provider, and opening sessions (one per worker thread, since
//! `Session::run` takes `&mut self`).

use std::path::{Path, PathBuf};

use ort::environment::Environment;
use ort::ep::{self, ExecutionProvider};
use ort::session::Session;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::EmbedError;
use crate::model::upcast::upcast_if_fp16;

/// Which execution provider to ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderChoice {
    /// CUDA when the library has it and a GPU answers, CPU otherwise.
    Auto,
    Cpu,
    Cuda,
}

/// The provider a session actually runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    Cpu,
    Cuda,
}

impl Provider {
    pub fn name(self) -> &'static str {
        match self {
            Provider::Cpu => "CPUExecutionProvider",
            Provider::Cuda => "CUDAExecutionProvider",
        }
    }
}

static ENVIRONMENT: Mutex<Option<(PathBuf, Environment)>> = Mutex::new(None);

/// Loads libonnxruntime from `dylib` (once per process) and returns the
/// shared environment.
pub fn environment(dylib: &Path) -> Result<Environment, EmbedError> {
    let mut env = ENVIRONMENT.lock();
    if let Some((loaded, e)) = env.as_ref() {
        if loaded != dylib {
            tracing::warn!(loaded = %loaded.display(), requested = %dylib.display(),
                "ONNX Runtime is already loaded from another path; keeping it");
        }
        return Ok(e.clone());
    }
    if !dylib.exists() {
        return Err(EmbedError::Runtime(format!(
            "ONNX Runtime library not found at {} (run scripts/setup.sh, or set ORT_DYLIB_PATH)",
            dylib.display()
        )));
    }
    let built = ort::init_from(dylib)
        .map_err(|e| EmbedError::Runtime(format!("loading {}: {e}", dylib.display())))?
        .with_name("lookalike")
        .build()
        .map_err(|e| EmbedError::Runtime(e.to_string()))?;
    *env = Some((dylib.to_path_buf(), built.clone()));
    Ok(built)
}

/// Options for opening sessions.
#[derive(Debug, Clone)]
pub struct SessionOptions {
    pub provider: ProviderChoice,
    pub require_gpu: bool,
    /// 0 = number of cores.
    pub intra_threads: usize,
    pub upcast_fp16: bool,
}

/// Opens a session on `model`, on CUDA when asked and possible. On the CPU
/// provider an FP16 model is first upcast to FP32 in memory.
pub fn open_session(
    env: &Environment,
    model: &Path,
    opts: &SessionOptions,
) -> Result<(Session, Provider), EmbedError> {
    let rt = |e: &dyn std::fmt::Display| EmbedError::Runtime(format!("{}: {e}", model.display()));
    let mut builder = Session::builder(env).map_err(|e| rt(&e))?;
    let threads = match opts.intra_threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    builder = builder.with_intra_threads(threads).map_err(|e| rt(&e))?;
    let provider = choose_provider(&mut builder, opts)?;
    let bytes = std::fs::read(model).map_err(|e| rt(&e))?;
    let bytes = if provider == Provider::Cpu && opts.upcast_fp16 {
        match upcast_if_fp16(&bytes).map_err(|e| rt(&e))? {
            Some(fp32) => {
                tracing::info!(model = %model.display(), "FP16 weights upcast to FP32 for the CPU provider");
                fp32
            }
            None => bytes,
        }
    } else {
        bytes
    };
    let session = builder.commit_from_memory(&bytes).map_err(|e| rt(&e))?;
    Ok((session, provider))
}

fn choose_provider(
    builder: &mut ort::session::builder::SessionBuilder,
    opts: &SessionOptions,
) -> Result<Provider, EmbedError> {
    let want_cuda = opts.require_gpu || opts.provider != ProviderChoice::Cpu;
    if !want_cuda {
        return Ok(Provider::Cpu);
    }
    let failure = match ep::CUDA::is_available() {
        Ok(true) => match ep::CUDA::default().register(builder) {
            Ok(()) => return Ok(Provider::Cuda),
            Err(e) => format!("the CUDA provider failed to start: {e}"),
        },
        Ok(false) => {
            "this ONNX Runtime build has no CUDA provider (install the onnxruntime-gpu wheel)"
                .into()
        }
        Err(e) => format!("could not query providers: {e}"),
    };
    if opts.require_gpu {
        return Err(EmbedError::Runtime(format!(
            "require_gpu is set but {failure}"
        )));
    }
    if opts.provider == ProviderChoice::Cuda {
        tracing::warn!("{failure}; falling back to CPU");
    } else {
        tracing::info!("{failure}; using CPU");
    }
    Ok(Provider::Cpu)
}
