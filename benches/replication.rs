//! A cluster replica beside a single node, in one run: write
//! acknowledgement (descriptor adds, image adds, batches of 32), how long
//! a write takes to reach a second replica, search throughput while a
//! replica applies a write stream, and the bootstrap of a new replica.
//!
//!     cargo bench --bench replication [-- WRITES] [search_s=S] [bootstrap=N]
//!
//! Defaults: 300 writes, 10 s search windows, a 100,000-item bootstrap
//! (`bootstrap=0` skips it). Starts a real 3-node NATS JetStream cluster
//! (`nats-server` from scripts/setup.sh, `sync_interval: always`, streams
//! with 3 replicas), two `lookalike serve` replicas of it (A takes the
//! writes, B follows) and one single node, all of this build on loopback.
//! Single-node and cluster writes are interleaved one by one, so both see
//! the same moments of a noisy machine. The lag is GetItem on B with the
//! write's sequence as `min_sequence` (B waits until it has applied it),
//! timed from A's acknowledgement.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lookalike::api::pb::{self, add_item::Content, add_response::Kind, retrieval_client};
use rand::SeedableRng;
use tonic::transport::Channel;

#[path = "common/mod.rs"]
mod common;
#[path = "../tests/common/nats.rs"]
mod nats;
#[path = "common/server.rs"]
mod server;
use server::Server;

type Client = retrieval_client::RetrievalClient<Channel>;
const DIMS: usize = 1280;
/// Items in each AddToGallery stream that loads a gallery.
const LOAD_STREAM: usize = 1024;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

struct Args {
    writes: usize,
    search: Duration,
    bootstrap: usize,
}

fn args() -> Args {
    let mut a = Args {
        writes: 300,
        search: Duration::from_secs(10),
        bootstrap: 100_000,
    };
    for arg in std::env::args().skip(1) {
        if let Some(n) = arg.strip_prefix("bootstrap=") {
            a.bootstrap = n.parse().expect("bootstrap=N");
        } else if let Some(s) = arg.strip_prefix("search_s=") {
            a.search = Duration::from_secs(s.parse().expect("search_s=S"));
        } else if let Ok(n) = arg.parse() {
            a.writes = n;
        }
    }
    a
}

async fn client(s: &Server) -> Client {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(c) =
            retrieval_client::RetrievalClient::connect(format!("http://{}", s.addr)).await
        {
            let mut c = c.max_decoding_message_size(64 << 20);
            // Ready once the gallery list answers.
            if c.list_galleries(pb::ListGalleriesRequest {}).await.is_ok() {
                return c;
            }
        }
        assert!(Instant::now() < deadline, "server not ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether `s` reports `lookalike.v1.Retrieval` SERVING (caught up).
async fn ready(s: &Server) -> bool {
    let Ok(channel) = Channel::from_shared(format!("http://{}", s.addr))
        .unwrap()
        .connect()
        .await
    else {
        return false;
    };
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let r = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "lookalike.v1.Retrieval".into(),
        })
        .await;
    r.is_ok_and(|r| r.into_inner().status == 1)
}

async fn create(c: &mut Client, gallery: &str) {
    c.create_gallery(pb::CreateGalleryRequest {
        gallery: gallery.into(),
    })
    .await
    .expect("CreateGallery");
}

fn descriptor(gallery: &str, id: String, values: Vec<f32>) -> pb::AddItem {
    pb::AddItem {
        gallery: gallery.into(),
        id,
        content: Some(Content::Descriptor(pb::Descriptor {
            values,
            model_fingerprint: String::new(),
        })),
        metadata: Default::default(),
    }
}

fn image(gallery: &str, id: String, bytes: Vec<u8>) -> pb::AddItem {
    pb::AddItem {
        gallery: gallery.into(),
        id,
        content: Some(Content::Image(bytes)),
        metadata: Default::default(),
    }
}

/// One AddToGallery stream; its time to the last outcome, and the highest
/// sequence acknowledged. Every item must be taken.
async fn add(c: &mut Client, items: Vec<pb::AddItem>) -> (Duration, u64) {
    let t = Instant::now();
    let mut stream = c
        .add_to_gallery(tokio_stream::iter(items))
        .await
        .expect("AddToGallery")
        .into_inner();
    let mut seq = 0;
    while let Some(r) = stream.message().await.expect("add stream") {
        if let Some(Kind::Outcome(o)) = r.kind {
            assert!(o.reason.is_empty(), "add refused: {}", o.reason);
            seq = seq.max(o.sequence);
        }
    }
    (t.elapsed(), seq)
}

/// GetItem of `id` on `c` at `seq`: the time until it has it.
async fn lag(c: &mut Client, gallery: &str, id: String, seq: u64) -> Duration {
    let t = Instant::now();
    c.get_item(pb::GetItemRequest {
        gallery: gallery.into(),
        id,
        min_sequence: seq,
        ..Default::default()
    })
    .await
    .expect("GetItem on replica B at the write's sequence");
    t.elapsed()
}

fn ms(d: &[Duration], p: f64) -> f64 {
    let mut v: Vec<f64> = d.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    v.sort_by(f64::total_cmp);
    common::percentile(&v, p)
}

fn report(name: &str, v: &[Duration]) {
    println!(
        "{name:<52} n={:<5} p50 {:>8.2} ms   p99 {:>8.2} ms",
        v.len(),
        ms(v, 0.5),
        ms(v, 0.99)
    );
}

/// The three servers under test.
struct Nodes {
    single: Client,
    a: Client,
    b: Client,
}

/// Writes of one kind, single node and replica A interleaved; B's lag.
async fn interleaved(
    n: &mut Nodes,
    kind: &str,
    make: impl Fn(&str, usize) -> Vec<pb::AddItem>,
    count: usize,
) {
    let gallery = kind.replace(' ', "-");
    create(&mut n.single, &gallery).await;
    create(&mut n.a, &gallery).await;
    let (mut single, mut cluster, mut lags) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..count {
        single.push(add(&mut n.single, make(&gallery, i)).await.0);
        let items = make(&gallery, i);
        let last_id = items.last().map(|it| it.id.clone()).unwrap_or_default();
        let (took, seq) = add(&mut n.a, items).await;
        cluster.push(took);
        lags.push(lag(&mut n.b, &gallery, last_id, seq).await);
    }
    report(&format!("{kind}: single node, acknowledged"), &single);
    report(
        &format!("{kind}: cluster replica A, acknowledged"),
        &cluster,
    );
    report(&format!("{kind}: replica B readable after A's ack"), &lags);
}

fn grocery_photos(n: usize) -> Vec<Vec<u8>> {
    let root = repo().join("../shared/datasets/grocery");
    let list = std::fs::read_to_string(root.join("val.txt")).expect("grocery val.txt");
    list.lines()
        .filter_map(|l| l.split(',').next())
        .take(n)
        .map(|p| std::fs::read(root.join(p.trim())).expect("a grocery photo"))
        .collect()
}

/// Loads `items` into `gallery` on `c` in streams of LOAD_STREAM; returns
/// the last sequence and the time it took.
async fn load(c: &mut Client, gallery: &str, items: Vec<Vec<f32>>) -> (u64, Duration) {
    let t = Instant::now();
    let mut last = 0;
    let mut items = items.into_iter().enumerate().peekable();
    while items.peek().is_some() {
        let chunk = items
            .by_ref()
            .take(LOAD_STREAM)
            .map(|(i, v)| descriptor(gallery, format!("{gallery}-{i}"), v))
            .collect();
        last = last.max(add(c, chunk).await.1);
    }
    (last, t.elapsed())
}

/// Waits until `gallery`'s post-processing state covers every item (a
/// gallery up to `index.exact_limit`, 200k by default, has no graph).
async fn wait_refreshed(c: &mut Client, gallery: &str) -> Duration {
    let t = Instant::now();
    loop {
        let s = c
            .gallery_stats(pb::GalleryStatsRequest {
                gallery: gallery.into(),
                min_sequence: 0,
            })
            .await
            .expect("GalleryStats")
            .into_inner();
        let i = s.index.expect("index state");
        if i.stale_items == 0 && i.post_processing_generation > 0 {
            return t.elapsed();
        }
        assert!(
            t.elapsed() < Duration::from_secs(3600),
            "never refreshed: {i:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Numbers the items the search windows' writers add.
static NEXT_WRITE: AtomicU64 = AtomicU64::new(0);

/// Searches and their outcome in one window.
#[derive(Default)]
struct Window {
    took: Vec<Duration>,
    reranked: usize,
    written: u64,
}

/// Two closed-loop searchers on `searched` for `span`, while, when
/// `writer` is given, it adds batches of 32 to the same gallery as fast
/// as they are acknowledged.
async fn window(
    searched: &Server,
    writer: Option<&Server>,
    gallery: &str,
    queries: Arc<Vec<Vec<f32>>>,
    span: Duration,
) -> Window {
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let writing = match writer {
        Some(w) => {
            let mut c = client(w).await;
            let (stop, written, gallery) = (stop.clone(), written.clone(), gallery.to_string());
            Some(tokio::spawn(async move {
                let mut rng = rand::rngs::StdRng::seed_from_u64(5);
                while !stop.load(Ordering::Relaxed) {
                    let batch = (0..32)
                        .map(|_| {
                            let id = format!("w{}", NEXT_WRITE.fetch_add(1, Ordering::Relaxed));
                            descriptor(&gallery, id, common::random_unit_d(&mut rng, DIMS))
                        })
                        .collect();
                    add(&mut c, batch).await;
                    written.fetch_add(32, Ordering::Relaxed);
                }
            }))
        }
        None => None,
    };
    let mut searchers = Vec::new();
    for s in 0..2usize {
        let mut c = client(searched).await;
        let (stop, queries, gallery) = (stop.clone(), queries.clone(), gallery.to_string());
        searchers.push(tokio::spawn(async move {
            let mut w = Window::default();
            let mut q = s;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let r = c
                    .search(pb::SearchRequest {
                        gallery: gallery.clone(),
                        query: Some(pb::search_request::Query::Descriptor(pb::Descriptor {
                            values: queries[q % queries.len()].clone(),
                            model_fingerprint: String::new(),
                        })),
                        top_k: 10,
                        ..Default::default()
                    })
                    .await
                    .expect("Search")
                    .into_inner();
                w.took.push(t.elapsed());
                w.reranked += usize::from(r.stages.iter().any(|s| s.contains("reciprocal")));
                q += 2;
            }
            w
        }));
    }
    tokio::time::sleep(span).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Window::default();
    for s in searchers {
        let w = s.await.expect("a searcher");
        all.took.extend(w.took);
        all.reranked += w.reranked;
    }
    if let Some(w) = writing {
        w.await.expect("the writer");
    }
    all.written = written.load(Ordering::Relaxed);
    all
}

fn report_window(name: &str, span: Duration, w: &Window) {
    println!(
        "{name:<44} {:>6.1} searches/s  p50 {:>7.2} ms  p99 {:>7.2} ms  k-reciprocal {:>3.0} %  {:>5.0} writes/s",
        w.took.len() as f64 / span.as_secs_f64(),
        ms(&w.took, 0.5),
        ms(&w.took, 0.99),
        100.0 * w.reranked as f64 / w.took.len().max(1) as f64,
        w.written as f64 / span.as_secs_f64(),
    );
}

/// Search throughput on the single node and on replica B, each idle and
/// while a write stream lands on it (B: written to A, applied from the
/// stream).
async fn search_under_writes(
    n: &mut Nodes,
    single: &Server,
    a: &Server,
    b: &Server,
    span: Duration,
) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let (items, queries) = common::clustered_d(&mut rng, 5000, 200, DIMS);
    create(&mut n.single, "s").await;
    create(&mut n.a, "s").await;
    load(&mut n.single, "s", items.clone()).await;
    let (last, _) = load(&mut n.a, "s", items).await;
    lag(&mut n.b, "s", "s-0".into(), last).await;
    wait_refreshed(&mut n.single, "s").await;
    wait_refreshed(&mut n.b, "s").await;
    let queries = Arc::new(queries);
    println!(
        "search on a 5,000-item gallery ({DIMS}-d, default pipeline), 2 clients, {} s windows:",
        span.as_secs()
    );
    let q = || queries.clone();
    let single_idle = window(single, None, "s", q(), span).await;
    let b_idle = window(b, None, "s", q(), span).await;
    let single_busy = window(single, Some(single), "s", q(), span).await;
    let b_busy = window(b, Some(a), "s", q(), span).await;
    report_window("single node, no writes", span, &single_idle);
    report_window("replica B, no writes", span, &b_idle);
    report_window("single node, written to meanwhile", span, &single_busy);
    report_window("replica B, applying A's writes meanwhile", span, &b_busy);
}

fn rss_peak_mib(s: &Server) -> f64 {
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", s.child.id())).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Loads `n` items through A, then times a new replica on an empty disk
/// beside B restarted on its own disk (graceful stop, saved state).
async fn bootstrap(nodes: &mut Nodes, mk: &dyn Fn(&str) -> Server, b: Server, n: usize) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let (items, _) = common::clustered_d(&mut rng, n, 0, DIMS);
    create(&mut nodes.a, "big").await;
    let (last, took) = load(&mut nodes.a, "big", items).await;
    println!(
        "bootstrap: {n} items loaded through replica A in {:.1} s ({:.0} items/s acknowledged, streams of {LOAD_STREAM})",
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64()
    );
    let t = Instant::now();
    lag(&mut nodes.b, "big", "big-0".into(), last).await;
    println!(
        "  replica B at the last sequence {:.1} s after the load ended",
        t.elapsed().as_secs_f64()
    );
    wait_refreshed(&mut nodes.b, "big").await;
    println!(
        "  replica B refreshed (neighbour lists) {:.1} s after the load ended",
        t.elapsed().as_secs_f64()
    );

    // SIGTERM: B saves its derived state, as on a rolling restart.
    let ok = std::process::Command::new("kill")
        .args(["-TERM", &b.child.id().to_string()])
        .status()
        .map(|s| s.success());
    assert!(ok.unwrap_or(false), "kill -TERM");
    let mut b = b;
    b.child.wait().expect("B exits");
    for (what, dir) in [
        ("new replica C, empty disk", "c"),
        ("replica B again, its own disk", "b"),
    ] {
        let t = Instant::now();
        let s = mk(dir);
        let listening = t.elapsed();
        while !ready(&s).await {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let caught_up = t.elapsed();
        let mut c = client(&s).await;
        let stats = c
            .gallery_stats(pb::GalleryStatsRequest {
                gallery: "big".into(),
                min_sequence: last,
            })
            .await
            .expect("GalleryStats at the last sequence")
            .into_inner();
        assert_eq!(stats.count as usize, n, "{what} holds every item");
        wait_refreshed(&mut c, "big").await;
        println!(
            "  {what:<32} listening {:>6.1} s  ready (caught up) {:>6.1} s  refreshed {:>6.1} s  peak RSS {:>6.0} MiB",
            listening.as_secs_f64(),
            caught_up.as_secs_f64(),
            t.elapsed().as_secs_f64(),
            rss_peak_mib(&s)
        );
    }
}

fn main() {
    let args = args();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let dir = tempfile::tempdir().unwrap();
        let manifest = server::export_default(dir.path(), "replication");
        let nats = nats::NatsCluster::start(3).await;
        let start = |name: &str, config: &str| {
            let d = dir.path().join(name);
            std::fs::create_dir_all(&d).unwrap();
            Server::start(&d, &manifest, config, "warn")
        };
        let replica = |name: &str| start(name, &nats.config(""));
        let single = start("single", "");
        let a = replica("a");
        let b = replica("b");
        let mut n = Nodes {
            single: client(&single).await,
            a: client(&a).await,
            b: client(&b).await,
        };
        let writes = args.writes;
        println!(
            "replication bench: {DIMS}-d descriptors, loopback, {} cores",
            num_cpus()
        );
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let vectors: Vec<Vec<f32>> = (0..writes * 32)
            .map(|_| common::random_unit_d(&mut rng, DIMS))
            .collect();
        let one = |g: &str, i: usize| vec![descriptor(g, format!("d{i}"), vectors[i].clone())];
        interleaved(&mut n, "descriptor add", one, writes).await;
        let photos = grocery_photos(writes.min(100));
        let pic = |g: &str, i: usize| vec![image(g, format!("p{i}"), photos[i].clone())];
        interleaved(&mut n, "image add", pic, photos.len()).await;
        let batch = |g: &str, i: usize| {
            (i * 32..i * 32 + 32)
                .map(|j| descriptor(g, format!("b{j}"), vectors[j].clone()))
                .collect()
        };
        interleaved(&mut n, "batch of 32", batch, writes / 10).await;
        search_under_writes(&mut n, &single, &a, &b, args.search).await;
        if args.bootstrap > 0 {
            bootstrap(&mut n, &replica, b, args.bootstrap).await;
        }
    });
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
