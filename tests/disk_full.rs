//! Disk full: the real server's data folder on a 6 MiB tmpfs, mounted in a
//! user + mount namespace (no root needed; `unshare -rm`), the server run
//! inside it through `nsenter`. The test fills the tmpfs with a file
//! (written through /proc/PID/root), adds until the store refuses, checks
//! the refusal, that reads keep working and nothing acknowledged changed,
//! then frees the space and checks that writes succeed again, before and
//! after a kill -9 restart.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::grpc::{self, Client};
use common::Server;
use lookalike::api::pb::{self, item_outcome::Status as Outcome};

const G: &str = "g";

/// Holds a tmpfs mounted on `dir` in its own namespace while alive.
struct Tmpfs {
    holder: Child,
    dir: PathBuf,
}

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Self {
        let script =
            format!("mount -t tmpfs -o size={size} tmpfs \"$0\" && echo mounted && exec sleep 600");
        let mut holder = Command::new("unshare")
            .args(["-rm", "--", "sh", "-c", &script])
            .arg(dir)
            .stdout(Stdio::piped())
            .spawn()
            .expect("running unshare (util-linux)");
        let line = BufReader::new(holder.stdout.take().unwrap()).lines().next();
        assert!(
            matches!(&line, Some(Ok(l)) if l == "mounted"),
            "could not mount a tmpfs in a user namespace (unshare -rm): {:?}; \
             this test needs unprivileged user namespaces",
            holder.wait()
        );
        Self {
            holder,
            dir: dir.to_path_buf(),
        }
    }

    /// Runs a program inside the namespace (the server).
    fn prefix(&self) -> Vec<String> {
        let pid = self.holder.id().to_string();
        [
            "nsenter",
            "-t",
            &pid,
            "-U",
            "-m",
            "--preserve-credentials",
            "--",
        ]
        .map(String::from)
        .to_vec()
    }

    /// `path` inside the tmpfs, as this process sees it.
    fn inside(&self, name: &str) -> PathBuf {
        let rel = self.dir.strip_prefix("/").unwrap();
        PathBuf::from(format!("/proc/{}/root", self.holder.id()))
            .join(rel)
            .join(name)
    }

    /// Writes `name` until the tmpfs is full; returns its size.
    fn fill(&self, name: &str) -> u64 {
        let mut f = std::fs::File::create(self.inside(name)).unwrap();
        let chunk = vec![0xA5u8; 64 << 10];
        let mut written = 0u64;
        loop {
            match f.write(&chunk) {
                Ok(0) => break,
                Ok(n) => written += n as u64,
                Err(e) => {
                    assert_eq!(e.raw_os_error(), Some(28), "filling: {e}");
                    break;
                }
            }
        }
        written
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// Checks every acknowledged item holds its descriptor; the count agrees.
async fn check_all(client: &mut Client, acked: &[(String, Vec<f32>)]) {
    for (id, v) in acked {
        let item = client
            .get_item(pb::GetItemRequest {
                gallery: G.into(),
                id: id.clone(),
                include_descriptor: true,
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("acknowledged {id} unreadable: {e}"))
            .into_inner();
        let got = item.descriptor.unwrap().values;
        assert!(
            got.iter().zip(v).all(|(a, b)| (a - b).abs() <= 1e-5) && got.len() == v.len(),
            "{id} changed"
        );
    }
    assert_eq!(grpc::stats(client, G).await.count as usize, acked.len());
    assert_eq!(grpc::list_all(client, G).await.len(), acked.len());
}

/// Adds items one stream of 8 at a time until one is refused; returns
/// the refusal.
async fn add_until_refused(
    client: &mut Client,
    acked: &mut Vec<(String, Vec<f32>)>,
    dims: usize,
    from: u64,
) -> pb::ItemOutcome {
    for batch in 0..400u64 {
        let ids: Vec<u64> = (0..8).map(|i| from + batch * 8 + i).collect();
        let items = ids
            .iter()
            .map(|&i| grpc::descriptor_item(G, &format!("item-{i}"), grpc::unit_vector(i, dims)))
            .collect();
        let (outcomes, end) = grpc::add_stream(client, items).await;
        end.unwrap();
        for o in outcomes {
            if o.status == Outcome::Added as i32 {
                let i: u64 = o.id.strip_prefix("item-").unwrap().parse().unwrap();
                acked.push((o.id, grpc::unit_vector(i, dims)));
            } else {
                return o;
            }
        }
    }
    panic!("3200 items fit on a 6 MiB tmpfs that was full");
}

#[tokio::test]
async fn a_full_disk_refuses_writes_clearly_and_loses_nothing() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let fs = Tmpfs::mount(&data, "6m");
    let server = Server::start_via(&data, "", &fs.prefix());
    let mut client = server.client().await;
    let dims = grpc::create_gallery(&mut client, G).await;
    let mut acked = Vec::new();
    let items = (0..50u64)
        .map(|i| grpc::descriptor_item(G, &format!("item-{i}"), grpc::unit_vector(i, dims)))
        .collect();
    let (_, end) = grpc::add_stream(&mut client, items).await;
    assert_eq!(end.unwrap().added, 50);
    acked.extend((0..50u64).map(|i| (format!("item-{i}"), grpc::unit_vector(i, dims))));

    let filled = fs.fill("filler");
    assert!(filled > 0);
    let refused = add_until_refused(&mut client, &mut acked, dims, 1000).await;
    println!(
        "filler {filled} bytes; {} items acknowledged before the refusal: {refused:?}",
        acked.len()
    );
    assert_eq!(refused.status, Outcome::RetryLater as i32, "{refused:?}");
    assert!(
        refused.reason.contains("disk holding the store is full"),
        "{}",
        refused.reason
    );
    // A whole call refused the same way: a retryable outcome per item.
    let again = grpc::descriptor_item(G, "while-full", grpc::unit_vector(7, dims));
    let (outcomes, end) = grpc::add_stream(&mut client, vec![again]).await;
    assert_eq!(end.unwrap().retry_later, 1, "{outcomes:?}");

    // Reads keep working and nothing acknowledged changed.
    check_all(&mut client, &acked).await;
    let hits = client
        .search(pb::SearchRequest {
            gallery: G.into(),
            query: Some(pb::search_request::Query::ItemId("item-3".into())),
            top_k: 3,
            ..Default::default()
        })
        .await
        .expect("search while the disk is full")
        .into_inner()
        .hits;
    assert_eq!(hits.len(), 3);

    // Space returns: writes succeed again, without a restart.
    std::fs::remove_file(fs.inside("filler")).unwrap();
    let back = grpc::descriptor_item(G, "after-space", grpc::unit_vector(99_999, dims));
    let (outcomes, end) = grpc::add_stream(&mut client, vec![back]).await;
    assert_eq!(end.unwrap().added, 1, "{outcomes:?}");
    acked.push(("after-space".into(), grpc::unit_vector(99_999, dims)));
    check_all(&mut client, &acked).await;

    // And everything acknowledged is on disk.
    server.kill();
    let server = Server::start_via(&data, "", &fs.prefix());
    let mut client = server.client().await;
    check_all(&mut client, &acked).await;
}
