//! TLS for game clients against real chat-demo clusters, with certificates made at test time
//! (`integration_tests::tls`):
//!
//! - kennel-client over TLS TCP and over wss chats through the cluster and sees the served
//!   certificate; a plain TCP client on the TLS port, a plain WebSocket client on the wss
//!   port, a client that does not trust the CA, one that expects another name, a silent
//!   socket and one sending more than the pre-handshake budget all fail cleanly (a clear
//!   error, closed at once or at the handshake timeout) while the others keep chatting;
//! - `maxConnectionNum` counts sockets still in their TLS handshake;
//! - a certificate swapped on disk is served to new connections (by the timer on one
//!   frontend, by `kennel send --type connector reload-tls` on the other) while the old
//!   connections keep chatting; a bad new file keeps the previous certificate;
//! - `kennel config` and `kennel start` refuse a key that does not match, an expired
//!   certificate and a missing file, naming the file, the entry and the key, before any server
//!   starts.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use integration_tests::TIMEOUT;
use integration_tests::cluster::{Cluster, ClusterOptions, ROUTES, bin, free_port, servers_in};
use integration_tests::mydog::run_bounded;
use integration_tests::tls::{ServerCert, TestCa};
use kennel_client::{Client, Error, PushStream, TlsOptions};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The handshake timeout of the clusters here (seconds).
const HANDSHAKE_SECS: u64 = 3;

/// `keys` (the `ssl`, `cert`, `key` of a certificate) with `more` over them.
fn entry(keys: &Value, more: Value) -> Value {
    let mut e = keys.clone();
    for (k, v) in more.as_object().unwrap() {
        e[k] = v.clone();
    }
    e
}

/// A client of `addr` over TLS (`ws`: wss) trusting `tls`.
async fn connect(addr: &str, ws: bool, tls: &TlsOptions) -> kennel_client::Result<Client> {
    let b = Client::builder(addr)
        .tls(tls.clone())
        .connect_timeout(Duration::from_secs(HANDSHAKE_SECS * 2));
    if ws { b.ws() } else { b }.connect().await
}

/// Logs `uid` into `room` and joins its chat; returns its push stream of chat messages.
async fn join(c: &Client, uid: u64, room: u64) -> Result<PushStream> {
    let r: Value = c
        .request("connector.main.login", &json!({"uid": uid, "room": room}))
        .await?;
    ensure!(r["code"] == 0, "login {uid}: {r}");
    let pushes = c.subscribe("chat.main.onChat")?;
    let j: Value = c.request("chat.main.join", &json!({})).await?;
    ensure!(j["code"] == 0, "join {uid}: {j}");
    Ok(pushes)
}

/// `from` says `text`; every stream in `to` receives it.
async fn chat(from: &Client, text: &str, to: &mut [&mut PushStream]) -> Result<()> {
    from.notify("chat.main.send", &json!({"text": text}))?;
    for s in to.iter_mut() {
        loop {
            let m: Value = s.recv_json(TIMEOUT).await?;
            if m["text"] == text {
                break;
            }
        }
    }
    Ok(())
}

/// The certificate a new TLS client of `addr` trusting `ca` is served (a client of its own: a
/// client resuming an earlier session is not sent the certificate again).
async fn served(addr: &str, ws: bool, ca: &TestCa) -> Result<Vec<u8>> {
    let c = connect(addr, ws, &ca.client_tls()?).await?;
    let der = c.handshake().peer_certificate.clone();
    c.close().await;
    der.context("no peer certificate over TLS")
}

/// `kennel send --type connector reload-tls`: whether it succeeded, and what it printed.
fn reload_tls(cluster: &Cluster) -> (bool, String) {
    let out = cluster.cli(&["send", "--type", "connector", "reload-tls"]);
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("reload-tls: {printed}");
    (out.status.success(), printed)
}

/// Reads `s` until the server closes it; how long that took.
async fn closed_after(s: &mut TcpStream) -> Result<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(TIMEOUT, s.read(&mut buf)).await {
            Err(_) => bail!("the server did not close the socket within {TIMEOUT:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(start.elapsed()),
            Ok(Ok(_)) => {} // a TLS alert
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_chat_over_tls_tcp_and_wss_while_bad_clients_fail_cleanly() -> Result<()> {
    let ca = TestCa::new("kennel test CA")?;
    let cert = ca.server_cert("kennel test server")?;
    let files = tempfile::tempdir()?;
    let keys = cert.write(files.path())?;
    let extra = entry(&keys, json!({"handshakeTimeout": HANDSHAKE_SECS}));
    let cluster = tokio::task::spawn_blocking(move || {
        Cluster::start_opts(&ClusterOptions {
            connector_extra: extra,
            ..ClusterOptions::new(1, 1, 1)
        })
    })
    .await??;
    let (tcp, wss) = (cluster.client_addr(0), cluster.client_addr(1));
    ensure!(cluster.log("connector-server-1").contains("tcp+tls"));
    ensure!(cluster.log("connector-server-2").contains("wss"));
    let tls = ca.client_tls()?;

    // Two players, one over TLS TCP and one over wss, in one room.
    let a = connect(tcp, false, &tls).await.context("TLS TCP client")?;
    let b = connect(wss, true, &tls).await.context("wss client")?;
    for c in [&a, &b] {
        ensure!(c.handshake().peer_certificate.as_deref() == Some(&cert.der[..]));
    }
    let mut a_chat = join(&a, 1, 5).await?;
    let mut b_chat = join(&b, 2, 5).await?;
    chat(&a, "hello over tls", &mut [&mut a_chat, &mut b_chat]).await?;
    chat(&b, "hello over wss", &mut [&mut a_chat, &mut b_chat]).await?;

    // A plain TCP client on the TLS port: its handshake frame is not a ClientHello, so the
    // server closes at once (well within the handshake timeout).
    let start = Instant::now();
    let plain = Client::builder(tcp).connect().await;
    let took = start.elapsed();
    let err = plain.err().context("a plain TCP client got through")?;
    ensure!(
        matches!(&err, Error::Tls(m) if m.contains("this port speaks TLS")),
        "{err}"
    );
    ensure!(
        took < Duration::from_secs(HANDSHAKE_SECS),
        "{took:?}: {err}"
    );
    eprintln!("plain TCP client on the TLS port: {err} after {took:?}");
    cluster.wait_log("connector-server-1", "TLS handshake failed")?;

    // A plain WebSocket client on the wss port.
    let start = Instant::now();
    let err = Client::builder(wss).ws().connect().await.err();
    let err = err.context("a plain WebSocket client got through")?;
    eprintln!(
        "plain WebSocket client on the wss port: {err} after {:?}",
        start.elapsed()
    );
    ensure!(
        matches!(&err, Error::Handshake(m) if m.contains("is this a wss:// port?")),
        "{err}"
    );
    cluster.wait_log("connector-server-2", "TLS handshake failed")?;

    // A client that does not trust the certificate, and one that expects another name.
    let stranger = TestCa::new("another CA")?.client_tls()?;
    for (addr, ws) in [(tcp, false), (wss, true)] {
        let err = connect(addr, ws, &stranger).await.err();
        let err = err.context("a client trusting another CA got through")?;
        eprintln!("client trusting another CA: {err}");
        ensure!(
            matches!(&err, Error::Tls(m) if m.contains("UnknownIssuer")),
            "{err}"
        );
        let other_name = tls.clone().server_name("game.example.com");
        let err = connect(addr, ws, &other_name).await.err();
        let err = err.context("a client expecting another name got through")?;
        ensure!(
            matches!(&err, Error::Tls(m) if m.contains("not valid for name")),
            "{err}"
        );
    }
    cluster.wait_log("connector-server-1", "UnknownCA")?;

    // A socket that sends nothing is closed at the handshake timeout.
    let mut silent = TcpStream::connect(tcp).await?;
    let took = closed_after(&mut silent).await?;
    eprintln!("silent socket closed after {took:?}");
    ensure!(
        took >= Duration::from_secs(HANDSHAKE_SECS) - Duration::from_millis(500)
            && took < Duration::from_secs(HANDSHAKE_SECS * 2),
        "silent socket closed after {took:?}"
    );
    cluster.wait_log(
        "connector-server-1",
        "no TLS handshake within the handshake timeout",
    )?;

    // A ClientHello announced as 64 KiB: the server reads 16 KiB at most, then closes.
    for addr in [tcp, wss] {
        let mut big = TcpStream::connect(addr).await?;
        let mut hello = vec![22u8, 3, 1, 0x40, 0x00, 1, 0x00, 0xff, 0xff];
        hello.resize(5 + 16384, 0x41);
        let writer = async {
            for _ in 0..4 {
                if big.write_all(&hello).await.is_err() {
                    break;
                }
                hello[..5].copy_from_slice(&[22, 3, 1, 0x40, 0x00]);
                hello[5..9].fill(0x41);
            }
        };
        tokio::time::timeout(TIMEOUT, writer).await?;
        let took = closed_after(&mut big).await?;
        eprintln!("64 KiB ClientHello to {addr}: closed {took:?} after the writes");
        ensure!(took < Duration::from_secs(HANDSHAKE_SECS), "{took:?}");
    }
    cluster.wait_log(
        "connector-server-1",
        "more than 16384 bytes before the handshake",
    )?;
    cluster.wait_log(
        "connector-server-2",
        "more than 33792 bytes before the handshake",
    )?;

    // The players never noticed.
    chat(&a, "still here", &mut [&mut a_chat, &mut b_chat]).await?;
    chat(&b, "me too", &mut [&mut a_chat, &mut b_chat]).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_count_sockets_still_in_their_tls_handshake() -> Result<()> {
    let ca = TestCa::new("kennel test CA")?;
    let files = tempfile::tempdir()?;
    let keys = ca.server_cert("limits")?.write(files.path())?;
    let extra = entry(&keys, json!({"maxConnectionNum": 3}));
    let cluster = tokio::task::spawn_blocking(move || {
        Cluster::start_opts(&ClusterOptions {
            connector_extra: extra,
            ..ClusterOptions::new(1, 0, 1)
        })
    })
    .await??;
    let addr = cluster.client_addr(0);
    let tls = ca.client_tls()?;
    // Three sockets that never send a ClientHello hold every slot.
    let mut idle = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(&[22, 3, 1]).await?; // part of a record header: still handshaking
        idle.push(s);
    }
    let err = connect(addr, false, &tls).await.err();
    let err = err.context("a fourth client got in past maxConnectionNum 3")?;
    ensure!(
        matches!(&err, Error::Tls(m) if m.contains("the server closed the connection")),
        "{err}"
    );
    eprintln!("fourth client: {err}");
    cluster.wait_log("connector-server-1", "maxConnectionNum reached")?;
    drop(idle);
    // Their slots come back once the server sees them go.
    let deadline = Instant::now() + TIMEOUT;
    let c = loop {
        match connect(addr, false, &tls).await {
            Ok(c) => break c,
            Err(e) if Instant::now() < deadline => {
                eprintln!("not yet: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => bail!("no slot came back: {e}"),
        }
    };
    let v: Value = c.request("connector.main.echo", &json!({"n": 1})).await?;
    ensure!(v == json!({"n": 1}), "{v}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_swapped_on_disk_is_served_to_new_connections_while_old_ones_chat()
-> Result<()> {
    let ca = TestCa::new("kennel test CA")?;
    let (first, second) = (ca.server_cert("first")?, ca.server_cert("second")?);
    let files = tempfile::tempdir()?;
    let keys = first.write(files.path())?;
    // The TCP frontend reloads on command only; the wss one checks the files every second.
    let cluster = tokio::task::spawn_blocking(move || {
        Cluster::start_opts(&ClusterOptions {
            connector_extra: entry(&keys, json!({"certReload": 0})),
            ws_extra: json!({"certReload": 1}),
            ..ClusterOptions::new(1, 1, 1)
        })
    })
    .await??;
    let (tcp, wss) = (cluster.client_addr(0), cluster.client_addr(1));
    let tls = ca.client_tls()?;
    let a = connect(tcp, false, &tls).await?;
    let b = connect(wss, true, &tls).await?;
    let mut a_chat = join(&a, 1, 9).await?;
    let mut b_chat = join(&b, 2, 9).await?;

    // Renewed on disk: the wss frontend picks it up by itself, the TCP one waits.
    second.write(files.path())?;
    cluster.wait_log(
        "connector-server-2",
        "TLS certificate reloaded (the files changed)",
    )?;
    ensure!(
        served(wss, true, &ca).await? == second.der,
        "wss serves the new one"
    );
    ensure!(
        served(tcp, false, &ca).await? == first.der,
        "tcp waits for the command"
    );
    chat(&a, "during the renewal", &mut [&mut a_chat, &mut b_chat]).await?;

    let (ok, stdout) = reload_tls(&cluster);
    ensure!(ok, "reload-tls: {stdout}");
    for id in ["connector-server-1", "connector-server-2"] {
        ensure!(
            stdout.contains(&format!("{id}: new connections get CN=second")),
            "{stdout}"
        );
    }
    ensure!(
        served(tcp, false, &ca).await? == second.der,
        "tcp after reload-tls"
    );

    // A bad renewal (a key of another certificate; then an expired certificate) keeps the
    // certificate served, with the reason in the log and in the command's answer.
    let other = ca.server_cert("other")?;
    let mismatched = ServerCert {
        key_pem: other.key_pem.clone(),
        ..ca.server_cert("mismatched")?
    };
    mismatched.write(files.path())?;
    cluster.wait_log("connector-server-2", "does not match the certificate")?;
    let (ok, stdout) = reload_tls(&cluster);
    ensure!(!ok, "a bad reload-tls must fail: {stdout}");
    ensure!(
        stdout.contains("does not match the certificate")
            && stdout.contains("new connections still get the previous certificate"),
        "{stdout}"
    );
    ca.server_cert_valid("expired", 2001, 2002)?
        .write(files.path())?;
    cluster.wait_log("connector-server-2", "expired on")?;
    for (addr, ws) in [(tcp, false), (wss, true)] {
        ensure!(
            served(addr, ws, &ca).await? == second.der,
            "still the second"
        );
    }

    // The connections from before every swap still chat both ways.
    chat(&a, "after the swaps", &mut [&mut a_chat, &mut b_chat]).await?;
    chat(
        &b,
        "over the first session",
        &mut [&mut a_chat, &mut b_chat],
    )
    .await?;
    ensure!(a.handshake().peer_certificate.as_deref() == Some(&first.der[..]));
    Ok(())
}

/// Writes a one-frontend project into `dir` whose frontend entry has `keys`.
fn project(dir: &Path, keys: &Value) -> Result<()> {
    let sys = dir.join("config/sys");
    std::fs::create_dir_all(&sys)?;
    let master =
        json!({"test": {"id": "master-server-1", "host": "127.0.0.1", "port": free_port()}});
    let frontend = entry(
        keys,
        json!({"id": "connector-server-1", "host": "127.0.0.1", "port": free_port(),
            "frontend": true, "clientPort": free_port(), "connector": "ws"}),
    );
    let chat = json!({"id": "chat-server-1", "host": "127.0.0.1", "port": free_port()});
    let servers = json!({"test": {"connector": [frontend], "chat": [chat]}});
    std::fs::write(sys.join("master.json"), master.to_string())?;
    std::fs::write(sys.join("servers.json"), servers.to_string())?;
    std::fs::write(sys.join("route.json"), json!(ROUTES).to_string())?;
    Ok(())
}

#[test]
fn kennel_config_and_start_refuse_bad_tls_files() -> Result<()> {
    let ca = TestCa::new("kennel test CA")?;
    let good = ca.server_cert("good")?;
    let other = ca.server_cert("other")?;
    let expired = ca.server_cert_valid("expired", 2001, 2002)?;
    let cases: [(&str, ServerCert, &str, &str); 3] = [
        (
            "a key of another certificate",
            ServerCert {
                key_pem: other.key_pem.clone(),
                ..ca.server_cert("good")?
            },
            "key",
            "does not match the certificate",
        ),
        ("an expired certificate", expired, "cert", "expired on"),
        ("a missing file", good, "cert", "cannot read"),
    ];
    for (what, cert, key, needle) in cases {
        let dir = tempfile::tempdir()?;
        let keys = cert.write(&dir.path().join("tls"))?;
        let cert_file = dir.path().join("tls/cert.pem");
        let named = if what == "a missing file" {
            std::fs::remove_file(&cert_file)?;
            cert_file.clone()
        } else if key == "key" {
            dir.path().join("tls/key.pem")
        } else {
            cert_file.clone()
        };
        project(dir.path(), &keys)?;
        for command in ["config", "start"] {
            let mut cmd = Command::new(bin("chat-demo"));
            cmd.args([command, "--dir"])
                .arg(dir.path())
                .args(["-e", "test"]);
            for var in integration_tests::cluster::KENNEL_ENV {
                cmd.env_remove(var);
            }
            let out = run_bounded(cmd, &format!("chat-demo {command}"), TIMEOUT)?;
            let stderr = String::from_utf8_lossy(&out.stderr);
            ensure!(
                !out.status.success(),
                "{command} with {what} succeeded: {stderr}"
            );
            for part in [
                "servers.json",
                "environment \"test\"",
                "entry connector[0] (\"connector-server-1\")",
                &format!("`{key}`"),
                &named.display().to_string(),
                needle,
            ] {
                ensure!(
                    stderr.contains(part),
                    "{command} with {what}: {part:?} not in {stderr}"
                );
            }
            ensure!(
                servers_in(dir.path()).is_empty(),
                "{command} with {what} started a server"
            );
        }
    }
    Ok(())
}
