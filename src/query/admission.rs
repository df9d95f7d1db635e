//! Admission for search CPU work (exact scans, graph search, QE,
//! k-reciprocal, SearchBatch pipelines): at most `max_running` computations
//! on the blocking pool at once, at most `max_queued` more waiting for a
//! slot, each for at most `max_wait_ms`. Past that a search is refused
//! with `Overloaded` (RESOURCE_EXHAUSTED, retryable) instead of piling up
//! blocking threads and memory without bound.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use crate::telemetry::metrics;

/// The `[search]` section of the server config; zeros take the defaults.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdmissionConfig {
    /// Searches computing at once; 0 = the number of cores (CPU-bound
    /// work gains nothing from more).
    pub max_running: usize,
    /// Searches waiting for a slot; 0 = 4 x `max_running`.
    pub max_queued: usize,
    /// Longest a search waits for a slot; 0 = 1000 ms.
    pub max_wait_ms: u64,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum AdmissionError {
    #[error("the server is busy: {running} searches running and {queued} waiting; retry later")]
    Full { running: usize, queued: usize },
    #[error("the server is busy: no search slot freed within {0} ms; retry later")]
    Waited(u64),
}

#[derive(Debug)]
pub struct SearchAdmission {
    running: Arc<Semaphore>,
    queue: Semaphore,
    max_running: usize,
    max_queued: usize,
    max_wait: Duration,
}

impl SearchAdmission {
    pub fn new(cfg: AdmissionConfig) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let max_running = if cfg.max_running == 0 {
            cores
        } else {
            cfg.max_running
        };
        let max_queued = if cfg.max_queued == 0 {
            4 * max_running
        } else {
            cfg.max_queued
        };
        let wait_ms = if cfg.max_wait_ms == 0 {
            1000
        } else {
            cfg.max_wait_ms
        };
        Self {
            running: Arc::new(Semaphore::new(max_running)),
            queue: Semaphore::new(max_queued),
            max_running,
            max_queued,
            max_wait: Duration::from_millis(wait_ms),
        }
    }

    /// Searches computing now.
    pub fn running(&self) -> usize {
        self.max_running - self.running.available_permits()
    }

    /// Searches waiting for a slot now.
    pub fn waiting(&self) -> usize {
        self.max_queued - self.queue.available_permits()
    }

    /// Runs `work` on the blocking pool once a slot is free. The slot is
    /// held until `work` returns, even when the caller stops waiting (a
    /// cancelled request still occupies a core until its scan ends).
    pub async fn run<T, F>(&self, work: F) -> Result<T, super::ServiceError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let permit = match self.running.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                let full = AdmissionError::Full {
                    running: self.max_running,
                    queued: self.max_queued,
                };
                let _slot = self.queue.try_acquire().map_err(|_| refused(full))?;
                let wait = self.running.clone().acquire_owned();
                match tokio::time::timeout(self.max_wait, wait).await {
                    Ok(Ok(p)) => p,
                    // The semaphore is never closed; treat it as a timeout.
                    Ok(Err(_)) | Err(_) => {
                        return Err(refused(AdmissionError::Waited(
                            self.max_wait.as_millis() as u64
                        )))
                    }
                }
            }
        };
        // The blocking pool does not inherit the request span: carry it,
        // so the work's stage spans nest under it.
        let request = tracing::Span::current();
        let out = tokio::task::spawn_blocking(move || {
            let _request = request.enter();
            let _permit = permit;
            let _gauge = RunningGauge::new();
            work()
        })
        .await?;
        Ok(out)
    }
}

/// Counts a search in `search_running` while alive, panics included.
struct RunningGauge;

impl RunningGauge {
    fn new() -> Self {
        metrics().search_running.inc();
        Self
    }
}

impl Drop for RunningGauge {
    fn drop(&mut self) {
        metrics().search_running.dec();
    }
}

fn refused(e: AdmissionError) -> super::ServiceError {
    metrics().search_refusals.inc();
    super::ServiceError::Admission(e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::Kind;

    fn admission(running: usize, queued: usize, wait_ms: u64) -> Arc<SearchAdmission> {
        Arc::new(SearchAdmission::new(AdmissionConfig {
            max_running: running,
            max_queued: queued,
            max_wait_ms: wait_ms,
        }))
    }

    /// Starts a search that runs until `release` is dropped or sent to;
    /// returns once it is computing.
    async fn occupy(
        a: &Arc<SearchAdmission>,
    ) -> (
        std::sync::mpsc::Sender<()>,
        tokio::task::JoinHandle<Result<u32, crate::query::ServiceError>>,
    ) {
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let (started, is_started) = tokio::sync::oneshot::channel();
        let a = a.clone();
        let task = tokio::spawn(async move {
            a.run(move || {
                started.send(()).unwrap();
                let _ = wait.recv();
                7
            })
            .await
        });
        is_started.await.unwrap();
        (release, task)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn full_is_refused_at_once_and_service_recovers() {
        let a = admission(2, 1, 60_000);
        let (r1, t1) = occupy(&a).await;
        let (r2, t2) = occupy(&a).await;
        assert_eq!(a.running(), 2);
        // One may wait: it is admitted when a slot frees.
        let waiting = {
            let a = a.clone();
            tokio::spawn(async move { a.run(|| 8).await })
        };
        // Wait for the waiter to take the queue slot (it then blocks on the
        // running semaphore), without sleeping for a guessed time.
        while a.queue.available_permits() != 0 {
            tokio::task::yield_now().await;
        }
        // The queue is full too: refused at once, despite the 60 s wait.
        let t = std::time::Instant::now();
        let err = a.run(|| 9).await.unwrap_err();
        assert!(t.elapsed() < Duration::from_secs(30));
        assert_eq!(err.kind(), Kind::Overloaded);
        assert!(err.kind().retryable());
        assert!(err.to_string().contains("retry later"), "{err}");
        assert!(err.to_string().contains("2 searches running"), "{err}");

        r1.send(()).unwrap();
        assert_eq!(t1.await.unwrap().unwrap(), 7);
        assert_eq!(waiting.await.unwrap().unwrap(), 8);
        r2.send(()).unwrap();
        assert_eq!(t2.await.unwrap().unwrap(), 7);
        // Recovered: every slot free, new work admitted at once.
        assert_eq!(a.running(), 0);
        assert_eq!(a.run(|| 10).await.unwrap(), 10);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_wait_past_the_bound_is_refused() {
        let a = admission(1, 4, 20);
        let (r1, t1) = occupy(&a).await;
        let err = a.run(|| 1).await.unwrap_err();
        assert_eq!(err.kind(), Kind::Overloaded);
        assert!(err.to_string().contains("20 ms"), "{err}");
        // The refused waiter gave its queue slot back.
        assert_eq!(a.queue.available_permits(), 4);
        r1.send(()).unwrap();
        t1.await.unwrap().unwrap();
        assert_eq!(a.run(|| 2).await.unwrap(), 2);
    }

    #[test]
    fn zeros_take_defaults_tied_to_cores() {
        let a = SearchAdmission::new(AdmissionConfig::default());
        let cores = std::thread::available_parallelism().unwrap().get();
        assert_eq!((a.max_running, a.max_queued), (cores, 4 * cores));
        assert_eq!(a.max_wait, Duration::from_secs(1));
    }
}
