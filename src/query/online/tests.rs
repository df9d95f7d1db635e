//! The per-request stages over a real gallery, against the batch
//! definitions.

use ndarray::Array2;

use super::*;
use crate::gallery::testing::*;
use crate::gallery::NewItem;
use crate::rerank::kreciprocal::{k_reciprocal, KrParams};

#[test]
fn online_kr_over_the_whole_gallery_equals_batch_kr_with_one_query() {
    let dir = tempfile::tempdir().unwrap();
    let g = open(dir.path(), manual());
    g.upsert((0..80).map(item).collect()).unwrap();
    g.refresh_post().unwrap();
    let (ids, raw) = live_matrix(&g);
    let n = ids.len();
    let params = KrParams::default();
    for seed in [7u64, 8, 9] {
        let q = item(5000 + seed).vector;
        let out = search(&g, &q, &whole_gallery_kr(n), &Metadata::new(), None).unwrap();
        let qm = Array2::from_shape_vec((1, DIMS), q.clone()).unwrap();
        let batch = k_reciprocal(qm.view(), raw.view(), &params, n).unwrap();
        let want: Vec<&str> = batch.ids[0].iter().map(|&r| ids[r].as_str()).collect();
        let got: Vec<&str> = out.hits.iter().map(|h| h.id.as_str()).collect();
        assert_eq!(got, want, "same ranking as batch KR");
        for (h, d) in out.hits.iter().zip(&batch.dists[0]) {
            assert!((f64::from(h.distance) - d).abs() < 1e-6);
        }
        let stages: Vec<&str> = out.timings.iter().map(|t| t.0).collect();
        assert_eq!(stages, vec!["search", "k_reciprocal"]);
    }
}

#[test]
fn query_expansion_then_kr_ranks_the_shortlist() {
    let dir = tempfile::tempdir().unwrap();
    let g = open(dir.path(), manual());
    g.upsert((0..50).map(item).collect()).unwrap();
    // KR needs the state; before the first refresh the answer comes
    // without it (and says so), fresh items included.
    let plan = Plan {
        top_k: 5,
        ef: 128,
        exact: false,
        shortlist: 20,
        qe: Some(QueryExpansion { k: 2, alpha: 3.0 }),
        kr: Some(KrParams::default()),
    };
    let q = item(1).vector;
    let early = search(&g, &q, &plan, &Metadata::new(), None).unwrap();
    assert_eq!(early.stages, ["alpha_qe"]);
    assert_eq!(
        early.degraded,
        ["k_reciprocal: the gallery's first neighbour refresh has not run yet"]
    );
    assert_eq!(early.hits[0].id, "item-0001");
    g.refresh_post().unwrap();
    let out = search(&g, &q, &plan, &Metadata::new(), None).unwrap();
    assert_eq!(out.hits.len(), 5);
    assert_eq!(out.hits[0].id, "item-0001");
    assert!(out.hits.windows(2).all(|w| w[0].distance <= w[1].distance));
    assert_eq!(out.stages, ["dba", "alpha_qe", "k_reciprocal"]);
    assert!(out.degraded.is_empty(), "{:?}", out.degraded);
    // One item added since the refresh and shortlisted: KR waits for the
    // next refresh rather than hiding it.
    g.upsert(vec![NewItem {
        id: "fresh".into(),
        ..item(1)
    }])
    .unwrap();
    let fresh = search(&g, &q, &plan, &Metadata::new(), None).unwrap();
    assert_eq!(fresh.stages, ["dba", "alpha_qe"]);
    assert!(fresh.hits.iter().any(|h| h.id == "fresh"));
    // ... and says so, rather than ranking differently without a word.
    assert_eq!(fresh.degraded.len(), 1, "{:?}", fresh.degraded);
    assert!(
        fresh.degraded[0].starts_with(
            "k_reciprocal: 1 of the 20 shortlisted items were written since the last neighbour refresh"
        ),
        "{:?}",
        fresh.degraded
    );
    g.refresh_post().unwrap();
    let after = search(&g, &q, &plan, &Metadata::new(), None).unwrap();
    assert_eq!(after.stages, ["dba", "alpha_qe", "k_reciprocal"]);
    assert!(after.degraded.is_empty(), "{:?}", after.degraded);
    assert!(after.hits.iter().any(|h| h.id == "fresh"));
    let stages: Vec<&str> = out.timings.iter().map(|t| t.0).collect();
    assert_eq!(
        stages,
        vec![
            "search",
            "query_expansion",
            "search_expanded",
            "k_reciprocal"
        ]
    );
}

#[test]
fn query_expansion_over_hits_removed_since_the_search_is_skipped_not_an_error() {
    // The soak's race, made deterministic: the search answers, then every
    // hit is removed before the expansion reads their vectors.
    let dir = tempfile::tempdir().unwrap();
    let g = open(dir.path(), manual());
    g.upsert((0..10).map(item).collect()).unwrap();
    let q = item(3).vector;
    let params = SearchParams {
        k: 5,
        ef: 64,
        exact: true,
        filter: &Metadata::new(),
        exclude: None,
        space: None,
    };
    let hits = g.search(&q, &params).unwrap();
    assert_eq!(hits.len(), 5);
    let qe = QueryExpansion { k: 3, alpha: 0.0 };
    let same = |v: &[f32]| Ok(v.to_vec());
    let live = expand_from_hits(&g, &q, &hits, qe, None, &same).unwrap();
    assert!(live.is_some(), "live hits expand the query");
    let ids: Vec<String> = hits.iter().map(|h| h.id.clone()).collect();
    assert!(g.remove(&ids).unwrap().is_empty(), "all five were there");
    let gone = expand_from_hits(&g, &q, &hits, qe, None, &same).unwrap();
    assert_eq!(gone, None, "nothing left to expand with");
    // One survivor among the stale hits: the expansion uses it alone.
    g.upsert(vec![item(u64::from(
        hits[1].id[5..].parse::<u16>().unwrap(),
    ))])
    .unwrap();
    let one = expand_from_hits(&g, &q, &hits, qe, None, &same)
        .unwrap()
        .unwrap();
    let survivor = g.get(&hits[1].id).unwrap().vector;
    let mean = crate::index::distance::normalised(
        &q.iter()
            .zip(survivor.iter())
            .map(|(a, b)| a + b)
            .collect::<Vec<_>>(),
    )
    .unwrap();
    for (a, b) in one.iter().zip(&mean) {
        assert!(
            (a - b).abs() < 1e-5,
            "AQE of the query and its one live hit"
        );
    }
}

#[test]
fn query_expansion_reads_projected_hits_from_the_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let g = open(dir.path(), projected(false, 6, 0.0));
    g.upsert((0..60).map(item).collect()).unwrap();
    g.refresh_post().unwrap();
    let snap = g.post_snapshot().unwrap();
    let p = snap.projection.clone().unwrap();
    let q = p.apply(&item(3).vector).unwrap();
    let params = SearchParams {
        k: 3,
        ef: 64,
        exact: true,
        filter: &Metadata::new(),
        exclude: None,
        space: Some(&p),
    };
    let hits = g.search(&q, &params).unwrap();
    let qe = QueryExpansion { k: 3, alpha: 0.0 };
    // Every hit is in the snapshot: nothing is projected again.
    let never = |_: &[f32]| -> Result<Vec<f32>, RerankError> {
        Err(RerankError::Empty {
            what: "a re-projection",
        })
    };
    let fast = expand_from_hits(&g, &q, &hits, qe, Some(&snap), &never)
        .unwrap()
        .unwrap();
    let slow = expand_from_hits(&g, &q, &hits, qe, None, &|v| p.apply(v))
        .unwrap()
        .unwrap();
    for (a, b) in fast.iter().zip(&slow) {
        assert!(
            (a - b).abs() < 1e-5,
            "the saved rows are the projected ones"
        );
    }
    // An item added since the snapshot is projected now.
    g.upsert(vec![NewItem {
        id: "fresh".into(),
        ..item(3)
    }])
    .unwrap();
    let hits = g.search(&q, &params).unwrap();
    assert!(hits.iter().any(|h| h.id == "fresh"));
    assert!(expand_from_hits(&g, &q, &hits, qe, Some(&snap), &never).is_err());
}
