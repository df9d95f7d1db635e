//! Batches made ahead of the training step on loader threads from the resized images
//! ([`Images`]), each batch's order and augmentation a pure function of
//! (seed, epoch, step), so a resumed run sees exactly the batches it would have seen.
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{bounded, Receiver};
use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::RgbImage;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::SeedableRng;

use crate::train::augment::{augment, AugmentConfig, Target};
use crate::train::error::{Result, TrainError};
use crate::train::images::Images;
use lookalike::embed::preprocess::{decode, DecodeLimits};

/// A 64-bit mix of several counters (splitmix64 steps), for per-item RNG seeds.
pub fn mix(parts: &[u64]) -> u64 {
    let mut h: u64 = 0x9E37_79B9_7F4A_7C15;
    for &p in parts {
        h ^= p.wrapping_add(0x9E37_79B9_7F4A_7C15).wrapping_add(h << 6);
        h = (h ^ (h >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        h = (h ^ (h >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        h ^= h >> 31;
    }
    h
}

/// Decodes like the server (EXIF orientation, RGB) and resizes the shorter side to `resize`.
pub fn load_resized(path: &Path, resize: u32) -> Result<RgbImage> {
    let bytes = std::fs::read(path).map_err(|e| TrainError::io(path, e))?;
    let img = decode(&bytes, &DecodeLimits::default()).map_err(|source| TrainError::Image {
        path: path.to_path_buf(),
        source,
    })?;
    let (w, h) = img.dimensions();
    let s = resize as f64 / w.min(h) as f64;
    let (nw, nh) = (
        ((w as f64 * s).round() as u32).max(resize),
        ((h as f64 * s).round() as u32).max(resize),
    );
    let fail =
        |e: &dyn std::fmt::Display| TrainError::Data(format!("{}: resize: {e}", path.display()));
    let src = ImageRef::new(w, h, img.as_raw(), PixelType::U8x3).map_err(|e| fail(&e))?;
    let mut dst = Image::new(nw, nh, PixelType::U8x3);
    let opts = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear));
    Resizer::new()
        .resize(&src, &mut dst, &opts)
        .map_err(|e| fail(&e))?;
    RgbImage::from_raw(nw, nh, dst.into_vec())
        .ok_or_else(|| TrainError::Data(format!("{}: resize produced no image", path.display())))
}

/// The batches of one epoch: (cache index, label) pairs; the last partial batch is
/// dropped (batch norm needs at least 2 samples). `per_class > 0`: each batch holds
/// `batch / per_class` random classes with `per_class` images each.
pub fn epoch_batches(
    items: &[(usize, usize)],
    batch: usize,
    per_class: usize,
    seed: u64,
    epoch: usize,
) -> Vec<Vec<(usize, usize)>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(mix(&[seed, epoch as u64, 1]));
    let steps = items.len() / batch.max(1);
    if per_class == 0 {
        let mut order = items.to_vec();
        order.shuffle(&mut rng);
        return order
            .chunks_exact(batch)
            .take(steps)
            .map(<[_]>::to_vec)
            .collect();
    }
    let mut by_class: BTreeMap<usize, Vec<(usize, usize)>> = BTreeMap::new();
    for &it in items {
        by_class.entry(it.1).or_default().push(it);
    }
    let classes: Vec<&Vec<(usize, usize)>> = by_class.values().collect();
    let per_batch = (batch / per_class).clamp(1, classes.len());
    (0..steps)
        .map(|_| {
            let mut b = Vec::with_capacity(batch);
            for imgs in classes.choose_multiple(&mut rng, per_batch) {
                if imgs.len() >= per_class {
                    b.extend(imgs.choose_multiple(&mut rng, per_class).copied());
                } else {
                    b.extend((0..per_class).filter_map(|_| imgs.choose(&mut rng).copied()));
                }
            }
            b
        })
        .collect()
}

pub struct Batch {
    pub step: usize,
    /// [n, 3, size, size] normalised.
    pub images: Vec<f32>,
    pub labels: Vec<i64>,
}

pub struct Loader {
    rx: Receiver<(usize, Result<Batch>)>,
    pending: BTreeMap<usize, Result<Batch>>,
    next: usize,
    total: usize,
    workers: Vec<JoinHandle<()>>,
}

pub struct LoaderSpec {
    pub images: Arc<Images>,
    pub augment: Arc<AugmentConfig>,
    pub target: Target,
    pub seed: u64,
    pub workers: usize,
}

impl Loader {
    /// Produces `batches[i]` (global step, items) in order, up to 2 per worker ahead.
    pub fn start(spec: LoaderSpec, batches: Vec<(usize, Vec<(usize, usize)>)>) -> Self {
        let workers = spec.workers.max(1);
        let (tx, rx) = bounded(2 * workers);
        let batches = Arc::new(batches);
        let counter = Arc::new(AtomicUsize::new(0));
        let spec = Arc::new(spec);
        let handles = (0..workers)
            .map(|_| {
                let (tx, batches, counter, spec) =
                    (tx.clone(), batches.clone(), counter.clone(), spec.clone());
                std::thread::spawn(move || loop {
                    let i = counter.fetch_add(1, Ordering::Relaxed);
                    let Some((step, items)) = batches.get(i) else {
                        return;
                    };
                    let b = make_batch(&spec, *step, items);
                    if tx.send((i, b)).is_err() {
                        return;
                    }
                })
            })
            .collect();
        Self {
            rx,
            pending: BTreeMap::new(),
            next: 0,
            total: batches.len(),
            workers: handles,
        }
    }
}

impl Iterator for Loader {
    /// Err: an image that could not be read again from disk.
    type Item = Result<Batch>;
    fn next(&mut self) -> Option<Result<Batch>> {
        if self.next >= self.total {
            return None;
        }
        while !self.pending.contains_key(&self.next) {
            let (i, b) = self.rx.recv().ok()?;
            self.pending.insert(i, b);
        }
        let b = self.pending.remove(&self.next);
        self.next += 1;
        b
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        // Unblock senders, then wait for the threads.
        let rx = std::mem::replace(&mut self.rx, bounded(0).1);
        drop(rx);
        for h in self.workers.drain(..) {
            let _ = h.join();
        }
    }
}

fn make_batch(spec: &LoaderSpec, step: usize, items: &[(usize, usize)]) -> Result<Batch> {
    let s = spec.target.size as usize;
    let per = 3 * s * s;
    let mut images = vec![0.0; items.len() * per];
    for (j, ((idx, _), out)) in items.iter().zip(images.chunks_exact_mut(per)).enumerate() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(mix(&[spec.seed, step as u64, j as u64]));
        augment(
            &*spec.images.get(*idx)?,
            &spec.augment,
            &spec.target,
            &mut rng,
            out,
        );
    }
    Ok(Batch {
        step,
        images,
        labels: items.iter().map(|&(_, l)| l as i64).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_are_seeded_shuffles_without_partial_batches() {
        let items: Vec<(usize, usize)> = (0..10).map(|i| (i, i % 3)).collect();
        let a = epoch_batches(&items, 4, 0, 1, 0);
        assert_eq!(a.len(), 2);
        assert!(a.iter().all(|b| b.len() == 4));
        assert_eq!(a, epoch_batches(&items, 4, 0, 1, 0));
        assert_ne!(a, epoch_batches(&items, 4, 0, 1, 1));
    }

    #[test]
    fn balanced_batches_hold_m_images_of_each_class() {
        let items: Vec<(usize, usize)> = (0..30).map(|i| (i, i % 5)).collect();
        for b in epoch_batches(&items, 6, 2, 3, 0) {
            let mut counts = BTreeMap::new();
            for (_, l) in &b {
                *counts.entry(*l).or_insert(0) += 1;
            }
            assert_eq!(counts.len(), 3);
            assert!(counts.values().all(|&c| c == 2));
        }
    }
}
