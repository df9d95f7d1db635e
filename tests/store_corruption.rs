//! A damaged or foreign store file: the real server either refuses to
//! start, saying what is wrong with which file, or starts with every
//! stored item intact. Never silently wrong.

mod common;

use std::path::Path;

use common::grpc::{self, Client};
use common::Server;
use lookalike::api::pb;

const G: &str = "g";
const ITEMS: u64 = 60;

/// A data folder with `ITEMS` descriptors, stopped cleanly; returns the
/// descriptors' dimension.
async fn populated(data: &Path) -> usize {
    let server = Server::start(data, "");
    let mut client = server.client().await;
    let dims = grpc::create_gallery(&mut client, G).await;
    let items = (0..ITEMS)
        .map(|i| grpc::descriptor_item(G, &format!("item-{i}"), grpc::unit_vector(i, dims)))
        .collect();
    let (_, end) = grpc::add_stream(&mut client, items).await;
    assert_eq!(end.unwrap().added, ITEMS);
    drop(client);
    server.stop().await;
    dims
}

/// Every item as it was written, nothing more.
async fn all_intact(client: &mut Client, dims: usize) {
    for i in 0..ITEMS {
        let item = client
            .get_item(pb::GetItemRequest {
                gallery: G.into(),
                id: format!("item-{i}"),
                include_descriptor: true,
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("started, but item-{i} is gone: {e}"))
            .into_inner();
        let v = item.descriptor.unwrap().values;
        let want = grpc::unit_vector(i, dims);
        assert!(
            v.len() == want.len() && v.iter().zip(&want).all(|(a, b)| (a - b).abs() <= 1e-5),
            "started, but item-{i} holds another descriptor"
        );
    }
    assert_eq!(grpc::stats(client, G).await.count, ITEMS);
}

/// Starts on the damaged folder: a clear refusal, or everything intact.
async fn refuses_or_intact(data: &Path, dims: usize, what: &str) -> Option<String> {
    match Server::try_start(data, "") {
        Err(msg) => {
            assert!(
                msg.contains(&format!("opening the galleries in {}", data.display())),
                "{what}: the refusal does not name the store: {msg}"
            );
            assert!(
                !msg.contains("panicked"),
                "{what}: a panic, not a refusal: {msg}"
            );
            // anyhow's "Caused by:" chain: the innermost cause says what is wrong.
            let cause = msg
                .lines()
                .skip_while(|l| !l.starts_with("Caused by"))
                .nth(1);
            println!("{what}: refused: {}", cause.unwrap_or("").trim());
            Some(msg)
        }
        Ok(server) => {
            let mut client = server.client().await;
            all_intact(&mut client, dims).await;
            println!("{what}: started with every item intact");
            None
        }
    }
}

#[tokio::test]
async fn a_truncated_store_is_refused_or_intact() {
    let data = tempfile::tempdir().unwrap();
    let dims = populated(data.path()).await;
    let db = data.path().join("lookalike.redb");
    let len = std::fs::metadata(&db).unwrap().len();
    for keep in [len / 2, 4096, 100, 0] {
        let dir = tempfile::tempdir().unwrap();
        let copy = dir.path().join("lookalike.redb");
        std::fs::copy(&db, &copy).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&copy)
            .unwrap()
            .set_len(keep)
            .unwrap();
        let msg = refuses_or_intact(
            dir.path(),
            dims,
            &format!("truncated to {keep} of {len} bytes"),
        )
        .await;
        // Half a store cannot hold every item: it must be refused.
        if keep == len / 2 {
            let msg = msg.expect("half a store file was accepted");
            assert!(
                msg.contains("storage error") || msg.contains("corrupt"),
                "{msg}"
            );
        }
    }
}

#[tokio::test]
async fn flipped_bytes_are_refused_or_harmless() {
    let data = tempfile::tempdir().unwrap();
    let dims = populated(data.path()).await;
    let db = data.path().join("lookalike.redb");
    let original = std::fs::read(&db).unwrap();
    let mut refused = 0;
    // Damage 12 regions spread over the file in turn, the header first.
    for offset in (0..12).map(|k| k * original.len() / 12) {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = original.clone();
        let end = (offset + 512).min(bytes.len());
        bytes[offset..end].iter_mut().for_each(|b| *b ^= 0x5A);
        std::fs::write(dir.path().join("lookalike.redb"), &bytes).unwrap();
        let what = format!("512 bytes flipped at {offset}");
        refused += refuses_or_intact(dir.path(), dims, &what).await.is_some() as usize;
    }
    assert!(refused > 0, "no damaged region was noticed");
}

#[tokio::test]
async fn an_item_record_of_an_unknown_version_is_refused() {
    let data = tempfile::tempdir().unwrap();
    populated(data.path()).await;
    let db = redb::Database::create(data.path().join("lookalike.redb")).unwrap();
    let txn = db.begin_write().unwrap();
    {
        let def = redb::TableDefinition::<&str, &[u8]>::new("items/g");
        let mut t = txn.open_table(def).unwrap();
        t.insert("item-5", [0u8, 1, 2, 3].as_slice()).unwrap();
    }
    txn.commit().unwrap();
    drop(db);
    let msg = Server::try_start(data.path(), "")
        .err()
        .expect("a bad record was accepted");
    assert!(msg.contains("unknown record version 0"), "{msg}");
    assert!(msg.contains("item-5"), "{msg}");
}

#[tokio::test]
async fn a_store_in_an_older_file_format_is_refused_and_left_alone() {
    let data = tempfile::tempdir().unwrap();
    let path = data.path().join("lookalike.redb");
    {
        // The same tables, written by redb 2 (file format 2).
        let db = redb2::Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let galleries = redb2::TableDefinition::<&str, &[u8]>::new("galleries");
            let meta = br#"{"model_fingerprint":"x","dims":4}"#;
            txn.open_table(galleries)
                .unwrap()
                .insert("g", meta.as_slice())
                .unwrap();
            txn.open_table(redb2::TableDefinition::<&str, &[u8]>::new("items/g"))
                .unwrap();
        }
        txn.commit().unwrap();
    }
    let before = std::fs::read(&path).unwrap();
    let msg = Server::try_start(data.path(), "")
        .err()
        .expect("an older format was accepted");
    assert!(msg.contains("older storage format"), "{msg}");
    assert!(msg.contains("format 2"), "{msg}");
    assert_eq!(
        std::fs::read(&path).unwrap(),
        before,
        "the refused file was modified"
    );
}

#[tokio::test]
async fn a_damaged_derived_state_is_rebuilt_from_the_store() {
    let data = tempfile::tempdir().unwrap();
    let dims = populated(data.path()).await;
    let mut damaged = 0;
    for entry in walk(&data.path().join("index")) {
        let mut bytes = std::fs::read(&entry).unwrap();
        let mid = bytes.len() / 2;
        if let Some(b) = bytes.get_mut(mid) {
            *b ^= 0xFF;
            std::fs::write(&entry, &bytes).unwrap();
            damaged += 1;
        }
    }
    assert!(damaged > 0, "no saved state to damage");
    let server = Server::start(data.path(), "");
    let mut client = server.client().await;
    all_intact(&mut client, dims).await;
    grpc::wait_refreshed(&mut client, G).await;
    let r = client
        .search(pb::SearchRequest {
            gallery: G.into(),
            query: Some(pb::search_request::Query::ItemId("item-1".into())),
            top_k: 5,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.stages, ["aqe", "k_reciprocal"]);
    assert_eq!(r.hits.len(), 5);
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
