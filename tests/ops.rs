//! Operations against the real server process: Prometheus metrics after
//! real traffic, health that turns NOT_SERVING on shutdown and when an
//! inference worker dies, API keys, and TLS with client certificates
//! (certificates made here with rcgen).

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;

use common::pki::Pki;
use common::{read_image, split, Server};
use lookalike::api::pb::{self, add_item::Content, retrieval_client::RetrievalClient};
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Request};
use tonic_health::pb::{health_check_response::ServingStatus, health_client::HealthClient};

const RETRIEVAL: &str = "lookalike.v1.Retrieval";

/// GET over plain HTTP/1.1: (status code, body).
async fn http_get(addr: &str, path: &str) -> (u16, String) {
    let (head, body) = http_request(addr, &format!("GET {path} HTTP/1.1"), "").await;
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, body)
}

/// One scrape: (metric name, sorted labels) -> value.
struct Scrape(HashMap<(String, Vec<(String, String)>), f64>);

impl Scrape {
    async fn take(admin: &str) -> Self {
        let (status, body) = http_get(admin, "/metrics").await;
        assert_eq!(status, 200);
        let mut out = HashMap::new();
        for line in body
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let (series, value) = line.rsplit_once(' ').unwrap();
            let (name, labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let mut labels: Vec<(String, String)> = labels
                .split(',')
                .filter(|l| !l.is_empty())
                .map(|l| {
                    let (k, v) = l.split_once('=').unwrap();
                    (k.to_string(), v.trim_matches('"').to_string())
                })
                .collect();
            labels.sort();
            out.insert((name.to_string(), labels), value.parse().unwrap());
        }
        Self(out)
    }

    /// Sum over the series of `name` carrying all of `labels`.
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.0
            .iter()
            .filter(|((n, ls), _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| ls.iter().any(|(lk, lv)| lk == k && lv == v))
            })
            .map(|(_, v)| v)
            .sum()
    }
}

fn image(gallery: &str, id: &str, path: &str) -> pb::AddItem {
    pb::AddItem {
        gallery: gallery.into(),
        id: id.into(),
        content: Some(Content::Image(read_image(path))),
        metadata: HashMap::new(),
    }
}

fn photos(n: usize) -> Vec<String> {
    split("train.txt")
        .into_iter()
        .take(n)
        .map(|r| r.0)
        .collect()
}

#[tokio::test]
async fn metrics_move_with_real_traffic() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path(), "admin_listen = \"127.0.0.1:0\"\n");
    let admin = server.admin.clone().expect("admin port");
    let before = Scrape::take(&admin).await;
    let calls = |s: &Scrape, method: &str, code: &str| {
        s.sum(
            "lookalike_grpc_requests_total",
            &[("service", RETRIEVAL), ("method", method), ("code", code)],
        )
    };
    assert_eq!(calls(&before, "Search", "Ok"), 0.0);
    assert_eq!(
        before.sum(
            "lookalike_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    assert_eq!(
        before.sum(
            "lookalike_execution_provider",
            &[("provider", "CPUExecutionProvider")]
        ),
        1.0
    );

    let mut client = server.client().await;
    client
        .create_gallery(pb::CreateGalleryRequest {
            gallery: "g".into(),
        })
        .await
        .unwrap();
    let files = photos(3);
    let items: Vec<pb::AddItem> = files.iter().map(|p| image("g", p, p)).collect();
    let mut stream = client
        .add_to_gallery(tokio_stream::iter(items))
        .await
        .unwrap()
        .into_inner();
    while stream.message().await.unwrap().is_some() {}
    let search = pb::SearchRequest {
        gallery: "g".into(),
        query: Some(pb::search_request::Query::Image(read_image(&files[0]))),
        top_k: 2,
        ..Default::default()
    };
    client.search(search.clone()).await.unwrap();
    let missing = pb::SearchRequest {
        gallery: "nope".into(),
        ..search
    };
    assert_eq!(
        client.search(missing).await.unwrap_err().code(),
        Code::NotFound
    );

    let after = Scrape::take(&admin).await;
    assert_eq!(calls(&after, "CreateGallery", "Ok"), 1.0);
    assert_eq!(calls(&after, "AddToGallery", "Ok"), 1.0);
    assert_eq!(calls(&after, "Search", "Ok"), 1.0);
    assert_eq!(calls(&after, "Search", "NotFound"), 1.0);
    let latency = |s: &Scrape| {
        s.sum(
            "lookalike_grpc_request_duration_seconds_count",
            &[("method", "Search")],
        )
    };
    assert_eq!(latency(&after) - latency(&before), 2.0);
    let stage = |s: &Scrape, stage: &str| {
        s.sum(
            "lookalike_stage_duration_seconds_count",
            &[("stage", stage)],
        )
    };
    for name in ["decode", "preprocess", "inference"] {
        assert_eq!(stage(&after, name) - stage(&before, name), 4.0, "{name}");
    }
    assert_eq!(stage(&after, "search") - stage(&before, "search"), 1.0);
    let batched = after.sum("lookalike_embed_batch_size_sum", &[]);
    assert_eq!(
        batched - before.sum("lookalike_embed_batch_size_sum", &[]),
        4.0
    );
    // On the CPU provider the default batch limit is one image.
    assert_eq!(
        after.sum("lookalike_embed_batch_size_count", &[])
            - before.sum("lookalike_embed_batch_size_count", &[]),
        4.0,
        "four batches of one"
    );
    assert_eq!(
        after.sum("lookalike_gallery_items", &[("gallery", "g")]),
        3.0
    );
    assert_eq!(after.sum("lookalike_embed_queue_depth", &[]), 0.0);
    assert_eq!(
        http_get(&admin, "/healthz").await,
        (200, "SERVING\n".into())
    );

    // Request ids: the client's comes back; without one the server makes one.
    let mut req = Request::new(pb::ListGalleriesRequest {});
    req.metadata_mut()
        .insert("x-request-id", "client-id-7".parse().unwrap());
    let resp = client.list_galleries(req).await.unwrap();
    assert_eq!(resp.metadata().get("x-request-id").unwrap(), "client-id-7");
    let resp = client
        .list_galleries(pb::ListGalleriesRequest {})
        .await
        .unwrap();
    let made = resp
        .metadata()
        .get("x-request-id")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        made.len() == 32 && made.chars().all(|c| c.is_ascii_hexdigit()),
        "{made}"
    );
    let mut req = Request::new(pb::GalleryStatsRequest {
        gallery: "nope".into(),
        ..Default::default()
    });
    req.metadata_mut()
        .insert("x-request-id", "failing-call".parse().unwrap());
    let err = client.gallery_stats(req).await.unwrap_err();
    assert_eq!(err.metadata().get("x-request-id").unwrap(), "failing-call");
    server.stop().await;
}

async fn watch_retrieval(addr: &str) -> tonic::Streaming<tonic_health::pb::HealthCheckResponse> {
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    health
        .watch(tonic_health::pb::HealthCheckRequest {
            service: RETRIEVAL.into(),
        })
        .await
        .unwrap()
        .into_inner()
}

async fn next_status(
    w: &mut tonic::Streaming<tonic_health::pb::HealthCheckResponse>,
) -> ServingStatus {
    // A change that never comes fails the test instead of hanging it.
    let next = tokio::time::timeout(std::time::Duration::from_secs(60), w.message());
    let m = next
        .await
        .expect("no health update within 60 s")
        .unwrap()
        .expect("a health update");
    ServingStatus::try_from(m.status).unwrap()
}

#[tokio::test]
async fn health_turns_not_serving_as_shutdown_starts() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path(), "shutdown_grace_s = 5\n");
    let mut watch = watch_retrieval(&server.addr).await;
    assert_eq!(next_status(&mut watch).await, ServingStatus::Serving);
    server.terminate();
    assert_eq!(next_status(&mut watch).await, ServingStatus::NotServing);
    drop(watch);
    server.stop_after_terminate().await;
}

#[tokio::test]
async fn a_dead_inference_worker_turns_the_service_not_serving() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start_with_env(
        data.path(),
        "admin_listen = \"127.0.0.1:0\"\n",
        &[("LOOKALIKE_FAULT_WORKER_PANIC_AFTER", "1")],
    );
    let admin = server.admin.clone().unwrap();
    let mut client = server.client().await;
    let photo = read_image(&photos(1)[0]);
    let embed = || pb::EmbedRequest {
        image: photo.clone(),
    };
    client.embed(embed()).await.unwrap();
    let mut watch = watch_retrieval(&server.addr).await;
    assert_eq!(next_status(&mut watch).await, ServingStatus::Serving);
    // The second batch kills the only worker.
    assert_eq!(
        client.embed(embed()).await.unwrap_err().code(),
        Code::Unavailable
    );
    assert_eq!(next_status(&mut watch).await, ServingStatus::NotServing);
    let after = client.embed(embed()).await.unwrap_err();
    assert_eq!(after.code(), Code::Unavailable);
    assert!(
        after.message().contains("worker died"),
        "{}",
        after.message()
    );
    assert_eq!(http_get(&admin, "/healthz").await.0, 503);
}

/// The code of a failed call, None for success.
fn code<T>(r: Result<tonic::Response<T>, tonic::Status>) -> Option<Code> {
    r.err().map(|s| s.code())
}

/// A client on `channel` sending `key` (if any) as a bearer token.
fn keyed(
    channel: Channel,
    key: Option<&str>,
) -> RetrievalClient<
    tonic::service::interceptor::InterceptedService<Channel, impl tonic::service::Interceptor>,
> {
    let value: Option<MetadataValue<_>> = key.map(|k| format!("Bearer {k}").parse().unwrap());
    RetrievalClient::with_interceptor(channel, move |mut req: Request<()>| {
        if let Some(v) = &value {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    })
}

/// A TLS client config trusting the test CA, with the client certificate
/// when `with_client_cert`.
fn client_tls(pki: &Pki, with_client_cert: bool) -> ClientTlsConfig {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(pki.read("ca.pem")))
        .domain_name("localhost");
    if with_client_cert {
        tls.identity(Identity::from_pem(
            pki.read("client.pem"),
            pki.read("client.key"),
        ))
    } else {
        tls
    }
}

fn write_keys(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("read-only"), "ro-key-from-file\n").unwrap();
}

/// Whether a fresh TLS connection trusting `pki`'s CA gets a gRPC answer.
async fn tls_health_ok(addr: &str, pki: &Pki) -> bool {
    let port = addr.rsplit(':').next().unwrap();
    let Ok(endpoint) = Endpoint::from_shared(format!("https://localhost:{port}"))
        .unwrap()
        .tls_config(client_tls(pki, false))
    else {
        return false;
    };
    let Ok(channel) = endpoint.connect().await else {
        return false;
    };
    HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: RETRIEVAL.into(),
        })
        .await
        .is_ok()
}

/// A renewed certificate (new files in place, as a Secret update writes
/// them) serves new connections without a restart; a broken renewal
/// leaves the previous one serving.
#[tokio::test]
async fn renewed_tls_certificates_are_served_without_a_restart() {
    let data = tempfile::tempdir().unwrap();
    let (old, new) = (Pki::new(), Pki::new());
    let (cert, key) = (data.path().join("tls.crt"), data.path().join("tls.key"));
    let install = |pki: &Pki| {
        std::fs::write(&key, pki.read("server.key")).unwrap();
        std::fs::write(&cert, pki.read("server.pem")).unwrap();
    };
    install(&old);
    let config = format!(
        "admin_listen = \"127.0.0.1:0\"\n[tls]\ncert = {cert:?}\nkey = {key:?}\nreload_check_s = 1\n"
    );
    let server = Server::start(data.path(), &config);
    let admin = server.admin.clone().expect("admin port");
    let reloads =
        |s: &Scrape, result: &str| s.sum("lookalike_tls_reloads_total", &[("result", result)]);
    assert!(tls_health_ok(&server.addr, &old).await);
    assert!(!tls_health_ok(&server.addr, &new).await, "not trusted yet");

    install(&new);
    // The server checks every second; wait for it, bounded.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while reloads(&Scrape::take(&admin).await, "reloaded") < 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no reload within 30 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        tls_health_ok(&server.addr, &new).await,
        "the renewed certificate"
    );
    assert!(
        !tls_health_ok(&server.addr, &old).await,
        "the old one is gone"
    );

    // A key that does not match: refused, counted, the last good pair stays.
    std::fs::write(&key, old.read("client.key")).unwrap();
    while reloads(&Scrape::take(&admin).await, "failed") < 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no failed reload within 30 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(tls_health_ok(&server.addr, &new).await);
    server.stop().await;
}

#[tokio::test]
async fn tls_client_certificates_and_api_keys() {
    let data = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let keys = data.path().join("keys");
    write_keys(&keys);
    let config = format!(
        "[tls]\ncert = {:?}\nkey = {:?}\nclient_ca = {:?}\n[auth]\nkeys_dir = {:?}\n",
        pki.path("server.pem"),
        pki.path("server.key"),
        pki.path("ca.pem"),
        keys,
    );
    let server = Server::start_with_env(
        data.path(),
        &config,
        &[
            ("LOOKALIKE_API_KEY_RW", "rw-key"),
            ("LOOKALIKE_API_KEY_RW_NEXT", "rw-next-key"),
        ],
    );
    let port = server.addr.rsplit(':').next().unwrap().to_string();
    let https = format!("https://localhost:{port}");
    let endpoint = || Endpoint::from_shared(https.clone()).unwrap();

    // TLS refusals: a plaintext client, and a TLS client without a certificate.
    let plain = RetrievalClient::connect(format!("http://{}", server.addr)).await;
    match plain {
        Err(_) => {}
        Ok(mut c) => assert!(c.list_galleries(pb::ListGalleriesRequest {}).await.is_err()),
    }
    let no_cert = endpoint()
        .tls_config(client_tls(&pki, false))
        .unwrap()
        .connect()
        .await;
    match no_cert {
        Err(_) => {}
        Ok(ch) => assert!(keyed(ch, Some("rw-key"))
            .list_galleries(pb::ListGalleriesRequest {})
            .await
            .is_err()),
    }
    let channel = endpoint()
        .tls_config(client_tls(&pki, true))
        .unwrap()
        .connect()
        .await
        .unwrap();

    // Health needs no key.
    let mut health = HealthClient::new(channel.clone());
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: RETRIEVAL.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(status, ServingStatus::Serving as i32);

    let list = pb::ListGalleriesRequest {};
    let create = |g: &str| pb::CreateGalleryRequest { gallery: g.into() };
    assert_eq!(
        code(keyed(channel.clone(), None).list_galleries(list).await),
        Some(Code::Unauthenticated)
    );
    assert_eq!(
        code(
            keyed(channel.clone(), Some("guess"))
                .list_galleries(list)
                .await
        ),
        Some(Code::Unauthenticated)
    );

    // Read-only: reads pass, every write is refused.
    let mut ro = keyed(channel.clone(), Some("ro-key-from-file"));
    assert_eq!(code(ro.list_galleries(list).await), None);
    assert_eq!(
        code(ro.create_gallery(create("g")).await),
        Some(Code::PermissionDenied)
    );
    assert_eq!(
        code(
            ro.drop_gallery(pb::DropGalleryRequest {
                gallery: "g".into()
            })
            .await
        ),
        Some(Code::PermissionDenied)
    );
    assert_eq!(
        code(
            ro.remove_from_gallery(pb::RemoveRequest {
                gallery: "g".into(),
                ids: vec!["x".into()]
            })
            .await
        ),
        Some(Code::PermissionDenied)
    );
    let add = ro
        .add_to_gallery(tokio_stream::iter(Vec::<pb::AddItem>::new()))
        .await;
    assert_eq!(add.err().map(|s| s.code()), Some(Code::PermissionDenied));

    // Read-write, and the rotation key; `api-key` metadata works too.
    let mut rw = keyed(channel.clone(), Some("rw-key"));
    assert_eq!(code(rw.create_gallery(create("g")).await), None);
    let mut next = keyed(channel.clone(), Some("rw-next-key"));
    assert_eq!(code(next.create_gallery(create("h")).await), None);
    let mut req = Request::new(pb::DropGalleryRequest {
        gallery: "h".into(),
    });
    req.metadata_mut()
        .insert("api-key", "rw-key".parse().unwrap());
    assert_eq!(
        code(
            RetrievalClient::new(channel.clone())
                .drop_gallery(req)
                .await
        ),
        None
    );

    // The CLI with --ca, the client certificate and --api-key.
    let cli = move |key: &str, cmd: &str| {
        Command::new(env!("CARGO_BIN_EXE_lookalike"))
            .arg(cmd)
            .args(["--server", &https, "--api-key", key])
            .arg("--ca")
            .arg(pki.path("ca.pem"))
            .arg("--client-cert")
            .arg(pki.path("client.pem"))
            .arg("--client-key")
            .arg(pki.path("client.key"))
            .output()
            .unwrap()
    };
    let out = tokio::task::spawn_blocking(move || {
        (
            cli("ro-key-from-file", "stats"),
            cli("", "health"),
            cli("guess", "stats"),
        )
    })
    .await
    .unwrap();
    assert!(
        out.0.status.success(),
        "{}",
        String::from_utf8_lossy(&out.0.stderr)
    );
    assert!(String::from_utf8_lossy(&out.0.stdout).contains("g: 0 items"));
    assert!(
        out.1.status.success(),
        "{}",
        String::from_utf8_lossy(&out.1.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.1.stdout).trim(), "SERVING");
    assert!(!out.2.status.success());
    drop((rw, next, ro, health, channel));
    server.stop().await;
}

/// The image's config and every config the chart renders (written by
/// scripts/deploy-check.sh) are ones the server accepts.
#[test]
fn deployment_configs_are_valid_server_configs() {
    let mut files = vec![common::repo().join("deploy/lookalike.toml")];
    let rendered = std::env::var_os("LOOKALIKE_DEPLOY_RENDERED");
    if let Some(dir) = &rendered {
        for entry in std::fs::read_dir(dir).unwrap() {
            files.push(entry.unwrap().path().join("lookalike.toml"));
        }
        assert!(files.len() >= 5, "renders missing in {dir:?}");
    }
    for f in files {
        let cfg = lookalike::config::Config::from_file(&f).unwrap_or_else(|e| panic!("{e}"));
        cfg.validate().unwrap();
        assert!(cfg.admin_listen.is_some(), "{}", f.display());
    }
}

#[tokio::test]
async fn http_requests_are_counted_by_route_and_carry_request_ids() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(
        data.path(),
        "admin_listen = \"127.0.0.1:0\"\nhttp_listen = \"127.0.0.1:0\"\n",
    );
    let admin = server.admin.clone().expect("admin port");
    let http = server.http.clone().expect("http port");
    let count = |s: &Scrape, route: &str, method: &str, status: &str| {
        s.sum(
            "lookalike_http_requests_total",
            &[("route", route), ("method", method), ("status", status)],
        )
    };
    let before = Scrape::take(&admin).await;
    let stats = "/v1/galleries/{gallery}";
    assert_eq!(count(&before, stats, "GET", "404"), 0.0);

    // The client's id comes back; without one the server makes one up.
    let (head, _) = http_request(
        &http,
        "GET /v1/galleries HTTP/1.1",
        "x-request-id: trace-7\r\n",
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.lines()
            .any(|l| l.eq_ignore_ascii_case("x-request-id: trace-7")),
        "{head}"
    );
    let (head, _) = http_request(&http, "GET /v1/galleries/nope HTTP/1.1", "").await;
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    let fresh = head
        .lines()
        .find_map(|l| l.strip_prefix("x-request-id: "))
        .expect("a request id on the error too");
    assert_eq!(fresh.len(), 32, "{fresh}");
    assert!(fresh.chars().all(|c| c.is_ascii_hexdigit()), "{fresh}");
    let (head, _) = http_request(&http, "GET /v1/galleries/other HTTP/1.1", "").await;
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    let (head, _) = http_request(&http, "GET /no/such/route HTTP/1.1", "").await;
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");

    let after = Scrape::take(&admin).await;
    assert_eq!(count(&after, "/v1/galleries", "GET", "200"), 1.0);
    // Labelled by the route's template, not the path the client sent.
    assert_eq!(count(&after, stats, "GET", "404"), 2.0);
    assert_eq!(count(&after, "unmatched", "other", "404"), 1.0);
    assert_eq!(
        after.sum(
            "lookalike_http_requests_total",
            &[("route", "/v1/galleries/nope")]
        ),
        0.0
    );
    let timed = after.sum(
        "lookalike_http_request_duration_seconds_count",
        &[("route", stats), ("method", "GET")],
    );
    assert_eq!(timed, 2.0);
}

/// One HTTP/1.1 request line plus extra header lines: (head, body).
async fn http_request(addr: &str, line: &str, headers: &str) -> (String, String) {
    let (addr, line, headers) = (addr.to_string(), line.to_string(), headers.to_string());
    tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        write!(
            s,
            "{line}\r\nHost: {addr}\r\n{headers}Connection: close\r\n\r\n"
        )
        .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        (head.to_string(), body.to_string())
    })
    .await
    .unwrap()
}
