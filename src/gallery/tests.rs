//! Online post-processing against the batch definitions: the gallery's
//! side (refreshed state, saved state, the projected space), with the
//! requests that depend on it run through `crate::query::online`.

use std::sync::Arc;
use std::time::Duration;

use ndarray::Array2;

use super::post::PostConfig;
use super::testing::*;
use super::*;
use crate::index::HnswParams;
use crate::query::online::{self, Plan, QueryExpansion};
use crate::rerank::dba::gallery_dba;
use crate::rerank::kreciprocal::{GalleryNeighbours, KrParams};

#[test]
fn after_writes_and_a_refresh_the_state_equals_a_batch_recompute() {
    let dir = tempfile::tempdir().unwrap();
    let g = open(dir.path(), manual());
    g.upsert((0..60).map(item).collect()).unwrap();
    g.refresh_post().unwrap();
    assert_eq!((g.stats().stale_items, g.stats().post_generation), (0, 1));

    // Adds, removes and replacements change other items' neighbours.
    g.upsert((60..75).map(item).collect()).unwrap();
    let removed: Vec<String> = (0..60).step_by(9).map(|i| item(i).id).collect();
    assert!(g.remove(&removed).unwrap().is_empty());
    let mut again = item(3);
    again.vector = item(3333).vector;
    g.upsert(vec![again]).unwrap();
    assert_eq!(g.stats().stale_items, 15 + removed.len() as u64 + 1);

    g.refresh_post().unwrap();
    let s = g.stats();
    assert_eq!((s.stale_items, s.post_generation), (0, 2));
    assert_state_equals_batch(&g);
}

/// The snapshot, the indexed vectors and the index answer as a batch
/// recomputation over the live gallery would.
fn assert_state_equals_batch(g: &Gallery) {
    let (ids, raw) = live_matrix(g);
    let snap = g.post_snapshot().unwrap();
    assert_eq!(snap.len(), ids.len());
    let cfg = g.post_config();
    let batch_nb = GalleryNeighbours::build(raw.view(), cfg.neighbours_k).unwrap();
    let nb = snap.neighbours.as_ref().unwrap();
    assert_eq!(nb.parts().0, batch_nb.parts().0);
    assert_eq!(nb.parts().2, batch_nb.parts().2, "neighbour lists");
    assert_eq!(nb.parts().3, batch_nb.parts().3, "neighbour distances");
    assert_eq!(nb.parts().4, batch_nb.parts().4, "row maxima");

    let batch_dba = gallery_dba(raw.view(), cfg.dba_k, true).unwrap();
    assert_eq!(snap.dba.as_ref().unwrap(), &batch_dba, "DBA vectors");
    // The index holds them; the raw descriptor stays what GetItem returns.
    let p = SearchParams {
        k: 1,
        ef: 64,
        exact: false,
        filter: &Metadata::new(),
        exclude: None,
        space: None,
    };
    for (row, id) in ids.iter().enumerate() {
        let e = g.get(id).unwrap();
        assert_eq!(&e.indexed[..], batch_dba.row(row).as_slice().unwrap());
        assert_eq!(&e.vector[..], raw.row(row).as_slice().unwrap());
        // A search for an item's DBA vector finds the item first (through
        // the graph when the gallery has one).
        assert_eq!(&g.search(&e.indexed, &p).unwrap()[0].id, id);
    }
}

#[test]
fn small_changes_refresh_incrementally_and_keep_the_graph_current() {
    let dir = tempfile::tempdir().unwrap();
    // A low exact limit so that this gallery keeps an HNSW graph, and no
    // tombstone rebuild racing the checks.
    let params = HnswParams {
        exact_limit: 100,
        rebuild_tombstone_ratio: f64::INFINITY,
        ..HnswParams::default()
    };
    let g = open_with(dir.path(), manual(), params);
    g.upsert((0..400).map(item).collect()).unwrap();
    g.refresh_post().unwrap();
    assert!(g.stats().index.built, "past the exact limit: a graph");
    assert_eq!(g.stats().tombstones, 0);
    assert_state_equals_batch(&g);

    // Few changes (under 1/8 of the gallery): derived from the previous
    // snapshot, not recomputed.
    g.upsert((400..403).map(item).collect()).unwrap();
    let removed: Vec<String> = (0..400).step_by(150).map(|i| item(i).id).collect();
    assert!(g.remove(&removed).unwrap().is_empty());
    let mut again = item(7);
    again.vector = item(7777).vector;
    g.upsert(vec![again]).unwrap();
    let generation = g.stats().index.generation;
    g.refresh_post().unwrap();
    let s = g.stats();
    assert_eq!((s.stale_items, s.post_generation), (0, 2));
    assert_eq!(
        s.index.generation, generation,
        "changed DBA vectors were inserted, the graph not rebuilt"
    );
    // Each change moves the DBA vectors of about k neighbours.
    assert!(
        (8..=100).contains(&s.tombstones),
        "re-indexed DBA vectors leave tombstones: {}",
        s.tombstones
    );
    assert_state_equals_batch(&g);
}

#[test]
fn background_refresher_catches_up_and_dba_can_be_off() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = PostConfig {
        dba: false,
        debounce: Duration::from_millis(5),
        ..PostConfig::default()
    };
    let g = open(dir.path(), cfg);
    g.upsert((0..30).map(item).collect()).unwrap();
    let t = std::time::Instant::now();
    while g.stats().stale_items > 0 || g.stats().post_generation == 0 {
        assert!(t.elapsed() < Duration::from_secs(30), "refresher stuck");
        std::thread::sleep(Duration::from_millis(5));
    }
    let snap = g.post_snapshot().unwrap();
    assert!(snap.dba.is_none());
    assert_eq!(snap.len(), 30);
    let e = g.get("item-0001").unwrap();
    assert_eq!(
        e.indexed, e.vector,
        "with DBA off the index holds raw vectors"
    );
}

#[test]
fn a_saved_state_is_restored_and_writes_since_are_applied() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db.redb");
    let next_point = {
        let gs = Galleries::open(&db, graph_params(), manual()).unwrap();
        let g = gs.create("g", meta()).unwrap();
        g.upsert((0..300).map(item).collect()).unwrap();
        g.refresh_post().unwrap();
        // A dead point in the graph above every live one (an item added
        // and removed again): a restored gallery must not reissue its id.
        g.upsert(vec![item(5000)]).unwrap();
        g.remove(&[item(5000).id]).unwrap();
        assert_eq!(gs.save_all(), 1);
        assert!(dir.path().join("index/g/state.bin").exists());
        let calibration = g.stats().index.calibration;
        assert!(calibration.is_some(), "the build calibrated ef");
        let next = g.state.read().next_point();
        (next, calibration)
    };
    let (next_point, calibration) = next_point;
    // Restored, not recomputed: same generation, same graph.
    {
        let gs = Galleries::open(&db, graph_params(), manual()).unwrap();
        let g = gs.get("g").unwrap();
        assert_eq!(g.state.read().next_point(), next_point);
        let s = g.stats();
        assert_eq!((s.stale_items, s.post_generation), (0, 2));
        assert!(s.index.built, "the saved graph was loaded");
        assert_eq!(s.index.calibration, calibration, "with its calibrated ef");
        assert_eq!(s.tombstones, 1);
        assert_eq!(s.index.generation, 0, "loaded, not rebuilt");
        assert_state_equals_batch(&g);
        // Writes after the save, then a crash (no second save).
        g.upsert((300..305).map(item).collect()).unwrap();
        let removed: Vec<String> = [3u64, 150].iter().map(|&i| item(i).id).collect();
        assert!(g.remove(&removed).unwrap().is_empty());
    }
    // The old save plus the store's changes since: applied at open.
    let gs = Galleries::open(&db, graph_params(), manual()).unwrap();
    let g = gs.get("g").unwrap();
    let s = g.stats();
    assert_eq!((s.count, s.stale_items, s.post_generation), (303, 0, 3));
    assert_eq!(
        s.index.generation, 0,
        "changes inserted into the loaded graph"
    );
    assert_state_equals_batch(&g);
    drop((g, gs));
    // Another target recall: the graph is used, its calibration is not.
    let other = HnswParams {
        target_recall: 0.9,
        ..graph_params()
    };
    let gs = Galleries::open(&db, other, manual()).unwrap();
    let s = gs.get("g").unwrap().stats();
    assert!(s.index.built && s.index.generation == 0, "the saved graph");
    assert_eq!(s.index.calibration, None);
}

#[test]
fn a_corrupt_or_foreign_saved_state_is_recomputed() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db.redb");
    let state = dir.path().join("index/g/state.bin");
    {
        let gs = Galleries::open(&db, graph_params(), manual()).unwrap();
        let g = gs.create("g", meta()).unwrap();
        g.upsert((0..200).map(item).collect()).unwrap();
        gs.save_all();
    }
    let mut bytes = std::fs::read(&state).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&state, &bytes).unwrap();
    let backup = dir.path().join("backup");
    {
        let gs = Galleries::open(&db, graph_params(), manual()).unwrap();
        let g = gs.get("g").unwrap();
        assert_eq!(g.stats().post_generation, 1, "recomputed from the store");
        assert_state_equals_batch(&g);
        gs.save_all();
        std::fs::create_dir_all(&backup).unwrap();
        for f in std::fs::read_dir(dir.path().join("index/g")).unwrap() {
            let f = f.unwrap().path();
            std::fs::copy(&f, backup.join(f.file_name().unwrap())).unwrap();
        }
        // Dropped and re-created under the same name with other vectors
        // (seqs restart at 0).
        gs.drop_gallery("g").unwrap();
        assert!(
            !state.exists(),
            "dropping a gallery removes its saved state"
        );
        let g = gs.create("g", meta()).unwrap();
        g.upsert((1000..1200).map(item).collect()).unwrap();
    }
    // A save of the old gallery where the new one's would be (as a crash
    // could leave it): not used.
    std::fs::rename(&backup, dir.path().join("index/g")).unwrap();
    let gs = Galleries::open(&db, graph_params(), manual()).unwrap();
    let g = gs.get("g").unwrap();
    assert_eq!(g.stats().post_generation, 1, "recomputed from the store");
    assert_state_equals_batch(&g);
}

#[test]
fn with_a_projection_online_kr_equals_batch_kr_in_the_projected_space() {
    use crate::rerank::reference;
    let dir = tempfile::tempdir().unwrap();
    let g = open(dir.path(), projected(false, 6, 0.5));
    g.upsert((0..80).map(item).collect()).unwrap();
    g.refresh_post().unwrap();
    let (ids, raw) = live_matrix(&g);
    let n = ids.len();
    assert_eq!(g.stats().projection_components, 6);
    let width = g.state.read().flat().width();
    assert_eq!(
        width, 6,
        "the exact scan reads the components, not the padding"
    );
    let params = KrParams::default();
    for seed in [7u64, 8, 9] {
        let q = item(5000 + seed).vector;
        let qm = Array2::from_shape_vec((1, DIMS), q.clone()).unwrap();
        let [pq, pg]: [Array2<f32>; 2] = reference::gallery_projection(&raw, 6, 0.5, &[&qm, &raw])
            .try_into()
            .unwrap();
        let out = online::search(&g, &q, &whole_gallery_kr(n), &Metadata::new(), None).unwrap();
        assert_eq!(out.stages, ["projection", "k_reciprocal"]);
        let want: Vec<&str> = reference::kr(&pq, &pg, &params)[0]
            .iter()
            .map(|&(r, _)| ids[r].as_str())
            .collect();
        let got: Vec<&str> = out.hits.iter().map(|h| h.id.as_str()).collect();
        assert_eq!(got, want, "KR over the projected rows");
    }
    // The index holds each item's projected row, zero-padded; GetItem
    // still returns the raw descriptor.
    let [pg]: [Array2<f32>; 1] = reference::gallery_projection(&raw, 6, 0.5, &[&raw])
        .try_into()
        .unwrap();
    for (row, id) in ids.iter().enumerate().step_by(9) {
        let e = g.get(id).unwrap();
        assert_eq!(&e.vector[..], raw.row(row).as_slice().unwrap());
        assert!(e.indexed[6..].iter().all(|&v| v == 0.0));
        // Same point up to each component's sign: compare distances.
        for other in (0..n).step_by(11) {
            let o = g.get(&ids[other]).unwrap();
            let ours: f32 = (0..6).map(|c| (e.indexed[c] - o.indexed[c]).powi(2)).sum();
            let want: f32 = (&pg.row(row) - &pg.row(other)).mapv(|v| v * v).sum();
            assert!((ours - want).abs() < 1e-4, "{id}: {ours} vs {want}");
        }
    }
}

#[test]
fn with_a_projection_and_dba_the_index_holds_dba_of_the_projected_rows() {
    use crate::rerank::reference;
    let dir = tempfile::tempdir().unwrap();
    let cfg = projected(true, 8, 0.0);
    let g = open(dir.path(), cfg.clone());
    g.upsert((0..60).map(item).collect()).unwrap();
    g.refresh_post().unwrap();
    let (ids, raw) = live_matrix(&g);
    let snap = g.post_snapshot().unwrap();
    let work = snap.working().to_owned();
    assert_eq!(work.ncols(), 8);
    let nb = reference::neighbours(&work, cfg.dba_k);
    let want = reference::dba(&work, &work, &nb, cfg.dba_k, true);
    for (row, id) in ids.iter().enumerate() {
        let e = g.get(id).unwrap();
        for c in 0..8 {
            assert!((e.indexed[c] - want[[row, c]]).abs() < 1e-5, "{id} col {c}");
        }
        assert_eq!(&e.vector[..], raw.row(row).as_slice().unwrap());
    }
    let out = online::search(
        &g,
        &item(3).vector,
        &Plan {
            top_k: 3,
            ef: 64,
            exact: true,
            shortlist: 20,
            qe: Some(QueryExpansion { k: 1, alpha: 0.0 }),
            kr: Some(KrParams::default()),
        },
        &Metadata::new(),
        None,
    )
    .unwrap();
    assert_eq!(out.stages, ["projection", "dba", "aqe", "k_reciprocal"]);
    assert_eq!(out.hits[0].id, "item-0003");
}

#[test]
fn items_added_after_a_fit_are_projected_and_a_refit_switches_the_space() {
    let dir = tempfile::tempdir().unwrap();
    // A graph (low exact limit), so both search paths see the space.
    let g = open_with(dir.path(), projected(false, 6, 0.0), graph_params());
    g.upsert((0..200).map(item).collect()).unwrap();
    g.refresh_post().unwrap();
    let first = g.post_snapshot().unwrap().projection.clone().unwrap();
    let find = |id: &str, v: &[f32]| {
        let plan = Plan {
            top_k: 1,
            ef: 64,
            exact: false,
            shortlist: 1,
            qe: None,
            kr: None,
        };
        let out = online::search(&g, v, &plan, &Metadata::new(), None).unwrap();
        assert_eq!(out.hits[0].id, id, "an item is its own nearest");
        // sqrt(2 (1 - a.b)) turns f32 rounding of a.b into ~3e-4.
        assert!(
            out.hits[0].distance < 1e-3,
            "{id}: {}",
            out.hits[0].distance
        );
    };
    // Added after the fit: indexed in the fitted space at once.
    let fresh = item(7001);
    g.upsert(vec![NewItem {
        id: "fresh".into(),
        ..item(7001)
    }])
    .unwrap();
    find("fresh", &fresh.vector);
    let e = g.get("fresh").unwrap();
    assert_eq!(e.indexed, first.apply(&fresh.vector).unwrap().into());

    // A few changes keep the fit; past 1/8 of the gallery it is refitted.
    g.refresh_post().unwrap();
    let kept = g.post_snapshot().unwrap().projection.clone().unwrap();
    assert!(Arc::ptr_eq(&first, &kept), "one item does not refit");
    g.upsert((200..240).map(item).collect()).unwrap();
    g.refresh_post().unwrap();
    let second = g.post_snapshot().unwrap().projection.clone().unwrap();
    assert!(!Arc::ptr_eq(&first, &second), "40 of 241 items refit");
    for i in [0u64, 100, 239] {
        let it = item(i);
        find(&it.id, &it.vector);
        assert_eq!(
            g.get(&it.id).unwrap().indexed,
            second.apply(&it.vector).unwrap().into()
        );
    }
    find("fresh", &fresh.vector);

    // A query projected with the old fit is refused, not answered in the
    // wrong space.
    let p = SearchParams {
        k: 1,
        ef: 64,
        exact: false,
        filter: &Metadata::new(),
        exclude: None,
        space: Some(&first),
    };
    assert!(matches!(
        g.search(&first.apply(&fresh.vector).unwrap(), &p),
        Err(SpaceChanged)
    ));
    assert_eq!(g.stats().projection_components, 6);
}

/// With the projection on, a restart restores the fit and the projected
/// space instead of refitting: the same projection bit for bit, the same
/// indexed vectors and answers; items written after the save (then a
/// crash) are projected with the restored fit at open.
#[test]
fn a_saved_state_with_a_projection_restores_the_fit_and_its_space() {
    for dba in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("db.redb");
        let cfg = projected(dba, 6, 0.5);
        let plan = Plan {
            top_k: 5,
            ef: 64,
            exact: false,
            shortlist: 30,
            qe: Some(QueryExpansion { k: 1, alpha: 0.0 }),
            kr: Some(KrParams::default()),
        };
        let answer = |g: &Gallery, i: u64| {
            let out = online::search(g, &item(i).vector, &plan, &Metadata::new(), None).unwrap();
            out.hits
                .iter()
                .map(|h| (h.id.clone(), h.distance.to_bits()))
                .collect::<Vec<_>>()
        };
        let (parts, indexed, answers) = {
            let gs = Galleries::open(&db, graph_params(), cfg.clone()).unwrap();
            let g = gs.create("g", meta()).unwrap();
            // A full fit, then an incremental refresh that keeps it: a
            // recomputation at open would start again at generation 1.
            g.upsert((0..190).map(item).collect()).unwrap();
            g.refresh_post().unwrap();
            g.upsert((190..200).map(item).collect()).unwrap();
            g.refresh_post().unwrap();
            assert_eq!(g.stats().post_generation, 2);
            assert_eq!(g.post_snapshot().unwrap().since_fit, 10);
            assert_eq!(gs.save_all(), 1);
            let p = g.post_snapshot().unwrap().projection.clone().unwrap();
            let parts = (p.parts().0.clone(), p.parts().1.clone());
            let indexed: Vec<_> = (0..200)
                .map(|i| g.get(&item(i).id).unwrap().indexed)
                .collect();
            let answers: Vec<_> = [3u64, 77, 150].iter().map(|&i| answer(&g, i)).collect();
            (parts, indexed, answers)
        };
        let restored = {
            let gs = Galleries::open(&db, graph_params(), cfg.clone()).unwrap();
            let g = gs.get("g").unwrap();
            let s = g.stats();
            assert_eq!(
                (s.post_generation, s.stale_items, s.projection_components),
                (2, 0, 6),
                "dba {dba}: restored, not recomputed"
            );
            assert_eq!(s.index.generation, 0, "the saved graph, not a rebuild");
            let p = g.post_snapshot().unwrap().projection.clone().unwrap();
            assert_eq!((p.parts().0, p.parts().1), (&parts.0, &parts.1));
            assert!(Arc::ptr_eq(&p, g.state.read().projection().unwrap()));
            for (i, want) in indexed.iter().enumerate() {
                assert_eq!(&g.get(&item(i as u64).id).unwrap().indexed, want);
            }
            let now: Vec<_> = [3u64, 77, 150].iter().map(|&i| answer(&g, i)).collect();
            assert_eq!(now, answers, "dba {dba}: the same answers after a restart");
            // Written after the save, then a crash (no second save).
            g.upsert((200..205).map(item).collect()).unwrap();
            p
        };
        let gs = Galleries::open(&db, graph_params(), cfg.clone()).unwrap();
        let g = gs.get("g").unwrap();
        // Opening refreshed over the five, incrementally, in the saved fit.
        let s = g.stats();
        assert_eq!((s.post_generation, s.stale_items), (3, 0));
        let snap = g.post_snapshot().unwrap();
        let p = snap.projection.clone().unwrap();
        assert!(Arc::ptr_eq(&p, g.state.read().projection().unwrap()));
        assert_eq!(
            p.parts().1,
            restored.parts().1,
            "the saved fit, not a refit"
        );
        assert_eq!(snap.since_fit, 15, "the saved count goes on");
        for i in 200..205 {
            let it = item(i);
            let want: Vec<f32> = match &snap.dba {
                Some(d) => {
                    let row = d.row(snap.row_of[&g.get(&it.id).unwrap().seq]);
                    super::projection::pad(row.iter().copied(), DIMS)
                }
                None => p.apply(&it.vector).unwrap(),
            };
            assert_eq!(g.get(&it.id).unwrap().indexed, want.into());
        }
        let found = online::search(&g, &item(202).vector, &plan, &Metadata::new(), None).unwrap();
        assert_eq!(found.hits[0].id, item(202).id);
    }
}

#[test]
fn a_removed_newest_items_seq_is_not_reissued_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db.redb");
    let newest = {
        let gs = Galleries::open(&db, HnswParams::default(), manual()).unwrap();
        let g = gs.create("g", meta()).unwrap();
        g.upsert((0..3).map(item).collect()).unwrap();
        let newest = g.get(&item(2).id).unwrap().seq;
        assert!(g.remove(&[item(2).id]).unwrap().is_empty());
        newest
    };
    // Reopened from the store alone (no saved state).
    let gs = Galleries::open(&db, HnswParams::default(), manual()).unwrap();
    let g = gs.get("g").unwrap();
    g.upsert(vec![item(3)]).unwrap();
    let fresh = g.get(&item(3).id).unwrap().seq;
    assert!(fresh > newest, "seq {fresh} reissued (newest was {newest})");
}

#[test]
fn shutdown_joins_the_background_graph_build() {
    let dir = tempfile::tempdir().unwrap();
    let raw = PostConfig {
        dba: false,
        ..manual()
    };
    let gs = Galleries::open(&dir.path().join("db.redb"), graph_params(), raw).unwrap();
    let g = gs.create("g", meta()).unwrap();
    // Past the exact limit with raw vectors: the worker builds the graph.
    g.upsert((0..300).map(item).collect()).unwrap();
    let s = g.stats();
    assert!(s.index.rebuilding || s.index.built);
    assert_eq!(gs.shutdown(), 1);
    let s = g.stats();
    assert!(s.index.built && !s.index.rebuilding, "the build finished");
    // Stopped: writes still work, and a build they start runs in place.
    g.upsert((300..310).map(item).collect()).unwrap();
    assert_eq!(g.stats().count, 310);
}
