//! The embedding engine: image bytes -> ensemble descriptor (spec section 1).
//!
//! Decoding and preprocessing run on tokio's blocking pool; each backbone
//! has its own [`batcher::Batcher`] with a pool of ONNX Runtime sessions.
//! Admission is a semaphore: when every permit is taken the request is
//! refused at once (`Overloaded`) instead of queueing without bound.

pub mod batcher;
pub mod manifest;
pub mod preprocess;
pub mod runtime;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use image::RgbImage;
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, watch};

use crate::index::distance::normalised;
use crate::telemetry::metrics;
use batcher::{Admission, BatchOptions, Batcher, Job};
use manifest::LoadedManifest;
use preprocess::{DecodeLimits, ImageError, InputSpec};
use runtime::{Provider, ProviderChoice, SessionOptions};

#[derive(Debug, thiserror::Error, Clone)]
pub enum EmbedError {
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("the embedding queue is full ({0} images in flight); retry later")]
    Overloaded(usize),
    #[error("the server is shutting down")]
    ShuttingDown,
    #[error("an inference worker died; the server needs a restart")]
    WorkerDied,
    #[error("model manifest {path}: {msg}")]
    Manifest { path: PathBuf, msg: String },
    #[error("inference error: {0}")]
    Runtime(String),
}

/// Engine settings (the `[embed]` section of the server config).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    pub provider: ProviderChoice,
    /// Fail at start-up instead of falling back to CPU.
    pub require_gpu: bool,
    /// Sessions (worker threads) per backbone.
    pub sessions: usize,
    /// ONNX Runtime intra-op threads per session (0 = number of cores).
    pub intra_threads: usize,
    /// Images per inference batch at most; 0: by provider (`batch_limit`).
    pub max_batch: usize,
    pub max_wait_ms: u64,
    /// Images admitted at once (decoding, queued or running).
    pub max_in_flight: usize,
    /// Upcast FP16 models to FP32 in memory on the CPU provider, where
    /// FP16 runs about 2x slower (ORT wraps every op in casts).
    pub upcast_fp16_on_cpu: bool,
    /// Checked before decoding (`[embed.limits]`).
    pub limits: DecodeLimits,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            provider: ProviderChoice::Auto,
            require_gpu: false,
            sessions: 1,
            intra_threads: 0,
            max_batch: 0,
            max_wait_ms: 2,
            max_in_flight: 256,
            upcast_fp16_on_cpu: true,
            limits: DecodeLimits::default(),
        }
    }
}

struct Member {
    spec: InputSpec,
    dims: usize,
    batcher: Batcher,
}

/// Linear projection `y = (x - mean) W` after concatenation.
struct Projection {
    mean: Vec<f32>,
    /// Row-major, in_dims x out_dims.
    w: Vec<f32>,
    out_dims: usize,
}

pub struct Engine {
    members: Vec<Member>,
    projection: Option<Projection>,
    fingerprint: String,
    dims: usize,
    provider: Provider,
    limits: DecodeLimits,
    admission: Admission,
    /// False once an inference worker has died.
    workers_ok: watch::Sender<bool>,
}

/// Time spent in each phase of one embedding, for per-stage timings.
#[derive(Debug, Clone, Copy, Default)]
pub struct EmbedTimings {
    pub decode: Duration,
    pub infer: Duration,
}

impl EmbedTimings {
    /// As responses report them: `decode`, then `embed`.
    pub fn stages(&self) -> [(&'static str, Duration); 2] {
        [("decode", self.decode), ("embed", self.infer)]
    }
}

/// The batch limit for `configured` (0: by provider). On CUDA batches
/// pay; on the CPU they cost: ONNX Runtime already spreads one image over
/// every core, and 16 in flight embedded 15% faster one at a time than in
/// batches of 16 (BENCHMARKS.md, "Embed one at a time").
pub fn batch_limit(configured: usize, provider: Provider) -> usize {
    match (configured, provider) {
        (0, Provider::Cuda) => 16,
        (0, Provider::Cpu) => 1,
        (n, _) => n,
    }
}

impl Engine {
    /// Loads the manifest's backbones and starts their workers.
    pub fn load(
        manifest_path: &Path,
        dylib: &Path,
        cfg: &EngineConfig,
    ) -> Result<Self, EmbedError> {
        let m = LoadedManifest::load(manifest_path)?;
        let env = runtime::environment(dylib)?;
        let opts = SessionOptions {
            provider: cfg.provider,
            require_gpu: cfg.require_gpu,
            intra_threads: cfg.intra_threads,
            upcast_fp16: cfg.upcast_fp16_on_cpu,
        };
        let admission = Admission::new(cfg.max_in_flight.max(1));
        let mut members = Vec::new();
        let mut provider = Provider::Cuda;
        let workers_ok = watch::Sender::new(true);
        for b in &m.manifest.backbones {
            let path = m.path_of(&b.onnx);
            let mut sessions = Vec::new();
            let mut on = Provider::Cuda;
            for _ in 0..cfg.sessions.max(1) {
                let (s, p) = runtime::open_session(&env, &path, &opts)?;
                check_io(&s, &path)?;
                if p == Provider::Cpu {
                    on = Provider::Cpu;
                    provider = Provider::Cpu;
                }
                sessions.push(s);
            }
            let batch = BatchOptions {
                max_batch: batch_limit(cfg.max_batch, on),
                max_wait: Duration::from_millis(cfg.max_wait_ms),
            };
            tracing::info!(backbone = %b.name, provider = on.name(),
                max_batch = batch.max_batch, "model loaded");
            let batcher = Batcher::start(
                &b.name,
                sessions,
                b.input_size,
                batch,
                admission.clone(),
                workers_ok.clone(),
            );
            members.push(Member {
                spec: manifest::input_spec(b),
                dims: b.descriptor_dim,
                batcher,
            });
        }
        let projection = match &m.manifest.projection {
            Some(p) => Some(load_projection(
                &m.path_of(&p.file),
                m.dims_before_projection(),
                p.out_dims,
                manifest_path,
            )?),
            None => None,
        };
        Ok(Self {
            members,
            projection,
            fingerprint: m.fingerprint.clone(),
            dims: m.dims(),
            provider,
            limits: cfg.limits,
            admission,
            workers_ok,
        })
    }

    pub fn dims(&self) -> usize {
        self.dims
    }

    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    pub fn provider(&self) -> Provider {
        self.provider
    }

    pub fn limits(&self) -> &DecodeLimits {
        &self.limits
    }

    /// Turns false, for good, when an inference worker dies.
    pub fn workers_ok(&self) -> watch::Receiver<bool> {
        self.workers_ok.subscribe()
    }

    /// Images admitted and not yet embedded.
    pub fn in_flight(&self) -> usize {
        self.admission.in_flight()
    }

    /// Embeds one image: the L2-normalised ensemble descriptor.
    pub async fn embed(&self, bytes: Vec<u8>) -> Result<(Vec<f32>, EmbedTimings), EmbedError> {
        let (descriptor, timings, _) = self.embed_inner(bytes, None::<fn(&RgbImage)>).await?;
        Ok((descriptor, timings))
    }

    /// [`Engine::embed`], and `also` run on the decoded image (on the
    /// blocking pool, while the models run): one decode serves both, e.g.
    /// the embedding and the thumbnail of an added photo.
    pub async fn embed_and<T: Send + 'static>(
        &self,
        bytes: Vec<u8>,
        also: impl FnOnce(&RgbImage) -> T + Send + 'static,
    ) -> Result<(Vec<f32>, EmbedTimings, T), EmbedError> {
        let (descriptor, timings, out) = self.embed_inner(bytes, Some(also)).await?;
        let out = out.ok_or_else(|| EmbedError::Runtime("image task gave nothing".into()))?;
        Ok((descriptor, timings, out))
    }

    async fn embed_inner<T: Send + 'static>(
        &self,
        bytes: Vec<u8>,
        also: Option<impl FnOnce(&RgbImage) -> T + Send + 'static>,
    ) -> Result<(Vec<f32>, EmbedTimings, Option<T>), EmbedError> {
        if !*self.workers_ok.borrow() {
            return Err(EmbedError::WorkerDied);
        }
        // Taken before the first await: of several images polled together
        // (one add request), those past the limit are refused at once.
        let _permit = self
            .admission
            .permits
            .clone()
            .try_acquire_owned()
            .map_err(|_| {
                metrics().refusals.inc();
                EmbedError::Overloaded(self.admission.max)
            })?;
        let started = Instant::now();
        let specs: Vec<InputSpec> = self.members.iter().map(|m| m.spec.clone()).collect();
        let limits = self.limits;
        // Stage spans (debug level) under the caller's request span.
        let request = tracing::Span::current();
        // The decoded image outlives preprocessing only when `also` wants it.
        let keep = also.is_some();
        let (inputs, img) = tokio::task::spawn_blocking(move || -> Result<_, EmbedError> {
            let span = tracing::debug_span!(parent: &request, "decode").entered();
            let img = preprocess::decode(&bytes, &limits)?;
            drop(span);
            let t = Instant::now();
            let _span = tracing::debug_span!(parent: &request, "preprocess").entered();
            let rows = specs
                .iter()
                .map(|s| {
                    let mut row = vec![0.0; s.values()];
                    preprocess::write_input(&img, s, &mut row)?;
                    Ok(row)
                })
                .collect::<Result<Vec<Vec<f32>>, EmbedError>>()?;
            metrics().observe_stage("preprocess", t.elapsed());
            Ok((rows, keep.then_some(img)))
        })
        .await
        .map_err(|e| EmbedError::Runtime(format!("preprocessing task failed: {e}")))??;
        let decoded = Instant::now();

        let mut waits = Vec::with_capacity(self.members.len());
        for (member, input) in self.members.iter().zip(inputs) {
            let (reply, rx) = oneshot::channel();
            member.batcher.submit(Job { input, reply })?;
            waits.push(rx);
        }
        let also = also
            .zip(img)
            .map(|(f, img)| tokio::task::spawn_blocking(move || f(&img)));
        let mut parts = Vec::with_capacity(waits.len());
        for (member, rx) in self.members.iter().zip(waits) {
            let out = rx.await.map_err(|_| EmbedError::ShuttingDown)??;
            if out.len() != member.dims {
                return Err(EmbedError::Runtime(format!(
                    "model produced {} dims, the manifest says {}",
                    out.len(),
                    member.dims
                )));
            }
            parts.push(out);
        }
        // Queueing for a batch included: what a caller waits for.
        metrics().observe_stage("inference", decoded.elapsed());
        let descriptor = self.combine(parts)?;
        let timings = EmbedTimings {
            decode: decoded - started,
            infer: decoded.elapsed(),
        };
        let also = match also {
            Some(task) => Some(
                task.await
                    .map_err(|e| EmbedError::Runtime(format!("image task failed: {e}")))?,
            ),
            None => None,
        };
        Ok((descriptor, timings, also))
    }

    /// Spec 1.4: per-model L2, concatenation, optional projection, L2.
    fn combine(&self, parts: Vec<Vec<f32>>) -> Result<Vec<f32>, EmbedError> {
        let degenerate =
            || EmbedError::Runtime("the model produced a zero or non-finite descriptor".into());
        let mut cat = Vec::with_capacity(self.dims);
        for p in parts {
            cat.extend(normalised(&p).ok_or_else(degenerate)?);
        }
        if let Some(proj) = &self.projection {
            let centred: Vec<f32> = cat.iter().zip(&proj.mean).map(|(x, m)| x - m).collect();
            cat = (0..proj.out_dims)
                .map(|j| {
                    centred
                        .iter()
                        .enumerate()
                        .map(|(i, x)| x * proj.w[i * proj.out_dims + j])
                        .sum()
                })
                .collect();
        }
        normalised(&cat).ok_or_else(degenerate)
    }
}

/// Refuses a model whose input or output cannot be what the manifest says.
fn check_io(s: &ort::session::Session, path: &Path) -> Result<(), EmbedError> {
    if s.inputs().len() != 1 || s.outputs().is_empty() {
        return Err(EmbedError::Runtime(format!(
            "{}: expected one image input and a descriptor output, found {} inputs and {} outputs",
            path.display(),
            s.inputs().len(),
            s.outputs().len()
        )));
    }
    Ok(())
}

fn load_projection(
    path: &Path,
    in_dims: usize,
    out_dims: usize,
    manifest: &Path,
) -> Result<Projection, EmbedError> {
    let bad = |msg: String| EmbedError::Manifest {
        path: manifest.to_path_buf(),
        msg,
    };
    let bytes = std::fs::read(path).map_err(|e| bad(format!("{}: {e}", path.display())))?;
    let want = 4 * (in_dims + in_dims * out_dims);
    if bytes.len() != want {
        return Err(bad(format!(
            "projection {} has {} bytes; {in_dims} -> {out_dims} dims needs {want}",
            path.display(),
            bytes.len()
        )));
    }
    let vals: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let (mean, w) = vals.split_at(in_dims);
    Ok(Projection {
        mean: mean.to_vec(),
        w: w.to_vec(),
        out_dims,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_batch_limit_follows_the_provider_unless_configured() {
        assert_eq!(batch_limit(0, Provider::Cpu), 1);
        assert_eq!(batch_limit(0, Provider::Cuda), 16);
        assert_eq!(batch_limit(8, Provider::Cpu), 8);
        assert_eq!(batch_limit(8, Provider::Cuda), 8);
    }
}
