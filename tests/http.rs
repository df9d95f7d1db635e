//! The HTTP/JSON API against the real `lookalike serve` process on real
//! ports, with the real default model and grocery photos: every route,
//! its success and its error codes, with the messages the gRPC API gives
//! for the same mistakes (asked of the same server).

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::pki::Pki;
use common::{read_image, split, subset, Server};
use lookalike::api::pb;
use reqwest::multipart::{Form, Part};
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};

/// Banana (6) among a few other classes of grocery test.txt.
const CLASSES: [u32; 4] = [0, 6, 20, 40];
const BANANA: u32 = 6;

struct Http {
    base: String,
    client: Client,
}

/// reqwest on rustls needs a crypto provider even for plain HTTP.
fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl Http {
    fn new(server: &Server) -> Self {
        install_provider();
        Self {
            base: format!("http://{}", server.http.as_ref().expect("http_listen set")),
            client: Client::new(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> (StatusCode, Value) {
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, body)
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.send(self.client.get(self.url(path))).await
    }

    async fn post_json(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.send(self.client.post(self.url(path)).json(&body))
            .await
    }

    async fn post_bytes(&self, path: &str, body: Vec<u8>) -> (StatusCode, Value) {
        let req = self
            .client
            .post(self.url(path))
            .header("content-type", "image/jpeg")
            .body(body);
        self.send(req).await
    }

    async fn post_form(&self, path: &str, form: Form) -> (StatusCode, Value) {
        self.send(self.client.post(self.url(path)).multipart(form))
            .await
    }

    async fn delete(&self, path: &str) -> (StatusCode, Value) {
        self.send(self.client.delete(self.url(path))).await
    }
}

/// The error's (code, message), checking the body's shape.
fn error(body: &Value) -> (String, String) {
    let e = &body["error"];
    assert!(e["retryable"].is_boolean(), "{body}");
    (
        e["code"]
            .as_str()
            .unwrap_or_else(|| panic!("{body}"))
            .into(),
        e["message"].as_str().unwrap().into(),
    )
}

fn expect_error(got: (StatusCode, Value), status: u16, code: &str) -> String {
    assert_eq!(got.0.as_u16(), status, "{}", got.1);
    let (c, message) = error(&got.1);
    assert_eq!(c, code, "{message}");
    message
}

fn image_part(path: &str) -> Part {
    Part::bytes(read_image(path))
        .file_name(path.to_string())
        .mime_str("image/jpeg")
        .unwrap()
}

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn class_of(hit: &Value) -> u32 {
    hit["metadata"]["class"].as_str().unwrap().parse().unwrap()
}

/// A noise PNG of about `bytes` bytes: a valid image that compresses badly.
fn noise_png(bytes: usize) -> Vec<u8> {
    let side = ((bytes / 3) as f64).sqrt() as u32 + 1;
    let mut state = 0x9E37_79B9u32;
    let img = image::RgbImage::from_fn(side, side, |_, _| {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        image::Rgb([state as u8, (state >> 8) as u8, (state >> 16) as u8])
    });
    let mut out = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .unwrap();
    out
}

async fn wait_refreshed(http: &Http, gallery: &str) {
    let t = std::time::Instant::now();
    loop {
        let (_, s) = http.get(&format!("/v1/galleries/{gallery}")).await;
        let ix = &s["index"];
        if ix["stale_items"] == 0 && ix["post_processing_generation"].as_u64() > Some(0) {
            return;
        }
        assert!(t.elapsed().as_secs() < 60, "refresh never finished: {s}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn every_route_with_its_errors_against_the_real_server() {
    let data = tempfile::tempdir().unwrap();
    // Small limits so that 413 is cheap to reach: 200 kB images, 1 MB bodies.
    let server = Server::start(
        data.path(),
        "http_listen = \"127.0.0.1:0\"\nmax_message_bytes = 1000000\n[embed.limits]\nmax_bytes = 200000\n",
    );
    let http = Http::new(&server);
    let mut grpc = server.client().await;

    // The console and the OpenAPI document.
    let (s, page) = http.get("/").await;
    assert_eq!(s, 200);
    assert!(page.as_str().unwrap().contains("lookalike console"));
    assert_eq!(http.get("/console.js").await.0, 200);
    assert_eq!(http.get("/console.css").await.0, 200);
    let (s, doc) = http.get("/v1/openapi.json").await;
    assert_eq!(s, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    // Every documented operation is routed (a gallery that does not
    // exist: the handler's 404, not the router's).
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            let url = http.url(&path.replace("{gallery}", "nope").replace("{id}", "x"));
            let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let (status, body) = http.send(http.client.request(m, url)).await;
            assert_ne!(status, 405, "{method} {path}");
            if status == 404 {
                let (_, message) = error(&body);
                assert!(
                    !message.contains("no such route"),
                    "{method} {path}: {message}"
                );
            }
        }
    }
    let msg = expect_error(http.get("/v1/nothing").await, 404, "not_found");
    assert!(msg.contains("no such route"), "{msg}");

    // Galleries: create, conflict, bad name; messages as over gRPC.
    let (s, created) = http
        .post_json("/v1/galleries", json!({"gallery": "groc"}))
        .await;
    assert_eq!(s, 201, "{created}");
    assert_eq!(created["dims"], 1280);
    let http_msg = expect_error(
        http.post_json("/v1/galleries", json!({"gallery": "groc"}))
            .await,
        409,
        "already_exists",
    );
    let grpc_err = grpc
        .create_gallery(pb::CreateGalleryRequest {
            gallery: "groc".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(http_msg, grpc_err.message());
    let http_msg = expect_error(
        http.post_json("/v1/galleries", json!({"gallery": "a/b"}))
            .await,
        400,
        "invalid_argument",
    );
    let grpc_err = grpc
        .create_gallery(pb::CreateGalleryRequest {
            gallery: "a/b".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(http_msg, grpc_err.message());
    expect_error(
        http.post_json("/v1/galleries", json!({"name": "x"})).await,
        400,
        "invalid_argument",
    );

    // Add: photos of a few classes (banana among them) and a bad file in
    // one multipart request; one outcome per part, in order.
    let rows = subset(&split("test.txt"), &CLASSES, 5);
    let mut form = Form::new();
    let mut metadata = BTreeMap::new();
    for (path, class) in &rows {
        form = form.part("image", image_part(path));
        metadata.insert(path.clone(), json!({"class": class.to_string()}));
    }
    let form = form
        .part(
            "image",
            Part::bytes(b"not an image".to_vec()).file_name("bad.jpg"),
        )
        .text("metadata", serde_json::to_string(&metadata).unwrap());
    let (s, added) = http.post_form("/v1/galleries/groc/items", form).await;
    assert_eq!(s, 200, "{added}");
    let outcomes = added["outcomes"].as_array().unwrap();
    assert_eq!(outcomes.len(), rows.len() + 1);
    for (i, (path, _)) in rows.iter().enumerate() {
        assert_eq!(outcomes[i]["id"], path.as_str());
        assert_eq!(outcomes[i]["index"], i);
        assert_eq!(outcomes[i]["status"], "added", "{}", outcomes[i]);
    }
    let bad = &outcomes[rows.len()];
    assert_eq!(bad["status"], "rejected");
    let grpc_err = grpc
        .embed(pb::EmbedRequest {
            image: b"not an image".to_vec(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad["reason"], grpc_err.message());
    assert_eq!(added["summary"]["added"], rows.len());
    assert_eq!(added["summary"]["rejected"], 1);
    // Sent again: replaced.
    let again = Form::new().part("image", image_part(&rows[0].0)).text(
        "metadata",
        json!({&rows[0].0: {"class": rows[0].1.to_string()}}).to_string(),
    );
    let (_, r) = http.post_form("/v1/galleries/groc/items", again).await;
    assert_eq!(r["outcomes"][0]["status"], "replaced", "{r}");
    // A form part without a filename, unknown parts, metadata of no part.
    let nameless = Form::new().part("image", Part::bytes(read_image(&rows[0].0)));
    expect_error(
        http.post_form("/v1/galleries/groc/items", nameless).await,
        400,
        "invalid_argument",
    );
    let stray = Form::new().text("metadata", json!({"ghost": {}}).to_string());
    let msg = expect_error(
        http.post_form("/v1/galleries/groc/items", stray).await,
        400,
        "invalid_argument",
    );
    assert!(msg.contains("ghost"), "{msg}");
    expect_error(
        http.post_form(
            "/v1/galleries/nope/items",
            Form::new().part("image", image_part(&rows[0].0)),
        )
        .await,
        404,
        "not_found",
    );

    // Embed, then add that descriptor as JSON.
    let banana_query = split("val.txt")
        .into_iter()
        .find(|r| r.1 == BANANA)
        .unwrap()
        .0;
    let (s, embedded) = http
        .post_bytes("/v1/embed", read_image(&banana_query))
        .await;
    assert_eq!(s, 200, "{embedded}");
    assert_eq!(
        embedded["descriptor"]["values"].as_array().unwrap().len(),
        1280
    );
    let stages: Vec<&str> = embedded["timings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["stage"].as_str().unwrap())
        .collect();
    assert_eq!(stages, ["decode", "embed"]);
    let form = Form::new().part("image", image_part(&banana_query));
    assert_eq!(http.post_form("/v1/embed", form).await.0, 200);
    let desc = embedded["descriptor"].clone();
    let (s, r) = http
        .post_json(
            "/v1/galleries/groc/items",
            json!({"items": [{"id": "by-descriptor", "descriptor": desc, "metadata": {"class": "6"}}]}),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(r["outcomes"][0]["status"], "added", "{r}");
    let (_, r) = http
        .post_json(
            "/v1/galleries/groc/items",
            json!({"items": [{"id": "short", "descriptor": {"values": [1.0, 0.0]}}]}),
        )
        .await;
    assert_eq!(r["outcomes"][0]["status"], "rejected");
    assert!(r["outcomes"][0]["reason"]
        .as_str()
        .unwrap()
        .contains("2 dimensions"));
    let total = rows.len() + 1;

    // Stats and the gallery list.
    let (s, stats) = http.get("/v1/galleries/groc").await;
    assert_eq!(s, 200);
    assert_eq!(stats["count"], total);
    assert_eq!(stats["dims"], 1280);
    assert_eq!(stats["execution_provider"], "CPUExecutionProvider");
    // The index state, field by field, as GalleryStats over gRPC says it.
    let ix = grpc
        .gallery_stats(pb::GalleryStatsRequest {
            gallery: "groc".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .index
        .unwrap();
    let i = &stats["index"];
    assert_eq!(i["points"], ix.points);
    assert_eq!(i["graph"], ix.graph);
    assert_eq!(i["default_ef"], ix.default_ef);
    assert_eq!(i["calibration_sample"], ix.calibration_sample);
    assert_eq!(i["target_recall_reached"], ix.target_recall_reached);
    assert_eq!(i["projection_components"], ix.projection_components);
    let (_, list) = http.get("/v1/galleries").await;
    assert_eq!(list["galleries"][0]["gallery"], "groc");
    expect_error(http.get("/v1/galleries/nope").await, 404, "not_found");

    // List in pages of 3, following the tokens.
    let mut seen = BTreeSet::new();
    let mut token = String::new();
    loop {
        let (s, page) = http
            .get(&format!(
                "/v1/galleries/groc/items?page_size=3&page_token={token}"
            ))
            .await;
        assert_eq!(s, 200, "{page}");
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= 3);
        seen.extend(items.iter().map(|i| i["id"].as_str().unwrap().to_string()));
        token = page["next_page_token"].as_str().unwrap().to_string();
        if token.is_empty() {
            break;
        }
    }
    let mut want: BTreeSet<String> = rows.iter().map(|r| r.0.clone()).collect();
    want.insert("by-descriptor".into());
    assert_eq!(seen, want);
    let http_msg = expect_error(
        http.get("/v1/galleries/groc/items?page_token=bogus").await,
        400,
        "invalid_argument",
    );
    let grpc_err = grpc
        .list_items(pb::ListItemsRequest {
            gallery: "groc".into(),
            page_token: "bogus".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(http_msg, grpc_err.message());
    expect_error(
        http.get("/v1/galleries/groc/items?page_size=x").await,
        400,
        "invalid_argument",
    );

    // Get an item, with and without its descriptor; a missing one.
    let first = &rows[0].0;
    let (s, item) = http
        .get(&format!("/v1/galleries/groc/items/{}", enc(first)))
        .await;
    assert_eq!(s, 200, "{item}");
    assert_eq!(item["id"], first.as_str());
    assert!(item.get("descriptor").is_none());
    let (_, item) = http
        .get(&format!(
            "/v1/galleries/groc/items/{}?include_descriptor=true",
            enc(first)
        ))
        .await;
    assert_eq!(item["descriptor"]["values"].as_array().unwrap().len(), 1280);
    let http_msg = expect_error(
        http.get("/v1/galleries/groc/items/missing").await,
        404,
        "not_found",
    );
    let grpc_err = grpc
        .get_item(pb::GetItemRequest {
            gallery: "groc".into(),
            id: "missing".into(),
            include_descriptor: false,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(http_msg, grpc_err.message());

    // Thumbnails: a JPEG of at most 256 px a side for photos, none for
    // a descriptor.
    let thumb_path = format!("/v1/galleries/groc/items/{}/thumbnail", enc(first));
    assert_eq!(item["thumbnail"], thumb_path.as_str());
    let resp = http.client.get(http.url(&thumb_path)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "image/jpeg");
    let jpeg = resp.bytes().await.unwrap();
    let thumb = image::load_from_memory(&jpeg).unwrap();
    let original = image::load_from_memory(&read_image(first)).unwrap();
    let longest = original.width().max(original.height()).min(256);
    assert_eq!(thumb.width().max(thumb.height()), longest);
    expect_error(
        http.get("/v1/galleries/groc/items/by-descriptor/thumbnail")
            .await,
        404,
        "not_found",
    );

    // Search: the raw image, multipart with options, JSON by item id and
    // by descriptor. Banana photos first for a banana query.
    wait_refreshed(&http, "groc").await;
    let (s, found) = http
        .post_bytes(
            "/v1/galleries/groc/search?top_k=3",
            read_image(&banana_query),
        )
        .await;
    assert_eq!(s, 200, "{found}");
    let hits = found["hits"].as_array().unwrap();
    assert_eq!(hits.len(), 3);
    assert!(hits.iter().all(|h| class_of(h) == BANANA), "{found}");
    assert!(hits[0]["thumbnail"]
        .as_str()
        .unwrap()
        .ends_with("/thumbnail"));
    let default_stages = found["stages"].clone();
    assert!(
        default_stages.as_array().unwrap().len() > 1,
        "{default_stages}"
    );
    let timing_names: Vec<&str> = found["timings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["stage"].as_str().unwrap())
        .collect();
    assert_eq!(&timing_names[..2], ["decode", "embed"]);
    // The same options over gRPC give the same ranking.
    let grpc_hits = grpc
        .search(pb::SearchRequest {
            gallery: "groc".into(),
            query: Some(pb::search_request::Query::Image(read_image(&banana_query))),
            top_k: 3,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .hits;
    let ids: Vec<&str> = hits.iter().map(|h| h["id"].as_str().unwrap()).collect();
    let grpc_ids: Vec<&str> = grpc_hits.iter().map(|h| h.id.as_str()).collect();
    assert_eq!(ids, grpc_ids);

    let options = json!({"top_k": 4, "post_processing": {
        "query_expansion": {"enabled": false}, "k_reciprocal": {"enabled": false}}});
    let form = Form::new()
        .part("image", image_part(&banana_query))
        .text("options", options.to_string());
    let (s, plain) = http.post_form("/v1/galleries/groc/search", form).await;
    assert_eq!(s, 200, "{plain}");
    assert_eq!(plain["hits"].as_array().unwrap().len(), 4);
    assert_ne!(
        plain["stages"], default_stages,
        "options reach the pipeline"
    );
    let (s, raw_plain) = http
        .post_bytes(
            "/v1/galleries/groc/search?top_k=4&query_expansion=false&k_reciprocal=false",
            read_image(&banana_query),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(raw_plain["stages"], plain["stages"]);

    let banana_item = rows.iter().find(|r| r.1 == BANANA).unwrap().0.clone();
    let (s, by_id) = http
        .post_json(
            "/v1/galleries/groc/search",
            json!({"item_id": banana_item, "top_k": 2}),
        )
        .await;
    assert_eq!(s, 200, "{by_id}");
    assert!(by_id["hits"]
        .as_array()
        .unwrap()
        .iter()
        .all(|h| h["id"] != banana_item.as_str()));
    let (s, by_desc) = http
        .post_json(
            "/v1/galleries/groc/search",
            json!({"descriptor": desc, "top_k": 1, "filter": {"class": "6"}}),
        )
        .await;
    assert_eq!(s, 200, "{by_desc}");
    assert_eq!(class_of(&by_desc["hits"][0]), BANANA);

    // Search errors, each with the gRPC message.
    let grpc_search = |query, top_k| pb::SearchRequest {
        gallery: "groc".into(),
        query,
        top_k,
        ..Default::default()
    };
    let http_msg = expect_error(
        http.post_json("/v1/galleries/groc/search", json!({"top_k": 3}))
            .await,
        400,
        "invalid_argument",
    );
    let grpc_err = grpc.search(grpc_search(None, 3)).await.unwrap_err();
    assert_eq!(http_msg, grpc_err.message());
    let http_msg = expect_error(
        http.post_json(
            "/v1/galleries/groc/search",
            json!({"item_id": banana_item, "top_k": 5000}),
        )
        .await,
        400,
        "invalid_argument",
    );
    let grpc_err = grpc
        .search(grpc_search(
            Some(pb::search_request::Query::ItemId(banana_item.clone())),
            5000,
        ))
        .await
        .unwrap_err();
    assert_eq!(http_msg, grpc_err.message());
    let http_msg = expect_error(
        http.post_bytes("/v1/galleries/groc/search", b"GIF89a garbage".to_vec())
            .await,
        400,
        "invalid_argument",
    );
    let grpc_err = grpc
        .search(grpc_search(
            Some(pb::search_request::Query::Image(b"GIF89a garbage".to_vec())),
            0,
        ))
        .await
        .unwrap_err();
    assert_eq!(http_msg, grpc_err.message());
    let http_msg = expect_error(
        http.post_json(
            "/v1/galleries/groc/search",
            json!({"descriptor": {"values": [1.0], "model_fingerprint": "other"}}),
        )
        .await,
        409,
        "failed_precondition",
    );
    assert!(http_msg.contains("other"), "{http_msg}");
    expect_error(
        http.post_json("/v1/galleries/groc/search", json!({"top_k": "many"}))
            .await,
        400,
        "invalid_argument",
    );
    expect_error(
        http.post_bytes(
            "/v1/galleries/groc/search?colour=red",
            read_image(&banana_query),
        )
        .await,
        400,
        "invalid_argument",
    );
    expect_error(
        http.post_bytes("/v1/galleries/nope/search", read_image(&banana_query))
            .await,
        404,
        "not_found",
    );

    // 413: an image over embed.limits.max_bytes (gRPC: INVALID_ARGUMENT,
    // same message), and a body over max_message_bytes.
    let big = noise_png(300_000);
    assert!(big.len() > 200_000 && big.len() < 1_000_000);
    let http_msg = expect_error(
        http.post_bytes("/v1/embed", big.clone()).await,
        413,
        "too_large",
    );
    let grpc_err = grpc
        .embed(pb::EmbedRequest { image: big })
        .await
        .unwrap_err();
    assert_eq!(grpc_err.code(), tonic::Code::InvalidArgument);
    assert_eq!(http_msg, grpc_err.message());
    let msg = expect_error(
        http.post_bytes("/v1/galleries/groc/search", vec![0u8; 1_200_000])
            .await,
        413,
        "too_large",
    );
    assert!(msg.contains("max_message_bytes"), "{msg}");
    let huge = Form::new().part(
        "image",
        Part::bytes(vec![0u8; 1_200_000]).file_name("huge.jpg"),
    );
    expect_error(
        http.post_form("/v1/galleries/groc/items", huge).await,
        413,
        "too_large",
    );
    let (_, stats) = http.get("/v1/galleries/groc").await;
    assert_eq!(stats["count"], total, "refused requests stored nothing");

    // Remove an item (its thumbnail goes with it), then the gallery.
    let (s, r) = http
        .delete(&format!("/v1/galleries/groc/items/{}", enc(first)))
        .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["removed"], 1);
    expect_error(
        http.delete(&format!("/v1/galleries/groc/items/{}", enc(first)))
            .await,
        404,
        "not_found",
    );
    expect_error(http.get(&thumb_path).await, 404, "not_found");
    let (s, r) = http.delete("/v1/galleries/groc").await;
    assert_eq!(s, 200);
    assert_eq!(r["removed_items"], total - 1);
    let http_msg = expect_error(http.delete("/v1/galleries/groc").await, 404, "not_found");
    let grpc_err = grpc
        .drop_gallery(pb::DropGalleryRequest {
            gallery: "groc".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(http_msg, grpc_err.message());
    server.stop().await;
}

#[tokio::test]
async fn api_keys_and_tls_as_on_grpc() {
    let data = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let config = format!(
        "http_listen = \"127.0.0.1:0\"\n[tls]\ncert = {:?}\nkey = {:?}\n",
        pki.path("server.pem"),
        pki.path("server.key"),
    );
    let server = Server::start_with_env(
        data.path(),
        &config,
        &[
            ("LOOKALIKE_API_KEY_RW", "rw-key"),
            ("LOOKALIKE_API_KEY_RO", "ro-key"),
        ],
    );
    let port = server.http.as_ref().unwrap().rsplit(':').next().unwrap();
    let base = format!("https://localhost:{port}");
    install_provider();
    let ca = reqwest::Certificate::from_pem(&pki.read("ca.pem")).unwrap();
    let client = Client::builder()
        .use_rustls_tls()
        .add_root_certificate(ca)
        .build()
        .unwrap();
    let http = Http { base, client };

    // Plaintext to the TLS port fails.
    let plain = Client::new()
        .get(format!("http://localhost:{port}/v1/galleries"))
        .send()
        .await;
    assert!(plain.map_or(true, |r| !r.status().is_success()));

    // The console and the document need no key; the API does.
    assert_eq!(http.get("/").await.0, 200);
    assert_eq!(http.get("/v1/openapi.json").await.0, 200);
    let msg = expect_error(http.get("/v1/galleries").await, 401, "unauthenticated");
    assert!(msg.contains("Bearer"), "{msg}");
    let with = |key: &str, req: reqwest::RequestBuilder| req.bearer_auth(key);
    let list = || http.client.get(http.url("/v1/galleries"));
    expect_error(
        http.send(with("guess", list())).await,
        401,
        "unauthenticated",
    );
    assert_eq!(http.send(with("ro-key", list())).await.0, 200);
    assert_eq!(http.send(list().header("api-key", "ro-key")).await.0, 200);
    let create = || {
        http.client
            .post(http.url("/v1/galleries"))
            .json(&json!({"gallery": "g"}))
    };
    let msg = expect_error(
        http.send(with("ro-key", create())).await,
        403,
        "permission_denied",
    );
    assert!(msg.contains("read-only"), "{msg}");
    assert_eq!(http.send(with("rw-key", create())).await.0, 201);
    // A read-only key searches but does not add or remove.
    let add = http
        .client
        .post(http.url("/v1/galleries/g/items"))
        .multipart(Form::new().part("image", image_part(&split("test.txt")[0].0)));
    expect_error(
        http.send(with("ro-key", add)).await,
        403,
        "permission_denied",
    );
    let drop = http.client.delete(http.url("/v1/galleries/g"));
    expect_error(
        http.send(with("ro-key", drop)).await,
        403,
        "permission_denied",
    );
    let search = http
        .client
        .post(http.url("/v1/galleries/g/search"))
        .header("content-type", "image/jpeg")
        .body(read_image(&split("test.txt")[0].0));
    let (s, r) = http.send(with("ro-key", search)).await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["hits"].as_array().unwrap().len(), 0, "empty gallery");
    server.stop().await;
}

#[tokio::test]
async fn a_dead_inference_worker_is_503_over_http() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start_with_env(
        data.path(),
        "http_listen = \"127.0.0.1:0\"\n",
        &[("LOOKALIKE_FAULT_WORKER_PANIC_AFTER", "1")],
    );
    let http = Http::new(&server);
    let photo = read_image(&split("test.txt")[0].0);
    assert_eq!(http.post_bytes("/v1/embed", photo.clone()).await.0, 200);
    let resp = http
        .client
        .post(http.url("/v1/embed"))
        .body(photo.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["retry-after"], "1");
    let body: Value = resp.json().await.unwrap();
    let (code, _) = error(&body);
    assert_eq!(code, "unavailable");
    assert_eq!(body["error"]["retryable"], true);
    // And so it stays: the engine does not recover without a restart.
    expect_error(
        http.post_bytes("/v1/embed", photo).await,
        503,
        "unavailable",
    );
}

const DECODES: &str = "lookalike_stage_duration_seconds_count{stage=\"decode\"}";

/// Overload, deterministically: with one image admitted at a time, the
/// images of one add request are prepared together and all but the first
/// are refused at once (retry_later, not rejected). With an embedding held
/// in the worker (a debug-build fault hook), an embed or an image search
/// is refused with 429 and Retry-After, and served again once it is done.
/// An added photo is decoded once, for its embedding and its thumbnail.
#[tokio::test]
async fn overload_is_retry_later_per_item_and_429_with_retry_after() {
    let data = tempfile::tempdir().unwrap();
    let hold = data.path().with_extension("hold");
    let server = Server::start_with_env(
        data.path(),
        "http_listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n[embed]\nmax_in_flight = 1\n",
        &[("LOOKALIKE_FAULT_WORKER_HOLD", hold.to_str().unwrap())],
    );
    let http = Http::new(&server);
    let admin = server.admin.clone().unwrap();
    let mut grpc = server.client().await;
    assert_eq!(
        http.post_json("/v1/galleries", json!({"gallery": "g"}))
            .await
            .0,
        201
    );
    let rows = subset(&split("test.txt"), &CLASSES, 1);
    let decodes = common::metric(&admin, DECODES).await;
    let form = rows.iter().fold(Form::new(), |f, (path, _)| {
        f.part("image", image_part(path))
    });
    let (s, added) = http.post_form("/v1/galleries/g/items", form).await;
    assert_eq!(s, 200, "{added}");
    let outcomes = added["outcomes"].as_array().unwrap();
    assert_eq!(outcomes[0]["status"], "added", "{added}");
    for o in &outcomes[1..] {
        assert_eq!(o["status"], "retry_later", "{added}");
        assert_eq!(
            o["reason"],
            "the embedding queue is full (1 images in flight); retry later"
        );
    }
    assert_eq!(added["summary"]["retry_later"], rows.len() - 1);
    // One decode for the one photo admitted: its thumbnail came from it.
    assert_eq!(common::metric(&admin, DECODES).await - decodes, 1.0);
    let thumb = http
        .client
        .get(http.url(&format!(
            "/v1/galleries/g/items/{}/thumbnail",
            enc(&rows[0].0)
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(thumb.status(), 200);
    let jpeg = thumb.bytes().await.unwrap();
    assert!(image::load_from_memory(&jpeg).unwrap().width() > 0);

    // Hold one embedding in the worker: the queue is full until released.
    std::fs::write(&hold, b"").unwrap();
    let photo = read_image(&rows[0].0);
    let held = tokio::spawn({
        let (client, url, photo) = (http.client.clone(), http.url("/v1/embed"), photo.clone());
        async move { client.post(url).body(photo).send().await.unwrap().status() }
    });
    let t = std::time::Instant::now();
    while common::metric(&admin, "lookalike_embed_queue_depth").await < 1.0 {
        assert!(t.elapsed().as_secs() < 60, "the held embed never arrived");
        tokio::task::yield_now().await;
    }
    let refused = common::metric(&admin, "lookalike_embed_admission_refusals_total").await;
    let search = http
        .client
        .post(http.url("/v1/galleries/g/search"))
        .header("content-type", "image/jpeg")
        .body(photo.clone());
    for req in [
        http.client.post(http.url("/v1/embed")).body(photo.clone()),
        search,
    ] {
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 429);
        assert_eq!(resp.headers()["retry-after"], "1");
        let body: Value = resp.json().await.unwrap();
        let (code, message) = error(&body);
        assert_eq!(code, "overloaded");
        assert_eq!(body["error"]["retryable"], true);
        assert_eq!(
            message,
            "the embedding queue is full (1 images in flight); retry later"
        );
    }
    // gRPC says the same, as RESOURCE_EXHAUSTED.
    let grpc_err = grpc
        .embed(pb::EmbedRequest {
            image: photo.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(grpc_err.code(), tonic::Code::ResourceExhausted);
    assert_eq!(
        grpc_err.message(),
        "the embedding queue is full (1 images in flight); retry later"
    );
    assert_eq!(
        common::metric(&admin, "lookalike_embed_admission_refusals_total").await - refused,
        3.0
    );
    // Released: the held request is answered and new ones are served.
    std::fs::remove_file(&hold).unwrap();
    assert_eq!(held.await.unwrap(), 200);
    assert_eq!(http.post_bytes("/v1/embed", photo).await.0, 200);
    server.stop().await;
}
