//! Load, overload and recovery through the real server on loopback.
//!
//!     cargo bench --bench load [-- SECONDS_PER_PHASE]     (default 15)
//!     LOAD_SEARCHERS=4 LOAD_INGESTERS=2 LOAD_GALLERY=2000  (the defaults)
//!     LOAD_SOAK=1  one long steady phase of SECONDS instead (RSS flat?)
//!
//! Starts `lookalike serve` (this build's binary, the default model
//! exported fresh, admin port on) and tonic clients in this process:
//! 1. preload LOAD_GALLERY descriptors;
//! 2. steady: N searchers (by image and by descriptor, each with the
//!    default AQE + KR and with both off) and M ingesters (image adds,
//!    descriptor adds, replacements and removals);
//! 3. overload: 8N exact-scan + KR searchers and 48 image ingesters
//!    against `[embed] max_in_flight = 32` and the default search
//!    admission, so both bounds are hit;
//! 4. recovery: the steady load again, expected free of errors.
//!
//! Per phase: throughput and p50 / p99 / p999 latency per operation, every
//! error by status code (RETRY_LATER outcomes included), and the server's
//! peak RSS (/proc), embedding queue depth and searches running (sampled
//! from /metrics every 100 ms). Every phase is bounded in time and count.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lookalike::api::pb::{self, add_item::Content, add_response::Kind, retrieval_client};
use lookalike::api::pb::{item_outcome::Status as Outcome, search_request::Query};
use rand::{Rng, SeedableRng};
use tonic::transport::Channel;

#[path = "common/server.rs"]
mod server;
use server::Server;

type Client = retrieval_client::RetrievalClient<Channel>;

/// Most operations one worker runs in a phase, whatever the time left.
const MAX_OPS_PER_WORKER: usize = 200_000;
const GALLERY: &str = "load";
const SERVER_CONFIG: &str = "admin_listen = \"127.0.0.1:0\"\n[embed]\nmax_in_flight = 32\n";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Gauges from the admin port's /metrics (plain HTTP/1.1 on loopback).
fn gauges(admin: &str) -> (f64, f64) {
    let mut text = String::new();
    if let Ok(mut s) = std::net::TcpStream::connect(admin) {
        let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let _ = s.read_to_string(&mut text);
    }
    let value = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    };
    (
        value("lookalike_embed_queue_depth"),
        value("lookalike_search_running"),
    )
}

#[derive(Default)]
struct Peaks {
    rss_first: f64,
    rss_last: f64,
    rss_max: f64,
    queue_max: f64,
    running_max: f64,
    /// Every sample, 100 ms apart.
    rss: Vec<f64>,
}

/// Samples the server every 100 ms until `stop`.
fn sample(pid: u32, admin: String, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Peaks> {
    std::thread::spawn(move || {
        let mut p = Peaks {
            rss_first: rss_mib(pid),
            ..Default::default()
        };
        while !stop.load(Ordering::Relaxed) {
            let rss = rss_mib(pid);
            let (queue, running) = gauges(&admin);
            p.rss_max = p.rss_max.max(rss);
            p.rss_last = rss;
            p.rss.push(rss);
            p.queue_max = p.queue_max.max(queue);
            p.running_max = p.running_max.max(running);
            std::thread::sleep(Duration::from_millis(100));
        }
        p
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Op {
    SearchImage { post: bool },
    SearchDescriptor { post: bool },
    SearchExactKr,
    AddImage,
    AddDescriptors,
    Remove,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::SearchImage { post: true } => "search image, AQE + KR",
            Op::SearchImage { post: false } => "search image, plain",
            Op::SearchDescriptor { post: true } => "search descriptor, AQE + KR",
            Op::SearchDescriptor { post: false } => "search descriptor, plain",
            Op::SearchExactKr => "search descriptor, exact + AQE + KR",
            Op::AddImage => "add 1 image",
            Op::AddDescriptors => "add 8 descriptors (some replacing)",
            Op::Remove => "remove 4 ids",
        }
    }
}

#[derive(Default)]
struct Tally {
    ok_ms: Vec<f64>,
    /// How long a failed operation took (a refusal should be at once).
    err_ms: Vec<f64>,
    /// Status code (or item outcome) -> count.
    errors: BTreeMap<String, u64>,
}

type Tallies = Arc<Mutex<HashMap<Op, Tally>>>;

struct Ctx {
    dims: usize,
    images: Arc<Vec<Vec<u8>>>,
}

fn unit(rng: &mut impl Rng, dims: usize) -> Vec<f32> {
    let v: Vec<f32> = (0..dims).map(|_| rng.random::<f32>() - 0.5).collect();
    let n = v.iter().map(|a| a * a).sum::<f32>().sqrt();
    v.into_iter().map(|a| a / n).collect()
}

fn descriptor_item(id: String, values: Vec<f32>) -> pb::AddItem {
    pb::AddItem {
        gallery: GALLERY.into(),
        id,
        content: Some(Content::Descriptor(pb::Descriptor {
            values,
            model_fingerprint: String::new(),
        })),
        metadata: HashMap::new(),
    }
}

/// Sends `items` on one AddToGallery stream; the outcomes that are not
/// ADDED or REPLACED, by name.
async fn add(client: &mut Client, items: Vec<pb::AddItem>) -> Result<Vec<String>, tonic::Status> {
    let mut stream = client
        .add_to_gallery(tokio_stream::iter(items))
        .await?
        .into_inner();
    let mut bad = Vec::new();
    while let Some(r) = stream.message().await? {
        if let Some(Kind::Outcome(o)) = r.kind {
            if o.status != Outcome::Added as i32 && o.status != Outcome::Replaced as i32 {
                let s = Outcome::try_from(o.status).map_or("?", |s| s.as_str_name());
                bad.push(s.to_string());
            }
        }
    }
    Ok(bad)
}

fn plain() -> Option<pb::PostProcessing> {
    Some(pb::PostProcessing {
        shortlist: None,
        query_expansion: Some(pb::QueryExpansion {
            enabled: false,
            ..Default::default()
        }),
        k_reciprocal: Some(pb::KReciprocal {
            enabled: false,
            ..Default::default()
        }),
    })
}

/// One operation; Err(names) for each failure it met.
async fn run_op(
    op: Op,
    client: &mut Client,
    ctx: &Ctx,
    rng: &mut rand::rngs::StdRng,
    worker: usize,
    n: usize,
) -> Result<(), Vec<String>> {
    let code = |s: tonic::Status| vec![format!("{:?}", s.code())];
    let search = |query, post, exact| pb::SearchRequest {
        gallery: GALLERY.into(),
        query: Some(query),
        top_k: 10,
        exact,
        post_processing: post,
        ..Default::default()
    };
    let image = || ctx.images[rng_index(n, ctx.images.len())].clone();
    let req = match op {
        Op::SearchImage { post } => {
            search(Query::Image(image()), (!post).then(plain).flatten(), false)
        }
        Op::SearchDescriptor { post } => search(
            Query::Descriptor(pb::Descriptor {
                values: unit(rng, ctx.dims),
                model_fingerprint: String::new(),
            }),
            (!post).then(plain).flatten(),
            false,
        ),
        Op::SearchExactKr => search(
            Query::Descriptor(pb::Descriptor {
                values: unit(rng, ctx.dims),
                model_fingerprint: String::new(),
            }),
            None,
            true,
        ),
        Op::AddImage => {
            let item = pb::AddItem {
                gallery: GALLERY.into(),
                // Ids repeat every 64 operations, so the gallery stays bounded
                // (a soak then shows memory, not growth).
                id: format!("img-{worker}-{}", n % 64),
                content: Some(Content::Image(image())),
                metadata: HashMap::new(),
            };
            return match add(client, vec![item]).await {
                Ok(bad) if bad.is_empty() => Ok(()),
                Ok(bad) => Err(bad),
                Err(s) => Err(code(s)),
            };
        }
        Op::AddDescriptors => {
            // Ids repeat every 64 operations: later ones replace.
            let items = (0..8)
                .map(|i| descriptor_item(format!("d-{worker}-{}-{i}", n % 64), unit(rng, ctx.dims)))
                .collect();
            return match add(client, items).await {
                Ok(bad) if bad.is_empty() => Ok(()),
                Ok(bad) => Err(bad),
                Err(s) => Err(code(s)),
            };
        }
        Op::Remove => {
            let ids = (0..4)
                .map(|i| format!("d-{worker}-{}-{i}", rng.random_range(0..64)))
                .collect();
            let r = pb::RemoveRequest {
                gallery: GALLERY.into(),
                ids,
            };
            return client.remove_from_gallery(r).await.map(drop).map_err(code);
        }
    };
    client.search(req).await.map(drop).map_err(code)
}

fn rng_index(n: usize, len: usize) -> usize {
    (n * 7919) % len
}

async fn worker(
    mut client: Client,
    ops: Vec<Op>,
    ctx: Arc<Ctx>,
    worker: usize,
    until: Instant,
    tallies: Tallies,
) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(worker as u64);
    let mut local: HashMap<Op, Tally> = HashMap::new();
    for n in 0..MAX_OPS_PER_WORKER {
        if Instant::now() >= until {
            break;
        }
        let op = ops[n % ops.len()];
        let t = Instant::now();
        let r = run_op(op, &mut client, &ctx, &mut rng, worker, n).await;
        let tally = local.entry(op).or_default();
        match r {
            Ok(()) => tally.ok_ms.push(t.elapsed().as_secs_f64() * 1e3),
            Err(names) => {
                tally.err_ms.push(t.elapsed().as_secs_f64() * 1e3);
                for name in names {
                    *tally.errors.entry(name).or_default() += 1;
                }
            }
        }
    }
    let mut all = tallies.lock().unwrap();
    for (op, t) in local {
        let e = all.entry(op).or_default();
        e.ok_ms.extend(t.ok_ms);
        e.err_ms.extend(t.err_ms);
        for (k, v) in t.errors {
            *e.errors.entry(k).or_default() += v;
        }
    }
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Runs `workers` (one op cycle each) for `secs`; prints the report.
/// Returns the number of errors.
async fn phase(
    name: &str,
    server: &Server,
    client: &Client,
    ctx: &Arc<Ctx>,
    workers: Vec<Vec<Op>>,
    secs: u64,
) -> u64 {
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = sample(
        server.child.id(),
        server
            .admin
            .clone()
            .expect("SERVER_CONFIG sets admin_listen"),
        stop.clone(),
    );
    let tallies: Tallies = Arc::default();
    let until = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let n_workers = workers.len();
    let tasks: Vec<_> = workers
        .into_iter()
        .enumerate()
        .map(|(i, ops)| {
            tokio::spawn(worker(
                client.clone(),
                ops,
                ctx.clone(),
                i,
                until,
                tallies.clone(),
            ))
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let peaks = sampler.join().unwrap();
    println!("\n== {name}: {n_workers} clients, {elapsed:.1} s");
    println!(
        "{:<38} {:>7} {:>8} {:>9} {:>9} {:>9}  errors",
        "operation", "ok", "ok/s", "p50 ms", "p99 ms", "p999 ms"
    );
    let mut tallies = std::mem::take(&mut *tallies.lock().unwrap());
    let mut ops: Vec<_> = tallies.keys().copied().collect();
    ops.sort();
    let mut errors = 0;
    for op in ops {
        let t = tallies.get_mut(&op).unwrap();
        t.ok_ms.sort_by(f64::total_cmp);
        let (p50, p99, p999) = if t.ok_ms.is_empty() {
            (f64::NAN, f64::NAN, f64::NAN)
        } else {
            (
                pct(&t.ok_ms, 0.5),
                pct(&t.ok_ms, 0.99),
                pct(&t.ok_ms, 0.999),
            )
        };
        errors += t.errors.values().sum::<u64>();
        println!(
            "{:<38} {:>7} {:>8.1} {:>9.1} {:>9.1} {:>9.1}  {:?}",
            op.name(),
            t.ok_ms.len(),
            t.ok_ms.len() as f64 / elapsed,
            p50,
            p99,
            p999,
            t.errors
        );
        if !t.err_ms.is_empty() {
            t.err_ms.sort_by(f64::total_cmp);
            println!(
                "{:<38} failed calls answered in p50 {:.2} ms, p99 {:.2} ms",
                "",
                pct(&t.err_ms, 0.5),
                pct(&t.err_ms, 0.99)
            );
        }
    }
    println!(
        "server RSS: {:.0} MiB at start, {:.0} MiB peak, {:.0} MiB at end; embed queue depth peak {:.0}, searches running peak {:.0}",
        peaks.rss_first, peaks.rss_max, peaks.rss_last, peaks.queue_max, peaks.running_max
    );
    if peaks.rss.len() >= 10 {
        let tenths: Vec<String> = (1..=10)
            .map(|i| format!("{:.0}", peaks.rss[i * (peaks.rss.len() - 1) / 10]))
            .collect();
        println!(
            "server RSS MiB at each tenth of the phase: {}",
            tenths.join(" ")
        );
    }
    errors
}

#[tokio::main]
async fn main() {
    let secs: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(15);
    let searchers = env_or("LOAD_SEARCHERS", 4);
    let ingesters = env_or("LOAD_INGESTERS", 2);
    let gallery = env_or("LOAD_GALLERY", 2000);
    let soak = std::env::var_os("LOAD_SOAK").is_some();
    let dir = tempfile::tempdir().unwrap();
    let manifest = server::export_default(dir.path(), "load");
    let server = Server::start(dir.path(), &manifest, SERVER_CONFIG, "error");
    let mut client = Client::connect(format!("http://{}", server.addr))
        .await
        .expect("connecting")
        .max_decoding_message_size(64 << 20);
    let dims = client
        .create_gallery(pb::CreateGalleryRequest {
            gallery: GALLERY.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .dims as usize;
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    for start in (0..gallery).step_by(500) {
        let items = (start..(start + 500).min(gallery))
            .map(|i| descriptor_item(format!("pre-{i}"), unit(&mut rng, dims)))
            .collect();
        let bad = add(&mut client, items).await.expect("preloading");
        assert!(bad.is_empty(), "preload refused: {bad:?}");
    }
    let list = std::fs::read_to_string(repo().join("../shared/datasets/grocery/val.txt"))
        .expect("grocery val.txt");
    let images: Vec<Vec<u8>> = list
        .lines()
        .filter_map(|l| l.split(',').next())
        .take(32)
        .map(|p| std::fs::read(repo().join("../shared/datasets/grocery").join(p.trim())).unwrap())
        .collect();
    let ctx = Arc::new(Ctx {
        dims,
        images: Arc::new(images),
    });
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "lookalike load: {gallery} preloaded descriptors ({dims}-d), {searchers} searchers, \
         {ingesters} ingesters, {secs} s per phase, {cores} cores; server config: {SERVER_CONFIG:?}"
    );
    let search_ops = [
        Op::SearchImage { post: true },
        Op::SearchImage { post: false },
        Op::SearchDescriptor { post: true },
        Op::SearchDescriptor { post: false },
    ];
    let steady: Vec<Vec<Op>> = (0..searchers)
        .map(|i| vec![search_ops[i % 4]])
        .chain((0..ingesters).map(|_| {
            vec![
                Op::AddImage,
                Op::AddDescriptors,
                Op::AddDescriptors,
                Op::Remove,
            ]
        }))
        .collect();
    if soak {
        let errors = phase("soak", &server, &client, &ctx, steady, secs).await;
        println!("\nsoak errors: {errors}");
        return;
    }
    let e1 = phase("steady", &server, &client, &ctx, steady.clone(), secs).await;
    let overload: Vec<Vec<Op>> = (0..8 * searchers)
        .map(|_| vec![Op::SearchExactKr])
        .chain((0..48).map(|_| vec![Op::AddImage]))
        .collect();
    phase("overload", &server, &client, &ctx, overload, secs).await;
    let e3 = phase("recovery", &server, &client, &ctx, steady, secs).await;
    println!("\nerrors outside the overload phase: steady {e1}, recovery {e3}");
}
