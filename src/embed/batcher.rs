//! Dynamic batching for one backbone: requests from concurrent callers are
//! gathered into batches (up to `max_batch`, waiting at most `max_wait`
//! for more while other admitted images are still on their way) and run
//! by a pool of worker threads, each owning its own session. Inference
//! never runs on the async executor.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use half::f16;
use ndarray::{Array2, Array4};
use ort::session::Session;
use ort::value::Tensor;
use ort::value::TensorElementType;
use tokio::sync::{oneshot, watch, Semaphore};

use super::EmbedError;
use crate::telemetry::metrics;

/// One image's input row for this backbone, and where to send its output.
pub struct Job {
    pub input: Vec<f32>,
    pub reply: oneshot::Sender<Result<Vec<f32>, EmbedError>>,
}

#[derive(Debug, Clone, Copy)]
pub struct BatchOptions {
    pub max_batch: usize,
    pub max_wait: Duration,
}

/// The engine's admission: how many images are admitted and unanswered.
#[derive(Clone)]
pub struct Admission {
    pub permits: Arc<Semaphore>,
    pub max: usize,
}

impl Admission {
    pub fn new(max: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(max)),
            max,
        }
    }

    pub fn in_flight(&self) -> usize {
        self.max - self.permits.available_permits()
    }
}

pub struct Batcher {
    tx: Option<Sender<Job>>,
    workers: Vec<JoinHandle<()>>,
}

impl Batcher {
    /// Starts one worker thread per session. `input_size` is S of the
    /// `[N,3,S,S]` input.
    pub fn start(
        name: &str,
        sessions: Vec<Session>,
        input_size: usize,
        opts: BatchOptions,
        admission: Admission,
        workers_ok: watch::Sender<bool>,
    ) -> Self {
        let (tx, rx) = crossbeam_channel::unbounded::<Job>();
        let workers = sessions
            .into_iter()
            .enumerate()
            .map(|(i, session)| {
                let rx = rx.clone();
                let w = Worker {
                    backbone: name.to_string(),
                    size: input_size,
                    opts,
                    admission: admission.clone(),
                    _alive: Alive(workers_ok.clone()),
                };
                std::thread::Builder::new()
                    .name(format!("embed-{name}-{i}"))
                    .spawn(move || w.run(session, rx))
                    .expect("spawning an inference thread")
            })
            .collect();
        Self {
            tx: Some(tx),
            workers,
        }
    }

    pub fn submit(&self, job: Job) -> Result<(), EmbedError> {
        let tx = self.tx.as_ref().ok_or(EmbedError::ShuttingDown)?;
        tx.send(job).map_err(|_| EmbedError::ShuttingDown)
    }
}

impl Drop for Batcher {
    /// Closing the channel lets the workers finish queued jobs and exit.
    fn drop(&mut self) {
        self.tx.take();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// Reports a worker that dies by panic (a normal exit is shutdown).
struct Alive(watch::Sender<bool>);

impl Drop for Alive {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.send_replace(false);
        }
    }
}

struct Worker {
    backbone: String,
    size: usize,
    opts: BatchOptions,
    admission: Admission,
    _alive: Alive,
}

impl Worker {
    fn run(self, mut session: Session, rx: Receiver<Job>) {
        let (size, opts) = (self.size, self.opts);
        let batch_sizes = metrics().batch_size.with_label_values(&[&self.backbone]);
        let mut faults = fault::Faults::from_env();
        while let Ok(first) = rx.recv() {
            let mut batch = vec![first];
            let deadline = Instant::now() + opts.max_wait;
            while batch.len() < opts.max_batch {
                if let Ok(job) = rx.try_recv() {
                    batch.push(job);
                    continue;
                }
                // Nothing else admitted: a lone request runs at once (the
                // wait cost one-at-a-time callers max_wait each).
                if self.admission.in_flight() <= batch.len() {
                    break;
                }
                match rx.recv_deadline(deadline) {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            // A caller that gave up (client gone, deadline) costs nothing.
            batch.retain(|j| !j.reply.is_closed());
            if batch.is_empty() {
                continue;
            }
            faults.tick();
            batch_sizes.observe(batch.len() as f64);
            match run_batch(&mut session, &batch, size) {
                Ok(rows) => {
                    for (job, row) in batch.into_iter().zip(rows) {
                        let _ = job.reply.send(Ok(row));
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "inference failed");
                    for job in batch {
                        let _ = job.reply.send(Err(EmbedError::Runtime(e.clone())));
                    }
                }
            }
        }
    }
}

/// Fault injection for tests, debug builds only (release builds ignore
/// these variables):
/// - `LOOKALIKE_FAULT_WORKER_PANIC_AFTER=N` makes each inference worker
///   panic on its batch after N, so tests can check what a dead worker
///   does to health;
/// - `LOOKALIKE_FAULT_WORKER_HOLD=PATH`: while the file PATH exists, each
///   worker holds its batch before running it, so a test can keep images
///   admitted (the queue full) for exactly as long as it needs.
mod fault {
    use std::path::PathBuf;
    use std::time::Duration;

    pub struct Faults {
        panic_after: Option<u64>,
        hold: Option<PathBuf>,
    }

    fn var(name: &str) -> Option<String> {
        cfg!(debug_assertions)
            .then(|| std::env::var(name).ok())
            .flatten()
    }

    impl Faults {
        pub fn from_env() -> Self {
            Self {
                panic_after: var("LOOKALIKE_FAULT_WORKER_PANIC_AFTER").and_then(|v| v.parse().ok()),
                hold: var("LOOKALIKE_FAULT_WORKER_HOLD").map(PathBuf::from),
            }
        }

        /// Before each batch.
        pub fn tick(&mut self) {
            match &mut self.panic_after {
                Some(0) => panic!("injected inference worker fault"),
                Some(n) => *n -= 1,
                None => {}
            }
            if let Some(path) = &self.hold {
                while path.exists() {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
    }
}

fn run_batch(session: &mut Session, batch: &[Job], size: usize) -> Result<Vec<Vec<f32>>, String> {
    let n = batch.len();
    let mut flat = Vec::with_capacity(n * 3 * size * size);
    for job in batch {
        flat.extend_from_slice(&job.input);
    }
    let input = Array4::from_shape_vec((n, 3, size, size), flat).map_err(|e| e.to_string())?;
    let input_type = session
        .inputs()
        .first()
        .and_then(|i| i.dtype().tensor_type());
    let outputs = if input_type == Some(TensorElementType::Float16) {
        let t = Tensor::from_array(input.mapv(f16::from_f32)).map_err(|e| e.to_string())?;
        session.run(ort::inputs![t])
    } else {
        let t = Tensor::from_array(input).map_err(|e| e.to_string())?;
        session.run(ort::inputs![t])
    }
    .map_err(|e| e.to_string())?;
    let out = &outputs[0];
    let rows: Array2<f32> = match out.try_extract_array::<f32>() {
        Ok(a) => a
            .to_owned()
            .into_dimensionality()
            .map_err(|e| e.to_string())?,
        Err(_) => {
            let a = out.try_extract_array::<f16>().map_err(|e| e.to_string())?;
            a.mapv(f16::to_f32)
                .into_dimensionality()
                .map_err(|e| e.to_string())?
        }
    };
    if rows.nrows() != n {
        return Err(format!(
            "model returned {} rows for a batch of {n}",
            rows.nrows()
        ));
    }
    Ok(rows.outer_iter().map(|r| r.to_vec()).collect())
}
