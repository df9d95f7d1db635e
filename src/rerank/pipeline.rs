//! An ordered list of post-processing stages for `lookalike eval`: runs any
//! subset of the stages in the spec's order and keeps the ranking after
//! each one, so every step can be scored.
//!
//! Canonical order (a stage list must be a subsequence of it):
//! `pca, gallery-dba, kr, aqe, alpha-qe, query-dba, gallery-aqe, kr`.
//! Gallery DBA sits before search as in the service (applied at index
//! time); the rest is section 4's order. Query-side stages (aqe, alpha-qe,
//! query-dba) take their top-k from the ranking of the last KR stage, or
//! the Euclidean ranking before them when there is none (as steps 4-5 both
//! use step 3's ranking). The ranking reported after a descriptor stage is
//! the Euclidean ranking of the new descriptors.

use std::fmt;
use std::str::FromStr;

use ndarray::{Array2, ArrayView2};
use serde::{Deserialize, Serialize};

use super::aqe::{alpha_qe, aqe, gallery_aqe};
use super::dba::{gallery_dba, query_dba};
use super::knn::{check_pair, knn_d2};
use super::kreciprocal::{k_reciprocal, KrParams, Ranked};
use super::pca::Pca;
use super::{Ranking, RerankError};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Stage {
    Pca { dims: usize },
    Kr { k1: usize, k2: usize, lambda: f64 },
    Aqe { k: usize },
    AlphaQe { k: usize, alpha: f64 },
    QueryDba { k: usize },
    GalleryDba { k: usize },
    GalleryAqe { k: usize },
}

impl Stage {
    /// Canonical slots this stage may take.
    fn slots(&self) -> &'static [u8] {
        match self {
            Stage::Pca { .. } => &[0],
            Stage::GalleryDba { .. } => &[1],
            Stage::Kr { .. } => &[2, 7],
            Stage::Aqe { .. } => &[3],
            Stage::AlphaQe { .. } => &[4],
            Stage::QueryDba { .. } => &[5],
            Stage::GalleryAqe { .. } => &[6],
        }
    }

    /// k of a query-side stage (needs that many ranked results).
    fn query_k(&self) -> usize {
        match *self {
            Stage::Aqe { k } | Stage::AlphaQe { k, .. } | Stage::QueryDba { k } => k,
            _ => 0,
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stage::Pca { dims } => write!(f, "pca:dims={dims}"),
            Stage::Kr { k1, k2, lambda } => write!(f, "kr:k1={k1},k2={k2},lambda={lambda}"),
            Stage::Aqe { k } => write!(f, "aqe:k={k}"),
            Stage::AlphaQe { k, alpha } => write!(f, "alpha-qe:k={k},alpha={alpha}"),
            Stage::QueryDba { k } => write!(f, "query-dba:k={k}"),
            Stage::GalleryDba { k } => write!(f, "gallery-dba:k={k}"),
            Stage::GalleryAqe { k } => write!(f, "gallery-aqe:k={k}"),
        }
    }
}

impl FromStr for Stage {
    type Err = RerankError;

    /// `name[:key=value,...]`; omitted keys take the spec's defaults
    /// (alpha-qe has no default k and needs one).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason: String| RerankError::Parse {
            input: s.to_string(),
            reason,
        };
        let (name, args) = s.trim().split_once(':').unwrap_or((s.trim(), ""));
        let mut kv: Vec<(String, String)> = Vec::new();
        for a in args.split(',').map(str::trim).filter(|a| !a.is_empty()) {
            let (k, v) = a
                .split_once('=')
                .ok_or_else(|| err(format!("expected key=value, got {a:?}")))?;
            kv.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
        let allowed: &[&str] = match name.to_ascii_lowercase().as_str() {
            "pca" => &["dims"],
            "kr" => &["k1", "k2", "lambda"],
            "aqe" | "query-dba" | "gallery-dba" | "gallery-aqe" => &["k"],
            "alpha-qe" => &["k", "alpha"],
            other => return Err(err(format!("unknown stage {other:?}"))),
        };
        if let Some((k, _)) = kv.iter().find(|(k, _)| !allowed.contains(&k.as_str())) {
            return Err(err(format!("unknown key {k:?}")));
        }
        let get = |key: &str| {
            kv.iter()
                .rev()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
        };
        let int = |key: &str, def: Option<usize>| -> Result<usize, RerankError> {
            match get(key) {
                Some(v) => v
                    .parse()
                    .map_err(|_| err(format!("{key}={v:?} is not an integer"))),
                None => def.ok_or_else(|| err(format!("missing {key}"))),
            }
        };
        let float = |key: &str, def: f64| -> Result<f64, RerankError> {
            match get(key) {
                Some(v) => v
                    .parse()
                    .map_err(|_| err(format!("{key}={v:?} is not a number"))),
                None => Ok(def),
            }
        };
        let d = KrParams::default();
        Ok(match name.to_ascii_lowercase().as_str() {
            "pca" => Stage::Pca {
                dims: int("dims", Some(512))?,
            },
            "kr" => Stage::Kr {
                k1: int("k1", Some(d.k1))?,
                k2: int("k2", Some(d.k2))?,
                lambda: float("lambda", d.lambda)?,
            },
            "aqe" => Stage::Aqe {
                k: int("k", Some(1))?,
            },
            "alpha-qe" => Stage::AlphaQe {
                k: int("k", None)?,
                alpha: float("alpha", 3.0)?,
            },
            "query-dba" => Stage::QueryDba {
                k: int("k", Some(10))?,
            },
            "gallery-dba" => Stage::GalleryDba {
                k: int("k", Some(10))?,
            },
            _ => Stage::GalleryAqe {
                k: int("k", Some(1))?,
            },
        })
    }
}

impl TryFrom<String> for Stage {
    type Error = RerankError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Stage> for String {
    fn from(s: Stage) -> String {
        s.to_string()
    }
}

/// Parses `"pca:dims=512; kr; aqe:k=1"` (stages separated by `;`).
pub fn parse_stages(s: &str) -> Result<Vec<Stage>, RerankError> {
    s.split(';')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::parse)
        .collect()
}

/// The ranking after one stage (`stage: None` is the input's Euclidean
/// ranking), with each entry's distance: Euclidean on the stage's vectors,
/// or D* after KR.
#[derive(Debug, Clone, PartialEq)]
pub struct StageOutput {
    pub stage: Option<Stage>,
    pub ranking: Ranking,
    pub distances: Vec<Vec<f64>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Pipeline {
    stages: Vec<Stage>,
    top_n: usize,
    dba_renormalise: bool,
}

impl Pipeline {
    /// `top_n`: depth of each reported ranking (raised to the largest
    /// query-side k). `dba_renormalise`: the service's DBA (true) or the
    /// batch order's (false).
    pub fn new(
        stages: Vec<Stage>,
        top_n: usize,
        dba_renormalise: bool,
    ) -> Result<Self, RerankError> {
        super::check_k("pipeline", "top_n", top_n)?;
        let mut last: Option<u8> = None;
        for s in &stages {
            let slot = s
                .slots()
                .iter()
                .copied()
                .find(|&x| last.is_none_or(|l| x > l))
                .ok_or_else(|| RerankError::Parse {
                    input: s.to_string(),
                    reason: "out of order: stages must follow pca, gallery-dba, kr, aqe, alpha-qe, query-dba, gallery-aqe, kr".into(),
                })?;
            last = Some(slot);
        }
        Ok(Self {
            stages,
            top_n,
            dba_renormalise,
        })
    }

    /// Section 4's order (PCA 512, KR, AQE 1, DBA 10, gallery AQE 1, KR),
    /// top 10, no re-normalisation.
    pub fn digix() -> Self {
        let kr = KrParams::default();
        let kr = Stage::Kr {
            k1: kr.k1,
            k2: kr.k2,
            lambda: kr.lambda,
        };
        Self {
            stages: vec![
                Stage::Pca { dims: 512 },
                kr,
                Stage::Aqe { k: 1 },
                Stage::QueryDba { k: 10 },
                Stage::GalleryAqe { k: 1 },
                kr,
            ],
            top_n: 10,
            dba_renormalise: false,
        }
    }

    /// The same stages, reporting `top_n` per query (at least 1).
    pub fn with_top_n(mut self, top_n: usize) -> Self {
        self.top_n = top_n.max(1);
        self
    }

    pub fn stages(&self) -> &[Stage] {
        &self.stages
    }

    /// Runs the stages; the first output is the input's Euclidean ranking.
    pub fn run(
        &self,
        queries: ArrayView2<f32>,
        gallery: ArrayView2<f32>,
    ) -> Result<Vec<StageOutput>, RerankError> {
        let depth = self
            .stages
            .iter()
            .map(Stage::query_k)
            .fold(self.top_n, usize::max)
            .min(gallery.nrows().max(1));
        let mut q: Array2<f32> = queries.to_owned();
        let mut g: Array2<f32> = gallery.to_owned();
        let euclid = |q: &Array2<f32>, g: &Array2<f32>| -> Result<Ranked, RerankError> {
            check_pair(q.view(), g.view())?;
            let (ids, dists) = knn_d2(q.view(), g.view(), depth, false)
                .into_iter()
                .map(|r| r.into_iter().map(|(d2, j)| (j as usize, d2.sqrt())).unzip())
                .unzip();
            Ok(Ranked { ids, dists })
        };
        let first = euclid(&q, &g)?;
        let mut source = first.ids.clone();
        let mut out = vec![StageOutput {
            stage: None,
            ranking: first.ids,
            distances: first.dists,
        }];
        for &stage in &self.stages {
            let ranked = match stage {
                Stage::Pca { dims } => {
                    let p = Pca::fit(q.view(), dims)?;
                    q = p.transform(q.view())?;
                    g = p.transform(g.view())?;
                    let r = euclid(&q, &g)?;
                    source = r.ids.clone();
                    r
                }
                Stage::GalleryDba { k } => {
                    g = gallery_dba(g.view(), k, self.dba_renormalise)?;
                    let r = euclid(&q, &g)?;
                    source = r.ids.clone();
                    r
                }
                Stage::Kr { k1, k2, lambda } => {
                    let p = KrParams { k1, k2, lambda };
                    let r = k_reciprocal(q.view(), g.view(), &p, depth)?;
                    source = r.ids.clone();
                    r
                }
                Stage::Aqe { k } => {
                    q = aqe(q.view(), g.view(), &source, k)?;
                    euclid(&q, &g)?
                }
                Stage::AlphaQe { k, alpha } => {
                    q = alpha_qe(q.view(), g.view(), &source, k, alpha)?;
                    euclid(&q, &g)?
                }
                Stage::QueryDba { k } => {
                    q = query_dba(q.view(), g.view(), &source, k, self.dba_renormalise)?;
                    euclid(&q, &g)?
                }
                Stage::GalleryAqe { k } => {
                    g = gallery_aqe(g.view(), k)?;
                    euclid(&q, &g)?
                }
            };
            out.push(StageOutput {
                stage: Some(stage),
                ranking: ranked.ids,
                distances: ranked.dists,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rerank::digix::{digix_concat, normalise_concat, DigixParams};
    use crate::rerank::kreciprocal::tests::random;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn parse_and_display_round_trip() {
        let s: Stage = "kr:k1=20,k2=6,lambda=0.3".parse().unwrap();
        assert_eq!(
            s,
            Stage::Kr {
                k1: 20,
                k2: 6,
                lambda: 0.3
            }
        );
        assert_eq!("kr".parse::<Stage>().unwrap(), s);
        assert_eq!("pca".parse::<Stage>().unwrap(), Stage::Pca { dims: 512 });
        assert_eq!(
            "alpha-qe:k=5".parse::<Stage>().unwrap(),
            Stage::AlphaQe { k: 5, alpha: 3.0 }
        );
        assert!("alpha-qe".parse::<Stage>().is_err());
        assert!("kr:k3=1".parse::<Stage>().is_err());
        assert!("kr:k1=x".parse::<Stage>().is_err());
        assert!("nope".parse::<Stage>().is_err());
        for st in Pipeline::digix().stages() {
            assert_eq!(st.to_string().parse::<Stage>().unwrap(), *st);
        }
        let v = parse_stages("pca:dims=64; kr ;aqe:k=1;gallery-dba:k=3").unwrap();
        assert_eq!(v.len(), 4);
        assert_eq!(v[3], Stage::GalleryDba { k: 3 });
        let (a, b) = (
            String::from(v[1]),
            Stage::try_from("kr".to_string()).unwrap(),
        );
        assert_eq!(a.parse::<Stage>().unwrap(), b);
    }

    #[test]
    fn order_is_checked() {
        let p = |s: &str| Pipeline::new(parse_stages(s).unwrap(), 10, false);
        assert!(p("pca;kr;aqe;query-dba;gallery-aqe;kr").is_ok());
        assert!(p("kr;kr").is_ok());
        assert!(p("aqe;kr").is_ok());
        assert!(p("kr;pca").is_err());
        assert!(p("kr;kr;kr").is_err());
        assert!(p("query-dba;aqe").is_err());
        assert!(Pipeline::new(vec![], 0, false).is_err());
    }

    #[test]
    fn digix_pipeline_equals_batch_order() {
        let mut rng = StdRng::seed_from_u64(9);
        let q = normalise_concat(&[random(&mut rng, 15, 12, false).view()]).unwrap();
        let g = normalise_concat(&[random(&mut rng, 40, 12, false).view()]).unwrap();
        let out = Pipeline::digix().run(q.view(), g.view()).unwrap();
        assert_eq!(out.len(), 7);
        assert!(out[0].stage.is_none());
        let expect = digix_concat(q.view(), g.view(), &DigixParams::default()).unwrap();
        assert_eq!(out[6].ranking, expect);
        assert!(out.iter().all(|o| o.ranking.iter().all(|r| r.len() == 10)));
    }

    #[test]
    fn each_stage_runs() {
        let mut rng = StdRng::seed_from_u64(4);
        let q = random(&mut rng, 6, 8, false);
        let g = random(&mut rng, 20, 8, false);
        let st = parse_stages("pca:dims=4;gallery-dba:k=3;kr:k1=5,k2=2;aqe:k=2;alpha-qe:k=3;query-dba:k=4;gallery-aqe:k=1;kr").unwrap();
        let out = Pipeline::new(st, 5, true)
            .unwrap()
            .run(q.view(), g.view())
            .unwrap();
        assert_eq!(out.len(), 9);
        assert!(out
            .iter()
            .all(|o| o.ranking.len() == 6 && o.ranking.iter().all(|r| r.len() == 5)));
    }
}

#[cfg(test)]
mod serde_tests {
    use super::*;

    #[test]
    fn serde_as_strings() {
        let v: Vec<Stage> = serde_json::from_str(r#"["pca:dims=8", "kr:k1=10"]"#).unwrap();
        assert_eq!(v[0], Stage::Pca { dims: 8 });
        assert_eq!(
            v[1],
            Stage::Kr {
                k1: 10,
                k2: 6,
                lambda: 0.3
            }
        );
        let s = serde_json::to_string(&v).unwrap();
        assert_eq!(s, r#"["pca:dims=8","kr:k1=10,k2=6,lambda=0.3"]"#);
        assert!(serde_json::from_str::<Stage>(r#""bogus""#).is_err());
    }
}
