//! The training images at the serving resize: decoded once and kept in memory while
//! they fit the budget (`--cache-mb`); the rest are decoded again from disk for each
//! batch that uses them. Either way a batch sees the same pixels, so the budget
//! changes speed, never the run.
use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use image::RgbImage;
use rayon::prelude::*;

use crate::train::error::Result;
use crate::train::loader::load_resized;

pub struct Images {
    paths: Vec<PathBuf>,
    resize: u32,
    kept: Vec<Option<RgbImage>>,
    bytes: usize,
}

impl Images {
    /// Decodes every image once (a broken file fails here, not mid-run) and keeps
    /// those that fit in `budget` bytes.
    pub fn load(paths: &[&Path], resize: u32, budget: usize) -> Result<Self> {
        let used = AtomicUsize::new(0);
        let kept = paths
            .par_iter()
            .map(|p| {
                let img = load_resized(p, resize)?;
                let size = img.as_raw().len();
                let fits = used
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                        (u + size <= budget).then_some(u + size)
                    })
                    .is_ok();
                Ok(fits.then_some(img))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            paths: paths.iter().map(|p| p.to_path_buf()).collect(),
            resize,
            kept,
            bytes: used.into_inner(),
        })
    }

    pub fn get(&self, i: usize) -> Result<Cow<'_, RgbImage>> {
        match &self.kept[i] {
            Some(img) => Ok(Cow::Borrowed(img)),
            None => load_resized(&self.paths[i], self.resize).map(Cow::Owned),
        }
    }

    pub fn len(&self) -> usize {
        self.paths.len()
    }

    /// How many are held in memory, and their bytes.
    pub fn cached(&self) -> (usize, usize) {
        (self.kept.iter().flatten().count(), self.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn photos(dir: &Path) -> Vec<PathBuf> {
        (0..6u8)
            .map(|i| {
                let p = dir.join(format!("{i}.png"));
                let img = RgbImage::from_fn(40 + u32::from(i) * 7, 30, |x, y| {
                    image::Rgb([i * 40, (x * 5) as u8, (y * 7) as u8])
                });
                img.save(&p).unwrap();
                p
            })
            .collect()
    }

    #[test]
    fn the_budget_bounds_what_is_kept_and_the_rest_reads_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let paths = photos(dir.path());
        let refs: Vec<&Path> = paths.iter().map(PathBuf::as_path).collect();
        let all = Images::load(&refs, 24, usize::MAX).unwrap();
        assert_eq!(all.cached().0, 6);
        let one = all.get(0).unwrap().as_raw().len();
        for budget in [0, one, 3 * one + 1] {
            let some = Images::load(&refs, 24, budget).unwrap();
            let (n, bytes) = some.cached();
            assert!(bytes <= budget, "{bytes} > {budget}");
            assert!(n < 6, "budget {budget} kept all");
            for i in 0..6 {
                assert_eq!(*some.get(i).unwrap(), *all.get(i).unwrap(), "image {i}");
            }
        }
        assert_eq!(Images::load(&refs, 24, 0).unwrap().cached(), (0, 0));
    }
}
