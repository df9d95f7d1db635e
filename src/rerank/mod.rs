//! Post-processing stages of spec section 3 and the DIGIX 2020 batch order
//! of section 4. Descriptors are `f32` rows; sums and distances are `f64`.
//! Ties in any ranking are broken by the lower index (stable by index).

#[cfg(test)]
mod agreement_tests;
pub mod aqe;
pub mod dba;
pub mod digix;
pub mod knn;
pub mod kreciprocal;
pub mod pca;
pub mod pipeline;
pub(crate) mod probe;
#[cfg(test)]
pub(crate) mod reference;

use thiserror::Error;

/// Per query, gallery indices in rank order (best first).
pub type Ranking = Vec<Vec<usize>>;

#[derive(Debug, Error, PartialEq)]
pub enum RerankError {
    #[error("dimension mismatch: {what} has {got} columns, expected {expected}")]
    DimMismatch {
        what: &'static str,
        got: usize,
        expected: usize,
    },
    #[error("{what} is empty")]
    Empty { what: &'static str },
    #[error("{stage}: parameter {param} must be {rule} (got {got})")]
    BadParam {
        stage: &'static str,
        param: &'static str,
        rule: &'static str,
        got: String,
    },
    #[error("ranking has {got} rows, expected {expected}")]
    RankingRows { got: usize, expected: usize },
    #[error("query {query}: ranking has {got} entries, need {need}")]
    RankingTooShort {
        query: usize,
        got: usize,
        need: usize,
    },
    #[error("index {index} out of range for {what} of size {len}")]
    IndexOutOfRange {
        what: &'static str,
        index: usize,
        len: usize,
    },
    #[error("non-finite value in {what}")]
    NonFinite { what: &'static str },
    #[error("cannot parse stage {input:?}: {reason}")]
    Parse { input: String, reason: String },
}

pub(crate) fn check_k(
    stage: &'static str,
    param: &'static str,
    k: usize,
) -> Result<(), RerankError> {
    if k == 0 {
        return Err(RerankError::BadParam {
            stage,
            param,
            rule: ">= 1",
            got: "0".into(),
        });
    }
    Ok(())
}

/// Checks that a ranking has one row per query, each at least `need` long
/// and with valid gallery indices.
pub(crate) fn check_ranking(
    ranking: &[Vec<usize>],
    n_queries: usize,
    n_gallery: usize,
    need: usize,
) -> Result<(), RerankError> {
    if ranking.len() != n_queries {
        return Err(RerankError::RankingRows {
            got: ranking.len(),
            expected: n_queries,
        });
    }
    for (query, row) in ranking.iter().enumerate() {
        if row.len() < need {
            return Err(RerankError::RankingTooShort {
                query,
                got: row.len(),
                need,
            });
        }
        if let Some(&index) = row.iter().take(need).find(|&&g| g >= n_gallery) {
            return Err(RerankError::IndexOutOfRange {
                what: "gallery",
                index,
                len: n_gallery,
            });
        }
    }
    Ok(())
}
