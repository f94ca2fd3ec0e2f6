//! The browser chat page (`chat-demo/web/`) against a real cluster:
//!
//! - two headless Chromium pages (Debian's `chromium`, driven by playwright-core from
//!   `integration-tests/browser/chat-e2e.mjs`) log in to one room on the WebSocket frontend, each
//!   sends, each sees the other's message in the DOM, a third page with a taken name sees the
//!   error, a re-login uses the cached route list; a TCP game client on the other frontend in
//!   the same room receives the browsers' messages; the screenshot is
//!   `target/test-artifacts/browser-chat.png`;
//! - the `web` port serves the page's files and `/config.json`, and nothing else (traversal,
//!   other methods);
//! - over TLS (`ssl` on the WebSocket frontend, a certificate made by the test): the page is
//!   served over https, Chromium trusts it by its key's pin
//!   (`--ignore-certificate-errors-spki-list`; without the pin it refuses the page), and the
//!   same chat runs over wss;
//! - a wrong `web*` key stops the server with a message naming the server and the key;
//! - `kennel.js`'s unit tests (`node --test`).
//!
//! Needs `node` (all but the HTTP and config tests) plus `npm` and Chromium (the e2e test);
//! without them these tests fail, unless `KENNEL_SKIP_BROWSER=1`, when they say why and pass.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use integration_tests::browser;
use integration_tests::client::Client;
use integration_tests::cluster::{Cluster, ClusterOptions, free_port};
use integration_tests::mydog::{run_bounded, target_dir};
use integration_tests::tls::TestCa;
use serde_json::{Value, json};

/// The page's uid for a name (FNV-1a 32, as `chat.js` computes it).
fn uid_of(name: &str) -> u64 {
    let mut h: u32 = 0x811c_9dc5;
    for b in name.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    u64::from(h.max(1))
}

/// A cluster with one TCP frontend, one WebSocket frontend serving the page, two chat servers.
fn cluster_with_page() -> Result<(Cluster, u16)> {
    cluster_with_page_over(None)
}

/// [`cluster_with_page`], the WebSocket frontend and its page over TLS with `tls` (the
/// entry's `ssl`, `cert` and `key`).
fn cluster_with_page_over(tls: Option<Value>) -> Result<(Cluster, u16)> {
    let web = free_port();
    let mut ws_extra = json!({"web": web, "webDir": browser::web_dir()});
    let scheme = if tls.is_some() { "https" } else { "http" };
    for (k, v) in tls.iter().flat_map(|t| t.as_object().unwrap()) {
        ws_extra[k] = v.clone();
    }
    let mut cluster = Cluster::start_opts(&ClusterOptions {
        tcp: 1,
        ws: 1,
        chats: 2,
        ws_extra,
        ..ClusterOptions::default()
    })?;
    cluster.wait_line(&format!("chat page at {scheme}://127.0.0.1:{web}/"))?;
    // "cluster ready" means every server registered with the master; a frontend learns of the
    // chat servers a moment later, and a login before that gets no chat server.
    for (id, _) in cluster.frontends.clone() {
        cluster.wait_log(&id, "every configured server has registered")?;
    }
    Ok((cluster, web))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_browsers_chat_in_one_room() -> Result<()> {
    if browser::skip_without_tools(true) {
        return Ok(());
    }
    let modules = tokio::task::spawn_blocking(browser::playwright_modules).await??;
    let (cluster, web) = tokio::task::spawn_blocking(cluster_with_page).await??;
    let url = format!("http://127.0.0.1:{web}/");
    let result = chat_through_the_page(&cluster, &url, modules, None, "browser-chat.png").await;
    result.map_err(|e| {
        anyhow::anyhow!(
            "{e:#}\nthe cluster printed:\n{}",
            cluster.lines.lock().unwrap().join("\n")
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_chats_over_https_and_wss() -> Result<()> {
    if browser::skip_without_tools(true) {
        return Ok(());
    }
    let modules = tokio::task::spawn_blocking(browser::playwright_modules).await??;
    let ca = TestCa::new("kennel browser test CA")?;
    let cert = ca.server_cert("chat page")?;
    let files = tempfile::tempdir()?;
    let keys = cert.write(files.path())?;
    let (cluster, web) =
        tokio::task::spawn_blocking(move || cluster_with_page_over(Some(keys))).await??;
    let url = format!("https://127.0.0.1:{web}/");

    // Without the pin Chromium refuses the page: the pin is what makes it trusted.
    let (url2, modules2) = (url.clone(), modules.clone());
    let shot = target_dir()?.join("test-artifacts/browser-chat-unpinned.png");
    let out = tokio::task::spawn_blocking(move || run_e2e(&url2, &shot, &modules2, None)).await??;
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        !out.status.success() && printed.contains("ERR_CERT_AUTHORITY_INVALID"),
        "an unpinned Chromium loaded the page ({}):\n{printed}",
        out.status
    );

    let pin = Some(cert.spki_pin());
    let result =
        chat_through_the_page(&cluster, &url, modules, pin, "browser-chat-https.png").await;
    result.map_err(|e| {
        anyhow::anyhow!(
            "{e:#}\nthe cluster printed:\n{}",
            cluster.lines.lock().unwrap().join("\n")
        )
    })?;
    // connector-server-2, where both pages logged in, accepts TLS only: their sockets were
    // wss (an https page may not open ws:// anyway).
    Ok(())
}

/// Runs `chat-e2e.mjs` on the page at `url` (Chromium trusting the TLS key `pin`, if given),
/// its screenshot at `target/test-artifacts/<shot>`: what it printed, or its failure.
fn run_e2e(url: &str, shot: &Path, modules: &Path, pin: Option<&str>) -> Result<Output> {
    let chromium = browser::chromium();
    let mut env = vec![
        ("KENNEL_NODE_MODULES", modules),
        ("KENNEL_CHROMIUM", chromium.as_path()),
    ];
    if let Some(pin) = pin {
        env.push(("KENNEL_SPKI_PIN", Path::new(pin)));
    }
    browser::run_node(
        &["chat-e2e.mjs", url, &shot.to_string_lossy()],
        &env,
        Duration::from_secs(180),
    )
}

/// The body of [`two_browsers_chat_in_one_room`] and [`a_browser_chats_over_https_and_wss`]
/// (errors get the cluster's output attached).
async fn chat_through_the_page(
    cluster: &Cluster,
    url: &str,
    modules: PathBuf,
    pin: Option<String>,
    shot: &str,
) -> Result<()> {
    // A TCP player in room 7 on the other frontend hears the browsers.
    let mut tcp = Client::connect(cluster.client_addr(0))
        .await
        .context("tcp client connects")?;
    let r = tcp
        .request("connector.main.login", &json!({"uid": 4242, "room": 7}))
        .await
        .context("tcp login")?;
    ensure!(r["code"] == 0, "tcp login: {r}");
    let r = tcp
        .request("chat.main.join", &json!({"room": 7}))
        .await
        .context("tcp join")?;
    ensure!(r["code"] == 0 && r["size"] == 1, "tcp join: {r}");

    let shot = target_dir()?.join("test-artifacts").join(shot);
    let _ = std::fs::remove_file(&shot);
    let (url2, shot2, modules2) = (url.to_string(), shot.clone(), modules.clone());
    let out =
        tokio::task::spawn_blocking(move || run_e2e(&url2, &shot2, &modules2, pin.as_deref()))
            .await??;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.success(),
        "chat-e2e.mjs failed ({}):\n{stdout}\n{stderr}",
        out.status,
    );
    let seen: Value = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .with_context(|| format!("no JSON result from chat-e2e.mjs:\n{stdout}\n{stderr}"))?;

    let (alice, bob) = (uid_of("alice"), uid_of("bob"));
    // Both logged in on the WebSocket frontend and joined room 7 (on chat-server-2: 7 % 2).
    for (who, key, uid) in [("alice", "aliceJoined", alice), ("bob", "bobJoined", bob)] {
        let j = &seen[key];
        ensure!(j["title"] == "Room 7", "{who}: {j}");
        let whoami = j["whoami"].as_str().unwrap_or_default();
        ensure!(
            whoami == format!("{who} (uid {uid}) on connector-server-2 / chat-server-2"),
            "{who}: {whoami:?}"
        );
        ensure!(j["routes"] == "fetched", "{who}'s first handshake: {j}");
    }
    // Each page shows both messages, in order, its own marked as its own.
    let expect = |mine_is_alice: bool| {
        json!([
            {"who": "alice", "text": "hello from alice", "mine": mine_is_alice},
            {"who": "bob", "text": "hi alice, bob here", "mine": !mine_is_alice},
        ])
    };
    ensure!(
        seen["aliceMessages"] == expect(true),
        "alice's page: {}",
        seen["aliceMessages"]
    );
    ensure!(
        seen["bobMessages"] == expect(false),
        "bob's page: {}",
        seen["bobMessages"]
    );
    // A second "alice" is refused with a clear error and stays on the login form.
    let dup = &seen["duplicate"];
    let error = dup["error"].as_str().unwrap_or_default();
    ensure!(
        error.contains(&format!("uid {alice}")) && error.contains("already online"),
        "duplicate login error: {error:?}"
    );
    ensure!(dup["state"] == "login", "duplicate login: {dup}");
    // Logging in again after leaving uses the route list cached by md5.
    ensure!(
        seen["aliceAgain"]["routes"] == "cached",
        "re-login: {}",
        seen["aliceAgain"]
    );
    ensure!(
        seen["pageErrors"] == json!([]),
        "errors in the pages: {}",
        seen["pageErrors"]
    );
    ensure!(
        std::fs::metadata(&shot).is_ok_and(|m| m.len() > 1000),
        "no screenshot at {}",
        shot.display()
    );

    // The TCP player on connector-server-1 received both browser messages, with the senders'
    // uids and names.
    let first = tcp.expect_push("chat.main.onChat").await?;
    ensure!(
        first == json!({"name": "alice", "text": "hello from alice", "u": alice}),
        "tcp push 1: {first}"
    );
    let second = tcp.expect_push("chat.main.onChat").await?;
    ensure!(
        second == json!({"name": "bob", "text": "hi alice, bob here", "u": bob}),
        "tcp push 2: {second}"
    );
    eprintln!("screenshot: {}", shot.display());
    Ok(())
}

/// One HTTP/1.1 request on a fresh connection; returns (status, headers + body as text).
fn http(port: u16, method: &str, path: &str) -> Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("no HTTP status in {text:?}"))?;
    Ok((status, text))
}

#[test]
fn web_port_serves_the_page_and_nothing_else() -> Result<()> {
    let (cluster, web) = cluster_with_page()?;
    let ws_port: u16 = cluster.client_addr(1).rsplit(':').next().unwrap().parse()?;

    let (status, page) = http(web, "GET", "/")?;
    ensure!(
        status == 200 && page.contains("<title>kennel chat</title>"),
        "GET /: {page}"
    );
    let (status, js) = http(web, "GET", "/kennel.js")?;
    ensure!(
        status == 200
            && js
                .to_ascii_lowercase()
                .contains("content-type: text/javascript")
            && js.contains("export class KennelClient"),
        "GET /kennel.js: {status}"
    );
    let (status, cfg) = http(web, "GET", "/config.json")?;
    let body: Value = serde_json::from_str(cfg.split("\r\n\r\n").nth(1).unwrap_or_default())?;
    ensure!(
        status == 200
            && body
                == json!({"server": "connector-server-2", "ws": {"host": "127.0.0.1", "port": ws_port}}),
        "GET /config.json: {cfg}"
    );

    // Nothing outside web/: chat-demo/Cargo.toml sits right beside it.
    for path in [
        "/../Cargo.toml",
        "/..%2fCargo.toml",
        "/%2e%2e/Cargo.toml",
        "/%2e%2e%2fCargo.toml",
        "/./../Cargo.toml",
        "//etc/passwd",
        "/%2fetc%2fpasswd",
        "/nope.html",
    ] {
        let (status, text) = http(web, "GET", path)?;
        ensure!(
            status == 404 && !text.contains("[package]") && !text.contains("root:"),
            "GET {path}: {text}"
        );
    }
    for method in ["POST", "PUT", "DELETE"] {
        let (status, text) = http(web, method, "/index.html")?;
        ensure!(status == 405, "{method} /index.html: {text}");
    }
    Ok(())
}

/// Writes a one-frontend project whose connector entry has `extra`, runs that server by hand,
/// and returns its exit status and stderr.
fn run_server_with(extra: Value) -> Result<(bool, String)> {
    let dir = tempfile::tempdir()?;
    let sys = dir.path().join("config/sys");
    std::fs::create_dir_all(&sys)?;
    let mut entry = json!({"id": "connector-server-1", "host": "127.0.0.1", "port": free_port(),
        "frontend": true, "clientPort": free_port()});
    for (k, v) in extra.as_object().unwrap() {
        entry[k] = v.clone();
    }
    std::fs::write(
        sys.join("master.json"),
        json!({"test": {"id": "master-server-1", "host": "127.0.0.1", "port": free_port(),
            "serverSecret": "s", "cliSecret": "c"}})
        .to_string(),
    )?;
    std::fs::write(
        sys.join("servers.json"),
        json!({"test": {"connector": [entry]}}).to_string(),
    )?;
    std::fs::write(
        sys.join("route.json"),
        json!(["connector.main.login"]).to_string(),
    )?;
    let mut cmd = Command::new(integration_tests::cluster::bin("chat-demo"));
    cmd.args(["--id", "connector-server-1", "--env", "test", "--dir"])
        .arg(dir.path())
        .current_dir(dir.path())
        .stdin(Stdio::null());
    let out = run_bounded(cmd, "chat-demo server", Duration::from_secs(30))?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

#[test]
fn wrong_web_keys_stop_the_server_with_a_clear_error() -> Result<()> {
    let web = browser::web_dir();
    let empty = tempfile::tempdir()?;
    let cases = [
        (
            json!({"connector": "tcp", "web": 1}),
            "connector-server-1: \"web\" serves a page that talks WebSocket",
        ),
        (
            json!({"connector": "ws", "web": "4080"}),
            "connector-server-1: \"web\" must be a port number (0-65535), not \"4080\"",
        ),
        (
            json!({"connector": "ws", "web": 70000, "webDir": web}),
            "\"web\" must be a port number (0-65535), not 70000",
        ),
        (
            json!({"connector": "ws", "web": 0, "webDir": empty.path()}),
            "holds no index.html",
        ),
        (
            json!({"connector": "ws", "web": 0, "webDir": 3}),
            "\"webDir\" must be a non-empty string, not 3",
        ),
    ];
    for (extra, needle) in cases {
        let (ok, stderr) = run_server_with(extra.clone())?;
        ensure!(
            !ok && stderr.contains(needle),
            "{extra}: exit ok={ok}, expected {needle:?} in:\n{stderr}"
        );
    }
    Ok(())
}

#[test]
fn kennel_js_unit_tests() -> Result<()> {
    if browser::skip_without_tools(false) {
        return Ok(());
    }
    let out = browser::run_node(
        &["--test", "kennel.test.mjs"],
        &[],
        Duration::from_secs(120),
    )?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success() && stdout.contains("# fail 0") && !stdout.contains("# pass 0"),
        "node --test kennel.test.mjs failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}
