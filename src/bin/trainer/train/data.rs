//! Labelled images from a folder per class or a list file, and the seeded split into
//! training and validation parts.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::train::config::SplitKind;
use crate::train::error::{Result, TrainError};

const IMAGE_EXTENSIONS: [&str; 6] = ["jpg", "jpeg", "png", "webp", "bmp", "gif"];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub path: PathBuf,
    /// Index into `Dataset::classes`.
    pub class: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dataset {
    pub samples: Vec<Sample>,
    /// Class names, sorted.
    pub classes: Vec<String>,
}

impl Dataset {
    /// A folder (one sub-folder per class, images anywhere below it, the class being the
    /// image's parent folder relative to the root) or a list file.
    pub fn load(path: &Path) -> Result<Self> {
        let labelled = if path.is_dir() {
            folder_samples(path)?
        } else {
            list_samples(path)?
        };
        if labelled.is_empty() {
            return Err(TrainError::Data(format!("no images in {}", path.display())));
        }
        Ok(Self::from_labelled(labelled))
    }

    fn from_labelled(labelled: Vec<(PathBuf, String)>) -> Self {
        let mut classes: Vec<String> = labelled.iter().map(|(_, l)| l.clone()).collect();
        classes.sort();
        classes.dedup();
        let index: BTreeMap<&str, usize> = classes
            .iter()
            .enumerate()
            .map(|(i, c)| (c.as_str(), i))
            .collect();
        let samples = labelled
            .iter()
            .map(|(p, l)| Sample {
                path: p.clone(),
                class: index[l.as_str()],
            })
            .collect();
        Self { samples, classes }
    }
}

/// `path,label[,...]` per line (the grocery `.txt` form); paths relative to the file.
fn list_samples(path: &Path) -> Result<Vec<(PathBuf, String)>> {
    let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
    let base = path.parent().unwrap_or(Path::new("."));
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut parts = line.split(',').map(str::trim);
        let (Some(p), Some(label)) = (parts.next(), parts.next()) else {
            return Err(TrainError::List {
                path: path.to_path_buf(),
                line: i + 1,
                msg: "expected `path,label`".into(),
            });
        };
        if p.is_empty() || label.is_empty() {
            return Err(TrainError::List {
                path: path.to_path_buf(),
                line: i + 1,
                msg: "empty path or label".into(),
            });
        }
        out.push((base.join(p), label.to_string()));
    }
    Ok(out)
}

fn folder_samples(root: &Path) -> Result<Vec<(PathBuf, String)>> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|e| TrainError::io(&dir, e))?;
        for e in entries {
            let p = e.map_err(|e| TrainError::io(&dir, e))?.path();
            if p.is_dir() {
                stack.push(p);
            } else if is_image(&p) && dir != root {
                let class = dir.strip_prefix(root).unwrap_or(&dir);
                out.push((p.clone(), class.to_string_lossy().into_owned()));
            }
        }
    }
    out.sort();
    Ok(out)
}

fn is_image(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// Sample indices of each part; training labels are dense over the training classes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Split {
    /// (sample index, training label).
    pub train: Vec<(usize, usize)>,
    pub val: Vec<usize>,
    pub train_classes: usize,
}

/// Seeded split. Per class: `round(n * fraction)` of each class's images go to
/// validation, at least one stays for training. Classes: that fraction of the classes,
/// all their images.
pub fn split(ds: &Dataset, kind: SplitKind, fraction: f64, seed: u64) -> Result<Split> {
    if !(0.0..1.0).contains(&fraction) {
        return Err(TrainError::InvalidOption(format!(
            "val fraction {fraction} not in [0, 1)"
        )));
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); ds.classes.len()];
    for (i, s) in ds.samples.iter().enumerate() {
        by_class[s.class].push(i);
    }
    let mut train_of_class: Vec<Vec<usize>> = vec![Vec::new(); ds.classes.len()];
    let mut val = Vec::new();
    match kind {
        SplitKind::PerClass => {
            for (c, idx) in by_class.iter_mut().enumerate() {
                idx.shuffle(&mut rng);
                let k = ((idx.len() as f64 * fraction).round() as usize)
                    .min(idx.len().saturating_sub(1));
                val.extend_from_slice(&idx[..k]);
                train_of_class[c] = idx[k..].to_vec();
            }
        }
        SplitKind::Classes => {
            let mut order: Vec<usize> = (0..ds.classes.len()).collect();
            order.shuffle(&mut rng);
            let k = (order.len() as f64 * fraction).round() as usize;
            for (j, &c) in order.iter().enumerate() {
                if j < k {
                    val.extend_from_slice(&by_class[c]);
                } else {
                    train_of_class[c] = by_class[c].clone();
                }
            }
        }
    }
    val.sort_unstable();
    let mut train = Vec::new();
    let mut label = 0;
    for idx in &train_of_class {
        if idx.is_empty() {
            continue;
        }
        train.extend(idx.iter().map(|&i| (i, label)));
        label += 1;
    }
    train.sort_unstable();
    if train.is_empty() {
        return Err(TrainError::Data(
            "no training images after the split".into(),
        ));
    }
    Ok(Split {
        train,
        val,
        train_classes: label,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toy(n_classes: usize, per: usize) -> Dataset {
        Dataset::from_labelled(
            (0..n_classes * per)
                .map(|i| {
                    (
                        PathBuf::from(format!("{i}.jpg")),
                        format!("c{}", i % n_classes),
                    )
                })
                .collect(),
        )
    }

    #[test]
    fn list_file_parses_grocery_form_and_rejects_bad_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("l.txt");
        std::fs::write(&p, "a/x.jpg, 3, 0\nb/y.jpg,1\n\n").unwrap();
        let ds = Dataset::load(&p).unwrap();
        assert_eq!(ds.classes, vec!["1", "3"]);
        assert_eq!(ds.samples[0].path, dir.path().join("a/x.jpg"));
        assert_eq!(ds.samples[0].class, 1);
        std::fs::write(&p, "a.jpg\n").unwrap();
        let err = Dataset::load(&p).unwrap_err().to_string();
        assert!(err.contains(":1:"), "{err}");
    }

    #[test]
    fn per_class_split_holds_out_a_quarter_of_each_class_reproducibly() {
        let ds = toy(3, 8);
        let s = split(&ds, SplitKind::PerClass, 0.25, 7).unwrap();
        assert_eq!(s.val.len(), 6);
        assert_eq!(s.train.len(), 18);
        assert_eq!(s.train_classes, 3);
        for c in 0..3 {
            let v = s.val.iter().filter(|&&i| ds.samples[i].class == c).count();
            assert_eq!(v, 2, "class {c}");
        }
        assert_eq!(s, split(&ds, SplitKind::PerClass, 0.25, 7).unwrap());
        assert_ne!(s.val, split(&ds, SplitKind::PerClass, 0.25, 8).unwrap().val);
    }

    #[test]
    fn class_split_is_disjoint() {
        let ds = toy(8, 3);
        let s = split(&ds, SplitKind::Classes, 0.5, 1).unwrap();
        assert_eq!(s.train_classes, 4);
        let val_classes: Vec<usize> = s.val.iter().map(|&i| ds.samples[i].class).collect();
        assert!(s
            .train
            .iter()
            .all(|(i, _)| !val_classes.contains(&ds.samples[*i].class)));
        assert!(s.train.iter().all(|&(_, l)| l < 4));
    }
}
