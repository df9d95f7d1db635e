//! Write acknowledgement on a cluster replica beside a single node, in one
//! run, and how long the write takes to reach a second replica.
//!
//!     cargo bench --bench replication [-- WRITES]     (default 300)
//!
//! Starts a real 3-node NATS JetStream cluster (`nats-server` from
//! scripts/setup.sh, `sync_interval: always`, streams with 3 replicas),
//! two `lookalike serve` replicas of it and one single node, all of this
//! build on loopback. Then, one at a time, WRITES descriptor adds to the
//! single node and WRITES to replica A; after each acknowledged cluster
//! write, GetItem on replica B with the write's sequence as
//! `min_sequence` (it waits until B has applied it): the convergence lag,
//! measured from A's acknowledgement.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use lookalike::api::pb::{self, add_item::Content, add_response::Kind, retrieval_client};
use tonic::transport::Channel;

#[path = "../tests/common/nats.rs"]
mod nats;
#[path = "common/server.rs"]
mod server;
use server::Server;

type Client = retrieval_client::RetrievalClient<Channel>;
const DIMS: usize = 1280;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn vector(seed: u64) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..DIMS)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % 2000) as f32 / 1000.0 - 1.0
        })
        .collect()
}

async fn client(s: &Server) -> Client {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(mut c) =
            retrieval_client::RetrievalClient::connect(format!("http://{}", s.addr)).await
        {
            // Ready once the gallery list answers and creating works.
            if c.list_galleries(pb::ListGalleriesRequest {}).await.is_ok() {
                return c;
            }
        }
        assert!(Instant::now() < deadline, "server not ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One descriptor add; its time to the outcome, and its sequence.
async fn add_one(c: &mut Client, id: String, seed: u64) -> (Duration, u64) {
    let item = pb::AddItem {
        gallery: "w".into(),
        id,
        content: Some(Content::Descriptor(pb::Descriptor {
            values: vector(seed),
            model_fingerprint: String::new(),
        })),
        metadata: Default::default(),
    };
    let t = Instant::now();
    let mut stream = c
        .add_to_gallery(tokio_stream::iter(vec![item]))
        .await
        .expect("AddToGallery")
        .into_inner();
    let mut seq = None;
    while let Some(r) = stream.message().await.expect("add stream") {
        if let Some(Kind::Outcome(o)) = r.kind {
            assert!(o.reason.is_empty(), "add refused: {}", o.reason);
            seq = Some(o.sequence);
        }
    }
    (t.elapsed(), seq.expect("an outcome"))
}

fn pct(mut v: Vec<Duration>, p: f64) -> f64 {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i].as_secs_f64() * 1e3
}

fn report(name: &str, v: Vec<Duration>) {
    println!(
        "{name:<44} n={:<5} p50 {:>7.2} ms   p99 {:>7.2} ms",
        v.len(),
        pct(v.clone(), 0.5),
        pct(v, 0.99)
    );
}

fn main() {
    let writes: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(300);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let dir = tempfile::tempdir().unwrap();
        let manifest = server::export_default(dir.path(), "replication");
        let nats = nats::NatsCluster::start(3).await;
        let mk = |name: &str, config: &str| {
            let d = dir.path().join(name);
            std::fs::create_dir_all(&d).unwrap();
            Server::start(&d, &manifest, config, "warn")
        };
        let single = mk("single", "");
        let a = mk("a", &nats.config(""));
        let b = mk("b", &nats.config(""));
        let (mut cs, mut ca, mut cb) = (client(&single).await, client(&a).await, client(&b).await);
        for c in [&mut cs, &mut ca] {
            c.create_gallery(pb::CreateGalleryRequest {
                gallery: "w".into(),
            })
            .await
            .expect("CreateGallery");
        }
        let (mut single_ack, mut cluster_ack, mut lag) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..writes {
            // Interleaved, so both see the same moment of a noisy machine.
            single_ack.push(add_one(&mut cs, format!("s{i}"), i).await.0);
            let (took, seq) = add_one(&mut ca, format!("c{i}"), i).await;
            cluster_ack.push(took);
            let t = Instant::now();
            cb.get_item(pb::GetItemRequest {
                gallery: "w".into(),
                id: format!("c{i}"),
                min_sequence: seq,
                ..Default::default()
            })
            .await
            .expect("GetItem on replica B at the write's sequence");
            lag.push(t.elapsed());
        }
        println!("replication bench: {writes} one-item descriptor adds each, {DIMS}-d, loopback");
        report("single node: add acknowledged", single_ack);
        report("cluster replica A: add acknowledged", cluster_ack);
        report("replica B: readable after A's ack (lag)", lag);
    });
}
