//! The web console in a real browser: Debian's chromium driven by
//! playwright-core (tests/browser/console.mjs) against the real server
//! with the real default model and grocery photos. Screenshots of each
//! step go to target/browser-test/. Needs `scripts/browser-setup.sh`
//! (scripts/test.sh runs it); fails, saying so, when it has not run.

mod common;

use std::process::Command;

use common::{grocery, repo, Server};

#[tokio::test]
async fn console_adds_searches_reranks_and_shows_errors_in_chromium() {
    let script_dir = repo().join("tests/browser");
    assert!(
        std::path::Path::new("/usr/bin/chromium").exists()
            && script_dir.join("node_modules/playwright-core").exists(),
        "chromium or playwright-core is missing: run scripts/browser-setup.sh"
    );
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path(), "http_listen = \"127.0.0.1:0\"\n");
    let base = format!("http://{}", server.http.as_ref().unwrap());
    let artefacts = repo().join("target/browser-test");
    let _ = std::fs::remove_dir_all(&artefacts);
    let script = script_dir.join("console.mjs");
    let run = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(script)
            .arg(&base)
            .arg(grocery())
            .arg(&artefacts)
            .output()
            .expect("running node")
    })
    .await
    .unwrap();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    println!("{log}");
    assert!(run.status.success(), "browser test failed:\n{log}");
    assert!(repo().join("target/browser-test/09-phone.png").exists());
    server.stop().await;
}
