//! What the server reports as its health, in one place: grpc.health.v1
//! (the overall "" entry and `lookalike.v1.Retrieval`) and the admin
//! port's /healthz read the same state. NOT_SERVING as soon as shutdown
//! starts, and when an inference worker dies (the engine cannot recover
//! without a restart, so the pod should leave the load balancer and be
//! restarted rather than answer errors).

use tokio::sync::watch;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

/// The service name probes and clients check.
pub const RETRIEVAL: &str = "lookalike.v1.Retrieval";

/// Two states: `serving` (the process can answer at all: the overall ""
/// entry and /livez, what liveness probes ask) and, within it, `ready`
/// (a cluster replica has caught up: `lookalike.v1.Retrieval` and
/// /healthz, what readiness asks). A single node is always ready.
#[derive(Clone)]
pub struct Health {
    reporter: HealthReporter,
    serving: watch::Sender<bool>,
    ready: watch::Sender<bool>,
}

impl Health {
    pub async fn new(reporter: HealthReporter) -> Self {
        let h = Self {
            reporter,
            serving: watch::Sender::new(true),
            ready: watch::Sender::new(true),
        };
        h.set(true, "started").await;
        h
    }

    pub async fn set(&self, serving: bool, why: &str) {
        if self.serving.send_replace(serving) != serving {
            tracing::info!(serving, why, "health changed");
        }
        self.report().await;
    }

    async fn set_ready(&self, ready: bool, why: &str) {
        if self.ready.send_replace(ready) != ready {
            tracing::info!(ready, why, "readiness changed");
        }
        self.report().await;
    }

    async fn report(&self) {
        let status = |up: bool| {
            if up {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            }
        };
        let (live, ready) = (self.is_serving(), self.is_ready());
        self.reporter.set_service_status("", status(live)).await;
        self.reporter
            .set_service_status(RETRIEVAL, status(ready))
            .await;
    }

    /// Alive: the process can answer (liveness).
    pub fn is_serving(&self) -> bool {
        *self.serving.borrow()
    }

    /// Alive and caught up (readiness).
    pub fn is_ready(&self) -> bool {
        self.is_serving() && *self.ready.borrow()
    }

    /// A cluster replica: not ready until it has caught up with every
    /// gallery's stream (it serves its own copy meanwhile, but a load
    /// balancer should not send it traffic yet); alive throughout.
    pub async fn follow_replication(&self, mut ready: watch::Receiver<bool>) {
        if *ready.borrow() {
            return;
        }
        self.set_ready(false, "catching up with the cluster").await;
        let health = self.clone();
        tokio::spawn(async move {
            if ready.wait_for(|r| *r).await.is_ok() {
                health.set_ready(true, "caught up with the cluster").await;
            }
        });
    }

    /// Turns NOT_SERVING for good once the engine reports a dead worker.
    pub fn follow_engine(&self, mut engine_ok: watch::Receiver<bool>) {
        let health = self.clone();
        tokio::spawn(async move {
            if engine_ok.wait_for(|ok| !ok).await.is_ok() {
                tracing::error!("an inference worker died; reporting NOT_SERVING");
                health.set(false, "inference worker died").await;
            }
        });
    }
}
