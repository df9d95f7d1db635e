//! Which fast paths a computation took, so that a test about a fast path
//! can assert that it ran. `hit` compiles to nothing outside tests.
//!
//! Counting is scoped to the rayon pool that `traced` builds: only its
//! worker threads carry the tag, so tests running side by side never see
//! each other's counts.

/// A fast path of the stages in `crate::rerank`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Path {
    /// `knn::screen`: a block of rows screened by the f32 GEMM.
    ScreenBlock,
    /// A screened block in which the f32 bound ruled out at least one
    /// exact distance computation (the screen did filter).
    ScreenRejected,
    /// `knn::screen_self`: a block pair on the diagonal.
    SelfDiagonalBlock,
    /// `knn::screen_self`: an off-diagonal block pair, also used transposed.
    SelfOffDiagonalBlock,
    /// KR's final top-n screened with approximate distances.
    KrScreenedTop,
    /// KR's final top-n computed exactly for every gallery item.
    KrExactTop,
    /// `kr_single` read items' prepared lists (q not merged into them).
    KrStoredLists,
    /// PCA fitted through the n x n Gram matrix (n <= dims).
    PcaGram,
    /// PCA fitted through the dims x dims scatter matrix.
    PcaScatter,
}

#[inline]
pub(crate) fn hit(_path: Path) {
    #[cfg(test)]
    imp::hit(_path);
}

#[cfg(test)]
pub(crate) use imp::{traced, Counts};

#[cfg(test)]
mod imp {
    use std::cell::Cell;
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    use super::Path;

    thread_local! {
        static TAG: Cell<Option<usize>> = const { Cell::new(None) };
    }
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    static COUNTS: Mutex<Vec<(usize, Path)>> = Mutex::new(Vec::new());

    pub(super) fn hit(path: Path) {
        if let Some(tag) = TAG.with(Cell::get) {
            if let Ok(mut c) = COUNTS.lock() {
                c.push((tag, path));
            }
        }
    }

    /// How often each path ran inside one `traced` call.
    #[derive(Debug, Default)]
    pub(crate) struct Counts(HashMap<Path, usize>);

    impl Counts {
        pub(crate) fn of(&self, p: Path) -> usize {
            self.0.get(&p).copied().unwrap_or(0)
        }
    }

    /// Runs `f` on a fresh two-thread rayon pool whose threads count the
    /// paths taken (parallel code inside `f` runs on that pool too).
    pub(crate) fn traced<R: Send>(f: impl FnOnce() -> R + Send) -> (R, Counts) {
        let tag = NEXT.fetch_add(1, Ordering::Relaxed);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .start_handler(move |_| TAG.with(|t| t.set(Some(tag))))
            .build()
            .expect("test thread pool");
        let out = pool.install(f);
        drop(pool);
        let mut counts = Counts::default();
        if let Ok(mut all) = COUNTS.lock() {
            all.retain(|&(t, p)| {
                if t == tag {
                    *counts.0.entry(p).or_insert(0) += 1;
                }
                t != tag
            });
        }
        (out, counts)
    }
}
