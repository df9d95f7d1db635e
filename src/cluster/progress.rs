//! How far this replica has applied each gallery's stream: what
//! read-your-writes waits on, what GalleryStats and /metrics report, and
//! what readiness follows (not ready until every gallery has reached the
//! end its stream had when this replica started applying it).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use tokio::sync::watch;

use crate::telemetry::metrics::metrics;

/// One gallery's apply position on this replica.
pub struct Track {
    gallery: String,
    applied: watch::Sender<u64>,
    /// Stream messages past `applied` (the consumer's pending count).
    lag: AtomicU64,
    /// The stream's last sequence when applying started: reached once,
    /// the gallery counts as caught up.
    target: AtomicU64,
    caught_up: AtomicBool,
}

impl Track {
    pub fn applied(&self) -> u64 {
        *self.applied.borrow()
    }

    pub fn lag(&self) -> u64 {
        self.lag.load(Ordering::Relaxed)
    }

    pub fn caught_up(&self) -> bool {
        self.caught_up.load(Ordering::Relaxed)
    }

    /// The stream's last sequence as seen when (re)starting to apply it.
    pub fn set_target(&self, last: u64) {
        self.target.store(last, Ordering::Relaxed);
        self.lag
            .store(last.saturating_sub(self.applied()), Ordering::Relaxed);
        self.check();
    }

    /// Applied through `seq`, with `pending` messages after it.
    pub fn advance(&self, seq: u64, pending: u64) {
        self.applied.send_if_modified(|a| {
            let moved = seq > *a;
            *a = (*a).max(seq);
            moved
        });
        self.lag.store(pending, Ordering::Relaxed);
        self.check();
    }

    fn check(&self) {
        if self.applied() >= self.target.load(Ordering::Relaxed) {
            self.caught_up.store(true, Ordering::Relaxed);
        }
        let m = metrics();
        m.replication_applied
            .with_label_values(&[&self.gallery])
            .set(self.applied() as i64);
        m.replication_lag
            .with_label_values(&[&self.gallery])
            .set(self.lag() as i64);
    }

    /// Waits up to `timeout` for `seq` to be applied; Err: the sequence
    /// applied when the wait gave up.
    pub async fn wait_for(&self, seq: u64, timeout: Duration) -> Result<(), u64> {
        let mut rx = self.applied.subscribe();
        let reached = tokio::time::timeout(timeout, rx.wait_for(|a| *a >= seq))
            .await
            .is_ok_and(|r| r.is_ok());
        if reached {
            Ok(())
        } else {
            Err(self.applied())
        }
    }
}

/// Every replicated gallery's track, and this replica's readiness.
pub struct Progress {
    tracks: RwLock<HashMap<String, Arc<Track>>>,
    /// Set once the gallery definitions were read and reconciled.
    catalog_loaded: AtomicBool,
    ready: watch::Sender<bool>,
}

impl Default for Progress {
    fn default() -> Self {
        Self {
            tracks: RwLock::default(),
            catalog_loaded: AtomicBool::new(false),
            ready: watch::Sender::new(false),
        }
    }
}

impl Progress {
    pub fn get(&self, gallery: &str) -> Option<Arc<Track>> {
        self.tracks.read().get(gallery).cloned()
    }

    /// A new track for `gallery`, applied through `applied`; it replaces
    /// any earlier one (a new incarnation starts over).
    pub fn start(&self, gallery: &str, applied: u64) -> Arc<Track> {
        let t = Arc::new(Track {
            gallery: gallery.to_string(),
            applied: watch::Sender::new(applied),
            lag: AtomicU64::new(0),
            target: AtomicU64::new(u64::MAX),
            caught_up: AtomicBool::new(false),
        });
        self.tracks.write().insert(gallery.to_string(), t.clone());
        self.recheck();
        t
    }

    pub fn stop(&self, gallery: &str) {
        self.tracks.write().remove(gallery);
        let m = metrics();
        let _ = m.replication_applied.remove_label_values(&[gallery]);
        let _ = m.replication_lag.remove_label_values(&[gallery]);
        self.recheck();
    }

    pub fn catalog_loaded(&self) {
        self.catalog_loaded.store(true, Ordering::Relaxed);
        self.recheck();
    }

    /// Ready once the catalog is loaded and every gallery caught up.
    pub fn recheck(&self) {
        let ready = self.catalog_loaded.load(Ordering::Relaxed)
            && self.tracks.read().values().all(|t| t.caught_up());
        self.ready
            .send_if_modified(|r| std::mem::replace(r, ready) != ready);
    }

    pub fn ready(&self) -> watch::Receiver<bool> {
        self.ready.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ready_after_the_catalog_and_every_gallery_caught_up() {
        let p = Progress::default();
        let a = p.start("a", 3);
        a.set_target(5);
        p.catalog_loaded();
        assert!(!*p.ready().borrow(), "a is behind");
        assert_eq!(a.lag(), 2);
        assert_eq!(a.wait_for(5, Duration::from_millis(10)).await, Err(3));
        a.advance(5, 0);
        p.recheck();
        assert!(*p.ready().borrow());
        assert_eq!(a.wait_for(4, Duration::ZERO).await, Ok(()));
        // Applied never goes back (a restarted consumer may resend).
        a.advance(4, 0);
        assert_eq!(a.applied(), 5);
        let b = p.start("b", 0);
        assert!(!*p.ready().borrow(), "b has no target yet");
        b.set_target(0);
        p.recheck();
        assert!(*p.ready().borrow());
    }
}
