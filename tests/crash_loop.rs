//! kill -9 loop: the real server on one data folder, killed at random
//! (seeded) moments during concurrent descriptor and image adds,
//! replacements, removals and searches; after each restart, everything
//! acknowledged is checked against a model of what the clients were told.
//!
//! Every 4th trial sends SIGTERM first and SIGKILLs at a random moment
//! after it, which lands in the drain or in the derived-state save; the
//! short refresh debounce keeps a background refresh running through most
//! kills (the test counts how many hit one).
//!
//!     CRASH_SEED=N CRASH_TRIALS=24 cargo test --test crash_loop

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::grpc::{self, Client};
use common::{read_image, split, subset, Server};
use lookalike::api::pb::{self, item_outcome::Status as Outcome};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const G: &str = "g";
const CONFIG: &str = "[post_processing]\nrefresh_debounce_ms = 5\n";
/// Ids each descriptor worker owns (adds, replaces and removes among them).
const IDS_PER_WORKER: u64 = 120;
const DESCRIPTOR_WORKERS: u64 = 3;
const IMAGE_IDS: u64 = 12;

/// What a stored item must hold: a descriptor, or absent.
type Value = Option<Vec<f32>>;

/// What the clients were told, per id: the last acknowledged value, and
/// for an id whose last request got no answer, the values it may hold.
#[derive(Default)]
struct Model {
    acked: HashMap<String, Value>,
    in_doubt: HashMap<String, Vec<Value>>,
}

impl Model {
    fn current(&self, id: &str) -> Value {
        self.acked.get(id).cloned().flatten()
    }

    fn begin(&mut self, id: &str, next: Value) {
        let old = self.current(id);
        self.in_doubt.insert(id.to_string(), vec![old, next]);
    }

    fn ack(&mut self, id: &str, v: Value) {
        self.in_doubt.remove(id);
        self.acked.insert(id.to_string(), v);
    }

    /// Refused for a reason: the item keeps its old value.
    fn unchanged(&mut self, id: &str) {
        self.in_doubt.remove(id);
    }
}

fn close(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= 1e-4)
}

/// A descriptor worker: batches of adds and replacements, and removals,
/// among its own ids, one request at a time, until the server dies.
async fn descriptor_worker(
    mut client: Client,
    model: Arc<Mutex<Model>>,
    w: u64,
    dims: usize,
    mut rng: StdRng,
) {
    loop {
        let ids: Vec<String> = (0..4)
            .map(|_| format!("d{w}-{}", rng.random_range(0..IDS_PER_WORKER)))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        if rng.random_bool(0.25) {
            {
                let mut m = model.lock().unwrap();
                ids.iter().for_each(|id| m.begin(id, None));
            }
            let r = client
                .remove_from_gallery(pb::RemoveRequest {
                    gallery: G.into(),
                    ids: ids.clone(),
                })
                .await;
            if r.is_err() {
                return; // the server is gone: these stay in doubt
            }
            let mut m = model.lock().unwrap();
            ids.iter().for_each(|id| m.ack(id, None));
            continue;
        }
        let values: Vec<Vec<f32>> = ids
            .iter()
            .map(|_| grpc::unit_vector(rng.random(), dims))
            .collect();
        {
            let mut m = model.lock().unwrap();
            for (id, v) in ids.iter().zip(&values) {
                m.begin(id, Some(v.clone()));
            }
        }
        let items = ids
            .iter()
            .zip(&values)
            .map(|(id, v)| grpc::descriptor_item(G, id, v.clone()))
            .collect();
        let (outcomes, end) = grpc::add_stream(&mut client, items).await;
        let mut m = model.lock().unwrap();
        for o in &outcomes {
            let i = o.index as usize;
            match Outcome::try_from(o.status) {
                Ok(Outcome::Added | Outcome::Replaced) => m.ack(&ids[i], Some(values[i].clone())),
                _ => m.unchanged(&ids[i]),
            }
        }
        if end.is_err() {
            return;
        }
    }
}

/// Image adds and replacements: ids `img-N`, each one of a few photos.
async fn image_worker(
    mut client: Client,
    model: Arc<Mutex<Model>>,
    photos: Arc<Vec<(Vec<u8>, Vec<f32>)>>,
    mut rng: StdRng,
) {
    loop {
        let id = format!("img-{}", rng.random_range(0..IMAGE_IDS));
        let (bytes, descriptor) = &photos[rng.random_range(0..photos.len())];
        model.lock().unwrap().begin(&id, Some(descriptor.clone()));
        let (outcomes, end) =
            grpc::add_stream(&mut client, vec![grpc::image_item(G, &id, bytes.clone())]).await;
        let mut m = model.lock().unwrap();
        match outcomes.first().map(|o| Outcome::try_from(o.status)) {
            Some(Ok(Outcome::Added | Outcome::Replaced)) => m.ack(&id, Some(descriptor.clone())),
            Some(_) => m.unchanged(&id),
            None => {}
        }
        if end.is_err() {
            return;
        }
    }
}

/// Searches of every kind, checked for an answer, until the server dies.
async fn search_worker(mut client: Client, dims: usize, mut rng: StdRng) {
    loop {
        let req = pb::SearchRequest {
            gallery: G.into(),
            query: Some(pb::search_request::Query::Descriptor(pb::Descriptor {
                values: grpc::unit_vector(rng.random(), dims),
                model_fingerprint: String::new(),
            })),
            top_k: 5,
            post_processing: if rng.random_bool(0.5) {
                grpc::plain()
            } else {
                None
            },
            ..Default::default()
        };
        if client.search(req).await.is_err() {
            return;
        }
    }
}

/// Checks the restarted server against the model and settles every id in
/// doubt to what the server holds.
async fn verify(client: &mut Client, model: &mut Model, trial: usize) {
    let ids: Vec<String> = model
        .acked
        .keys()
        .chain(model.in_doubt.keys())
        .cloned()
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    for id in &ids {
        let got = client
            .get_item(pb::GetItemRequest {
                gallery: G.into(),
                id: id.clone(),
                include_descriptor: true,
                ..Default::default()
            })
            .await;
        let got: Value = match got {
            Ok(item) => Some(item.into_inner().descriptor.unwrap().values),
            Err(e) if e.code() == tonic::Code::NotFound => None,
            Err(e) => panic!("trial {trial}: GetItem {id}: {e}"),
        };
        let allowed = match model.in_doubt.get(id) {
            Some(values) => values.clone(),
            None => vec![model.current(id)],
        };
        let ok = allowed.iter().any(|a| match (a, &got) {
            (None, None) => true,
            (Some(a), Some(g)) => close(a, g),
            _ => false,
        });
        assert!(
            ok,
            "trial {trial}: {id} holds {:?}, acknowledged {:?} (in doubt: {})",
            got.as_ref().map(|v| &v[..3]),
            model.current(id).as_ref().map(|v| v[..3].to_vec()),
            model.in_doubt.contains_key(id)
        );
        model.ack(id, got);
    }
    let mut expected: Vec<&String> = model
        .acked
        .iter()
        .filter(|(_, v)| v.is_some())
        .map(|(k, _)| k)
        .collect();
    expected.sort();
    let mut listed = grpc::list_all(client, G).await;
    listed.sort();
    assert_eq!(
        listed.iter().collect::<Vec<_>>(),
        expected,
        "trial {trial}: ListItems"
    );
    let stats = grpc::stats(client, G).await;
    assert_eq!(
        stats.count as usize,
        expected.len(),
        "trial {trial}: GalleryStats"
    );
    // Derived state, loaded or recomputed, catches up with the store.
    grpc::wait_refreshed(client, G).await;
    // Searches answer, and a stored descriptor finds its own item.
    for id in expected.iter().take(5) {
        let v = model.current(id).unwrap();
        let hits = client
            .search(pb::SearchRequest {
                gallery: G.into(),
                query: Some(pb::search_request::Query::Descriptor(pb::Descriptor {
                    values: v,
                    model_fingerprint: String::new(),
                })),
                top_k: 3,
                exact: true,
                post_processing: grpc::plain(),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("trial {trial}: search: {e}"))
            .into_inner()
            .hits;
        assert!(hits[0].distance < 1e-3, "trial {trial}: {id}: {hits:?}");
        // Two image ids may hold the same photo: the same distance.
        assert!(
            hits.iter().any(|h| &&h.id == id),
            "trial {trial}: {id} not found: {hits:?}"
        );
    }
    let with_kr = client
        .search(pb::SearchRequest {
            gallery: G.into(),
            query: Some(pb::search_request::Query::ItemId(expected[0].clone())),
            top_k: 5,
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("trial {trial}: default-pipeline search: {e}"))
        .into_inner();
    assert_eq!(with_kr.stages, ["aqe", "k_reciprocal"]);
    assert!(!with_kr.hits.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_state_survives_kill_9_loops() {
    let seed: u64 = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs()
        });
    let trials: usize = std::env::var("CRASH_TRIALS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(24);
    println!("crash loop: CRASH_SEED={seed} CRASH_TRIALS={trials}");
    let mut rng = StdRng::seed_from_u64(seed);
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path(), CONFIG);
    let mut client = server.client().await;
    let dims = grpc::create_gallery(&mut client, G).await;
    // The expected descriptor of each photo, from the same server.
    let mut photos = Vec::new();
    for (rel, _) in subset(&split("val.txt"), &[3, 33, 63], 1) {
        let bytes = read_image(&rel);
        let d = client
            .embed(pb::EmbedRequest {
                image: bytes.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .descriptor
            .unwrap()
            .values;
        photos.push((bytes, d));
    }
    let photos = Arc::new(photos);
    // Enough items first that a refresh takes a while.
    let seeded: Vec<_> = (0..400)
        .map(|i| {
            grpc::descriptor_item(
                G,
                &format!("base-{i}"),
                grpc::unit_vector(i + 1_000_000, dims),
            )
        })
        .collect();
    let mut model = Model::default();
    let (outcomes, end) = grpc::add_stream(&mut client, seeded).await;
    end.unwrap();
    for i in 0..400u64 {
        assert_eq!(outcomes[i as usize].status, Outcome::Added as i32);
        model.ack(
            &format!("base-{i}"),
            Some(grpc::unit_vector(i + 1_000_000, dims)),
        );
    }
    let mut server = Some(server);
    let (mut hit_refresh, mut after_term) = (0, 0);
    for trial in 0..trials {
        let s = server.take().unwrap();
        let client = s.client().await;
        let shared = Arc::new(Mutex::new(std::mem::take(&mut model)));
        let mut tasks = Vec::new();
        for w in 0..DESCRIPTOR_WORKERS {
            let r = StdRng::seed_from_u64(rng.random());
            tasks.push(tokio::spawn(descriptor_worker(
                client.clone(),
                shared.clone(),
                w,
                dims,
                r,
            )));
        }
        let r = StdRng::seed_from_u64(rng.random());
        tasks.push(tokio::spawn(image_worker(
            client.clone(),
            shared.clone(),
            photos.clone(),
            r,
        )));
        let r = StdRng::seed_from_u64(rng.random());
        tasks.push(tokio::spawn(search_worker(client.clone(), dims, r)));
        // The random moment of the kill (this sleep is the experiment).
        tokio::time::sleep(Duration::from_millis(rng.random_range(100..1500))).await;
        let index = grpc::stats(&mut client.clone(), G).await.index.unwrap();
        if index.stale_items > 0 {
            hit_refresh += 1;
        }
        if trial % 4 == 3 {
            after_term += 1;
            s.terminate();
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..400))).await;
        }
        s.kill();
        for t in tasks {
            t.await.unwrap();
        }
        model = Arc::try_unwrap(shared).ok().unwrap().into_inner().unwrap();
        let in_doubt = model.in_doubt.len();
        let restarted = Server::start(data.path(), CONFIG);
        let mut client = restarted.client().await;
        verify(&mut client, &mut model, trial).await;
        println!(
            "trial {trial}: {} items, {in_doubt} in doubt at the kill, refresh pending {}",
            model.acked.values().filter(|v| v.is_some()).count(),
            index.stale_items
        );
        server = Some(restarted);
    }
    println!("{trials} trials: {hit_refresh} killed with a refresh pending, {after_term} killed after SIGTERM");
    assert!(
        hit_refresh > 0,
        "no kill landed during a refresh: lower the debounce"
    );
}
