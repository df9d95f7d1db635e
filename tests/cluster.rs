//! Replicated galleries on a real NATS JetStream cluster (three
//! `nats-server` processes on loopback) with real `lookalike serve`
//! replicas: a write on one is read on another, answers agree, replicas
//! that die or are new catch up, and faults of NATS lose nothing
//! acknowledged.

mod common;

use std::time::{Duration, Instant};

use common::grpc::{self, add_stream, descriptor_item, unit_vector};
use common::nats::NatsCluster;
use common::Server;
use lookalike::api::pb;
use lookalike::api::pb::retrieval_client::RetrievalClient;
use tonic::transport::Channel;

type Client = RetrievalClient<Channel>;

const DIMS: usize = 1280;

/// A replica with its admin port (metrics), before the `[cluster]` table.
fn replica(dir: &std::path::Path, nats: &NatsCluster) -> Server {
    let config = format!("admin_listen = \"127.0.0.1:0\"\n{}", nats.config(""));
    Server::start(dir, &config)
}

/// How many times `s` started copying gallery `g` from its stream's
/// first message since it started.
async fn copies_of_g(s: &Server) -> f64 {
    let admin = s.admin.as_deref().expect("admin port");
    common::metric(admin, "lookalike_replication_copies_total{gallery=\"g\"}").await
}

/// Waits until the replica reports `lookalike.v1.Retrieval` SERVING
/// (ready: caught up with the cluster; the overall entry is liveness).
async fn wait_serving(s: &Server) {
    let channel = Channel::from_shared(format!("http://{}", s.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: "lookalike.v1.Retrieval".into(),
            })
            .await;
        if r.is_ok_and(|r| r.into_inner().status == 1) {
            return;
        }
        assert!(Instant::now() < deadline, "replica never caught up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Adds `ids` as descriptors (seeded by their index); returns the highest
/// sequence acknowledged and the ids acknowledged.
async fn add(c: &mut Client, gallery: &str, seeds: std::ops::Range<u64>) -> (u64, Vec<String>) {
    let items = seeds
        .map(|i| descriptor_item(gallery, &format!("item-{i}"), unit_vector(i, DIMS)))
        .collect();
    let (outcomes, _) = add_stream(c, items).await;
    let mut acked = Vec::new();
    let mut seq = 0;
    for o in outcomes {
        if o.status == pb::item_outcome::Status::Added as i32
            || o.status == pb::item_outcome::Status::Replaced as i32
        {
            assert!(o.sequence > 0, "an acknowledged write names its sequence");
            seq = seq.max(o.sequence);
            acked.push(o.id);
        }
    }
    (seq, acked)
}

async fn stats_at(c: &mut Client, gallery: &str, min_sequence: u64) -> pb::GalleryStatsResponse {
    c.gallery_stats(pb::GalleryStatsRequest {
        gallery: gallery.into(),
        min_sequence,
    })
    .await
    .unwrap_or_else(|e| panic!("GalleryStats at {min_sequence}: {e:?}"))
    .into_inner()
}

async fn search_at(
    c: &mut Client,
    gallery: &str,
    min_sequence: u64,
    seed: u64,
    post: Option<pb::PostProcessing>,
) -> Result<pb::SearchResponse, tonic::Status> {
    c.search(pb::SearchRequest {
        gallery: gallery.into(),
        query: Some(pb::search_request::Query::Descriptor(pb::Descriptor {
            values: unit_vector(seed, DIMS),
            model_fingerprint: String::new(),
        })),
        top_k: 10,
        post_processing: post,
        min_sequence,
        ..Default::default()
    })
    .await
    .map(|r| r.into_inner())
}

fn ranked(r: &pb::SearchResponse) -> Vec<(String, i64)> {
    // Distances to 1e-5: both replicas compute them, in the same order.
    r.hits
        .iter()
        .map(|h| (h.id.clone(), (h.distance * 1e5).round() as i64))
        .collect()
}

/// A 3-node NATS cluster and two replicas of it, both ready, with clients.
struct Pair {
    nats: NatsCluster,
    _dirs: tempfile::TempDir,
    a: Server,
    b: Server,
    ca: Client,
    cb: Client,
}

async fn two_replicas() -> Pair {
    let nats = NatsCluster::start(3).await;
    let dirs = tempfile::tempdir().unwrap();
    let a = replica(&dirs.path().join("a"), &nats);
    let b = replica(&dirs.path().join("b"), &nats);
    wait_serving(&a).await;
    wait_serving(&b).await;
    let (ca, cb) = (a.client().await, b.client().await);
    Pair {
        nats,
        _dirs: dirs,
        a,
        b,
        ca,
        cb,
    }
}

/// Gallery "g" created on a with 20 items, read on b; the last sequence.
async fn gallery_of_20(p: &mut Pair) -> u64 {
    grpc::create_gallery(&mut p.ca, "g").await;
    let (seq, _) = add(&mut p.ca, "g", 0..20).await;
    assert_eq!(stats_at(&mut p.cb, "g", seq).await.count, 20);
    seq
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_on_one_replica_is_read_on_another_and_their_answers_agree() {
    let pair = two_replicas().await;
    let Pair { mut ca, mut cb, .. } = pair;

    assert_eq!(grpc::create_gallery(&mut ca, "g").await, DIMS);
    let again = cb
        .create_gallery(pb::CreateGalleryRequest {
            gallery: "g".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(again.code(), tonic::Code::AlreadyExists, "{again:?}");

    let (seq, acked) = add(&mut ca, "g", 0..60).await;
    assert_eq!(acked.len(), 60);
    // Read-your-writes on the other replica.
    let s = stats_at(&mut cb, "g", seq).await;
    assert_eq!(s.count, 60);
    let r = s
        .replication
        .expect("a replica reports its replication state");
    assert!(r.applied_sequence >= seq && r.connected, "{r:?}");
    assert_eq!(grpc::list_all(&mut cb, "g").await.len(), 60);

    // The same answers from both, plain and through the whole pipeline
    // once each has refreshed its derived state.
    let plain_a = search_at(&mut ca, "g", seq, 7, grpc::plain())
        .await
        .unwrap();
    let plain_b = search_at(&mut cb, "g", seq, 7, grpc::plain())
        .await
        .unwrap();
    assert_eq!(ranked(&plain_a), ranked(&plain_b));
    assert_eq!(plain_a.hits[0].id, "item-7");
    grpc::wait_refreshed(&mut ca, "g").await;
    grpc::wait_refreshed(&mut cb, "g").await;
    let full_a = search_at(&mut ca, "g", seq, 3, None).await.unwrap();
    let full_b = search_at(&mut cb, "g", seq, 3, None).await.unwrap();
    assert_eq!(full_a.stages, full_b.stages);
    assert!(
        full_a.stages.iter().any(|s| s.contains("reciprocal")),
        "{:?}",
        full_a.stages
    );
    assert_eq!(ranked(&full_a), ranked(&full_b));

    // A removal on b is seen on a at its sequence.
    let removed = cb
        .remove_from_gallery(pb::RemoveRequest {
            gallery: "g".into(),
            ids: vec!["item-7".into(), "never-added".into()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(removed.not_found, vec!["never-added".to_string()]);
    assert!(removed.sequence > seq);
    let gone = ca
        .get_item(pb::GetItemRequest {
            gallery: "g".into(),
            id: "item-7".into(),
            min_sequence: removed.sequence,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), tonic::Code::NotFound);

    // A sequence this replica has not reached: UNAVAILABLE, with the lag.
    let ahead = search_at(&mut ca, "g", removed.sequence + 1000, 1, grpc::plain())
        .await
        .unwrap_err();
    assert_eq!(ahead.code(), tonic::Code::Unavailable);
    assert!(ahead.message().contains("behind"), "{}", ahead.message());

    // Dropped on a, gone from b; created again, empty on both.
    ca.drop_gallery(pb::DropGalleryRequest {
        gallery: "g".into(),
    })
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let missing = cb
            .gallery_stats(pb::GalleryStatsRequest {
                gallery: "g".into(),
                min_sequence: 0,
            })
            .await;
        if missing.is_err_and(|e| e.code() == tonic::Code::NotFound) {
            break;
        }
        assert!(Instant::now() < deadline, "the drop never reached b");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    grpc::create_gallery(&mut cb, "g").await;
    let (seq2, _) = add(&mut cb, "g", 100..103).await;
    assert_eq!(
        stats_at(&mut ca, "g", seq2).await.count,
        3,
        "nothing of the dropped incarnation"
    );
}

fn sigstop(s: &Server, signal: &str) {
    let ok = std::process::Command::new("kill")
        .args([signal, &s.child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {signal}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_that_die_stop_or_are_new_catch_up_and_answer_the_same() {
    let nats = NatsCluster::start(3).await;
    let dirs = tempfile::tempdir().unwrap();
    let a = replica(&dirs.path().join("a"), &nats);
    let b = replica(&dirs.path().join("b"), &nats);
    wait_serving(&a).await;
    let mut ca = a.client().await;
    grpc::create_gallery(&mut ca, "g").await;
    add(&mut ca, "g", 0..40).await;

    // kill -9 of b, writes meanwhile, b again on its disk: it resumes
    // from the sequence it applied, rather than copying the gallery again.
    b.kill();
    add(&mut ca, "g", 40..80).await;
    let b = replica(&dirs.path().join("b"), &nats);
    wait_serving(&b).await;
    let mut cb = b.client().await;
    let (seq, _) = add(&mut ca, "g", 80..81).await;
    assert_eq!(stats_at(&mut cb, "g", seq).await.count, 81);
    assert_eq!(copies_of_g(&b).await, 0.0, "b resumed on its own disk");

    let (seq, _) = add(&mut ca, "g", 81..120).await;

    // A new replica on an empty disk copies the gallery from the stream.
    let c = replica(&dirs.path().join("c"), &nats);
    wait_serving(&c).await;
    let mut cc = c.client().await;
    let s = stats_at(&mut cc, "g", seq).await;
    assert_eq!(s.count, 120);
    assert!(s.replication.unwrap().caught_up);
    assert_eq!(copies_of_g(&c).await, 1.0, "c copied the gallery");

    // A graceful restart (SIGTERM, as on a rolling upgrade) keeps the
    // derived state b saved: ready with it, nothing recomputed or copied.
    assert_eq!(stats_at(&mut cb, "g", seq).await.count, 120);
    let before = grpc::wait_refreshed(&mut cb, "g").await;
    b.stop().await;
    let b = replica(&dirs.path().join("b"), &nats);
    wait_serving(&b).await;
    let mut cb = b.client().await;
    let after = stats_at(&mut cb, "g", seq).await.index.unwrap();
    assert_eq!(
        copies_of_g(&b).await,
        0.0,
        "b resumed after a graceful stop"
    );
    assert_eq!(
        (after.stale_items, after.post_processing_generation),
        (0, before.post_processing_generation),
        "the saved state was used as it was"
    );
    let want = ranked(
        &search_at(&mut ca, "g", seq, 5, grpc::plain())
            .await
            .unwrap(),
    );
    for client in [&mut cb, &mut cc] {
        let got = ranked(&search_at(client, "g", seq, 5, grpc::plain()).await.unwrap());
        assert_eq!(got, want);
    }
}

/// GalleryStats at `min_sequence`, retried while the replica answers
/// UNAVAILABLE (behind) for up to `within`; returns it and how long it took.
async fn stats_within(
    c: &mut Client,
    gallery: &str,
    min_sequence: u64,
    within: Duration,
) -> (pb::GalleryStatsResponse, Duration) {
    let t = Instant::now();
    loop {
        let r = c
            .gallery_stats(pb::GalleryStatsRequest {
                gallery: gallery.into(),
                min_sequence,
            })
            .await;
        match r {
            Ok(s) => return (s.into_inner(), t.elapsed()),
            Err(e) if e.code() == tonic::Code::Unavailable && t.elapsed() < within => {}
            Err(e) => panic!(
                "GalleryStats at {min_sequence} after {:?}: {e:?}",
                t.elapsed()
            ),
        }
    }
}

/// Stopped for 30 s (SIGSTOP) while the other replica keeps writing: long
/// enough for NATS to give up on the stopped replica's consumer. Writes do
/// not wait for it; resumed (SIGCONT), it converges to the same items and
/// the same answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_stopped_for_30_s_under_writes_converges() {
    let mut pair = two_replicas().await;
    let seq = gallery_of_20(&mut pair).await;
    let Pair {
        a: _a,
        b,
        mut ca,
        mut cb,
        ..
    } = pair;

    sigstop(&b, "-STOP");
    let stopped = Instant::now();
    let (mut next, mut last) = (20u64, seq);
    // Five writes every quarter second for the 30 s.
    let mut pace = tokio::time::interval(Duration::from_millis(250));
    while stopped.elapsed() < Duration::from_secs(30) {
        pace.tick().await;
        let (s, ids) = add(&mut ca, "g", next..next + 5).await;
        assert_eq!(ids.len(), 5, "a stopped replica holds up no write");
        (next, last) = (next + 5, s);
    }
    sigstop(&b, "-CONT");
    let (s, took) = stats_within(&mut cb, "g", last, Duration::from_secs(60)).await;
    eprintln!(
        "b resumed after {:?} stopped, {} writes behind: at the last write's sequence in {took:?}",
        stopped.elapsed(),
        next - 20
    );
    assert_eq!(s.count, next);
    let mut on_a = grpc::list_all(&mut ca, "g").await;
    let mut on_b = grpc::list_all(&mut cb, "g").await;
    on_a.sort();
    on_b.sort();
    assert_eq!(on_a, on_b);
    let want = ranked(
        &search_at(&mut ca, "g", last, 9, grpc::plain())
            .await
            .unwrap(),
    );
    let got = ranked(
        &search_at(&mut cb, "g", last, 9, grpc::plain())
            .await
            .unwrap(),
    );
    assert_eq!(got, want);
}

/// Dropped and created again while a replica still has the old
/// incarnation's writes to apply (stopped with them pending, resumed after
/// the re-creation, so its catalog and its apply loop race): it ends with
/// the new incarnation's items only, and a read at the new write's
/// sequence is never answered from the old copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gallery_dropped_while_a_replica_applies_it_is_consistent_there() {
    let mut pair = two_replicas().await;
    gallery_of_20(&mut pair).await;
    let Pair {
        a: _a,
        b,
        mut ca,
        mut cb,
        ..
    } = pair;

    sigstop(&b, "-STOP");
    let (old_last, acked) = add(&mut ca, "g", 20..420).await;
    assert_eq!(acked.len(), 400);
    ca.drop_gallery(pb::DropGalleryRequest {
        gallery: "g".into(),
    })
    .await
    .unwrap();
    grpc::create_gallery(&mut ca, "g").await;
    let (new_seq, _) = add(&mut ca, "g", 1000..1005).await;
    assert!(
        new_seq < old_last,
        "the new incarnation counts from 1 again ({new_seq} vs {old_last}): the case to get right"
    );
    sigstop(&b, "-CONT");

    // At once, while b works through what it had: the new items, or
    // UNAVAILABLE until it has them, never the old copy's 420.
    let (s, took) = stats_within(&mut cb, "g", new_seq, Duration::from_secs(30)).await;
    eprintln!("b at the new incarnation's sequence {new_seq} after {took:?}");
    assert_eq!(s.count, 5, "the new incarnation only");
    let mut held = grpc::list_all(&mut cb, "g").await;
    held.sort();
    let want: Vec<String> = (1000..1005).map(|i| format!("item-{i}")).collect();
    assert_eq!(held, want);
    let old = cb
        .get_item(pb::GetItemRequest {
            gallery: "g".into(),
            id: "item-300".into(),
            min_sequence: new_seq,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(old.code(), tonic::Code::NotFound);
    let want = ranked(
        &search_at(&mut ca, "g", new_seq, 1002, grpc::plain())
            .await
            .unwrap(),
    );
    let got = ranked(
        &search_at(&mut cb, "g", new_seq, 1002, grpc::plain())
            .await
            .unwrap(),
    );
    assert_eq!(got, want);
    assert_eq!(want[0].0, "item-1002");
    // It still applies the new incarnation and shuts down cleanly.
    let (seq, _) = add(&mut ca, "g", 1005..1006).await;
    assert_eq!(stats_at(&mut cb, "g", seq).await.count, 6);
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_node_killed_during_writes_loses_no_acknowledged_write() {
    let pair = two_replicas().await;
    let Pair {
        mut nats,
        mut ca,
        mut cb,
        ..
    } = pair;
    grpc::create_gallery(&mut ca, "g").await;
    let mut acked = Vec::new();
    let (mut last_seq, mut refused) = (0, 0);
    let mut longest_gap = Duration::ZERO;
    let mut last_ack = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(60);
    // 5 rounds of 10 before the kill, 20 acknowledged rounds after it.
    let (mut round, mut acked_after) = (0u64, 0);
    while acked_after < 20 {
        if round == 5 {
            nats.kill(0);
        }
        let (seq, ids) = add(&mut ca, "g", round * 10..round * 10 + 10).await;
        refused += 10 - ids.len();
        if ids.is_empty() {
            assert!(
                Instant::now() < deadline,
                "writes never resumed after the kill"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        } else {
            longest_gap = longest_gap.max(last_ack.elapsed());
            last_ack = Instant::now();
            acked_after += usize::from(round >= 5);
        }
        last_seq = last_seq.max(seq);
        acked.extend(ids);
        round += 1;
    }
    eprintln!(
        "node 0 killed: {} writes acknowledged, {refused} refused (retry later), longest gap between acknowledged rounds {longest_gap:?}",
        acked.len()
    );
    nats.restart(0).await;
    for client in [&mut ca, &mut cb] {
        stats_at(client, "g", last_seq).await;
        let held: std::collections::HashSet<String> =
            grpc::list_all(client, "g").await.into_iter().collect();
        let lost: Vec<&String> = acked.iter().filter(|id| !held.contains(*id)).collect();
        assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_nats_writes_fail_at_once_and_reads_serve_the_local_copy_marked_stale() {
    let mut nats = NatsCluster::start(3).await;
    let dirs = tempfile::tempdir().unwrap();
    let a = replica(&dirs.path().join("a"), &nats);
    wait_serving(&a).await;
    let mut ca = a.client().await;
    grpc::create_gallery(&mut ca, "g").await;
    add(&mut ca, "g", 0..20).await;
    for i in 0..3 {
        nats.kill(i);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while stats_at(&mut ca, "g", 0)
        .await
        .replication
        .unwrap()
        .connected
    {
        assert!(Instant::now() < deadline, "the replica never noticed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let t = Instant::now();
    let items = vec![descriptor_item("g", "late", unit_vector(99, DIMS))];
    let (outcomes, summary) = add_stream(&mut ca, items).await;
    let took = t.elapsed();
    assert_eq!(
        outcomes[0].status,
        pb::item_outcome::Status::RetryLater as i32
    );
    assert!(
        outcomes[0].reason.contains("unreachable"),
        "{}",
        outcomes[0].reason
    );
    assert_eq!(summary.unwrap().retry_later, 1);
    assert!(
        took < Duration::from_secs(2),
        "failed at once, not after a timeout: {took:?}"
    );
    let found = search_at(&mut ca, "g", 0, 3, grpc::plain()).await.unwrap();
    assert_eq!(found.hits[0].id, "item-3", "the local copy serves");
    assert!(
        found.degraded.iter().any(|d| d.starts_with("replication")),
        "{:?}",
        found.degraded
    );
    assert_eq!(
        stats_at(&mut ca, "g", 0).await.count,
        20,
        "nothing half-applied"
    );
    nats.restart_all().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, acked) = add(&mut ca, "g", 20..21).await;
        if !acked.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "writes never resumed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(stats_at(&mut ca, "g", 0).await.count, 21);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resent_write_is_applied_once_and_another_models_gallery_is_refused() {
    use lookalike::cluster::{naming, Incarnation, Write};
    let nats = NatsCluster::start(3).await;
    let dirs = tempfile::tempdir().unwrap();
    let a = replica(&dirs.path().join("a"), &nats);
    wait_serving(&a).await;
    let mut ca = a.client().await;
    grpc::create_gallery(&mut ca, "g").await;

    let js = async_nats::jetstream::new(async_nats::connect(nats.url(1)).await.unwrap());
    let kv = js.get_key_value(naming::bucket("lookalike")).await.unwrap();
    let entry = kv.entry(naming::key("g")).await.unwrap().unwrap();
    let def: serde_json::Value = serde_json::from_slice(&entry.value).unwrap();
    let inc = Incarnation {
        gallery: "g".into(),
        revision: entry.revision,
        stream_token: def["stream_token"].as_str().unwrap().into(),
    };
    let write = Write::Put {
        id: "sent-twice".into(),
        record: lookalike::store::ItemRecord {
            seq: 0,
            descriptor: unit_vector(5, DIMS),
            metadata: Default::default(),
        },
        thumbnail: None,
    };
    let mut seqs = Vec::new();
    for _ in 0..2 {
        let msg = async_nats::jetstream::message::PublishMessage::build()
            .payload(write.encode().into())
            .message_id("the-same-id");
        let ack = js
            .send_publish(inc.subject("lookalike", "sent-twice"), msg)
            .await
            .unwrap()
            .await
            .unwrap();
        seqs.push((ack.sequence, ack.duplicate));
    }
    assert_eq!(
        seqs[1],
        (seqs[0].0, true),
        "the resend is a duplicate of the first"
    );
    let s = stats_at(&mut ca, "g", seqs[0].0).await;
    assert_eq!(s.count, 1);
    let info = js
        .get_stream(inc.stream("lookalike"))
        .await
        .unwrap()
        .get_info()
        .await
        .unwrap();
    assert_eq!(info.state.messages, 1, "stored once");

    // A gallery another model defined: refused here, with why.
    let other = serde_json::json!({"model_fingerprint": "another-model", "dims": 512,
        "stream_token": "0011223344556677"});
    kv.create(
        naming::key("theirs"),
        serde_json::to_vec(&other).unwrap().into(),
    )
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let refused = loop {
        let r = ca
            .gallery_stats(pb::GalleryStatsRequest {
                gallery: "theirs".into(),
                min_sequence: 0,
            })
            .await
            .unwrap_err();
        if r.code() != tonic::Code::NotFound || Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );
    assert!(
        refused.message().contains("another-model"),
        "{}",
        refused.message()
    );
}
