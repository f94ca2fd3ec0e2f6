//! The peer mesh over real sockets, two meshes in one process with a test TCP proxy between
//! the dialer and the acceptor's port (the address a dialer uses is whatever discovery says,
//! so here the proxy's): what crosses the link, a bit flipped on it, and a plain server
//! dialing an encrypting one.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kennel_proto::msg::{ClientPush, ClientRequest, RpcRequest, SessionApply};
use serde_json::Map;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::RpcError;
use crate::mesh::link::Link;
use crate::mesh::rpc_config::RpcConfig;
use crate::mesh::{Mesh, PeerHandler, ServerInfo, io};
use crate::stats::Stats;

const WAIT: Duration = Duration::from_secs(10);

/// Answers every call with its own arguments.
#[derive(Clone)]
struct Echo;

impl PeerHandler for Echo {
    fn client_message(&self, _: &Arc<Link>, _: ClientRequest) {}
    fn push(&self, _: &Link, _: ClientPush) {}
    fn call(&self, link: &Arc<Link>, req: RpcRequest) {
        link.answer(req.id, &req.route, Ok(req.args));
    }
    fn apply(&self, _: &Link, _: SessionApply) {}
}

fn info(id: &str, port: u16) -> ServerInfo {
    ServerInfo {
        id: id.into(),
        server_type: "room".into(),
        host: "127.0.0.1".into(),
        port,
        frontend: false,
        client_port: None,
        extra: Map::new(),
    }
}

fn mesh(id: &str, port: u16, encrypt: bool) -> Arc<Mesh> {
    let cfg = RpcConfig {
        reconnect_delay: Duration::from_millis(50),
        timeout: Duration::from_secs(5),
        ..RpcConfig::default()
    };
    let secret = b"a-unit-test-secret-of-some-length".to_vec();
    let stats = Arc::new(Stats::default());
    Arc::new(Mesh::new(
        info(id, port),
        secret,
        encrypt,
        cfg,
        stats,
        CancellationToken::new(),
    ))
}

/// The integration tests' proxy (tokio only), compiled here too.
#[path = "../../../integration-tests/src/proxy.rs"]
mod proxy;
use proxy::Proxy;

/// Log lines of this test's thread (the runtime is single-threaded: every task logs here).
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn capture() -> (Logs, tracing::subscriber::DefaultGuard) {
        let logs = Logs::default();
        let w = logs.clone();
        let sub = tracing_subscriber::fmt()
            .with_writer(move || w.clone())
            .with_ansi(false)
            .finish();
        (logs, tracing::subscriber::set_default(sub))
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    async fn wait_for(&self, needle: &str) {
        let deadline = Instant::now() + WAIT;
        while !self.text().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "no log line with {needle:?}; logged:\n{}",
                self.text()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// `room-1` dialing `room-2` through a proxy; the acceptor's shutdown token.
async fn pair(dialer_encrypts: bool, acceptor_encrypts: bool) -> (Arc<Mesh>, Proxy) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let b = mesh("room-2", port, acceptor_encrypts);
    tokio::spawn(io::accept_loop(b, Echo, l, CancellationToken::new()));
    let p = Proxy::start(port).await;
    let a = mesh("room-1", 1, dialer_encrypts);
    // Discovery says room-2 is at the proxy.
    a.add(info("room-2", p.port), &Echo);
    (a, p)
}

async fn echo(a: &Mesh, body: &'static [u8]) -> Result<Bytes, RpcError> {
    let route = "room.secretRemote.marker";
    let call = a.call(
        "room-2",
        route,
        Bytes::from_static(body),
        Instant::now(),
        WAIT,
    );
    // No sweep of expired calls runs here: a call that is never answered hangs.
    tokio::time::timeout(WAIT, call)
        .await
        .expect("the call is answered or fails within its timeout")
}

#[tokio::test]
async fn an_encrypted_link_carries_no_plaintext_and_a_plain_one_does() {
    for encrypt in [false, true] {
        let (a, p) = pair(encrypt, encrypt).await;
        let got = echo(&a, b"PAYLOAD-7f3a hello room").await.unwrap();
        assert_eq!(&got[..], b"PAYLOAD-7f3a hello room");
        // The handshake's ids are in clear either way; what follows is not, when encrypted.
        assert!(p.saw(b"room-2"));
        for marker in [&b"PAYLOAD-7f3a"[..], b"room.secretRemote.marker"] {
            assert_eq!(
                p.saw(marker),
                !encrypt,
                "{} on a link with encryption {}",
                String::from_utf8_lossy(marker),
                if encrypt { "on" } else { "off" }
            );
        }
    }
}

#[tokio::test]
async fn a_flipped_bit_closes_the_link_with_a_decrypt_error_and_the_dialer_redials() {
    let (logs, _guard) = Logs::capture();
    let (a, p) = pair(true, true).await;
    assert_eq!(&echo(&a, b"before").await.unwrap()[..], b"before");
    let first = a.peers.link_of("room-2").unwrap().generation;
    // The next record from the dialer (this call) arrives with one bit flipped: the acceptor
    // closes the link, and the call in flight fails as on any dropped link.
    p.tamper.store(true, Ordering::SeqCst);
    let r = echo(&a, b"tampered").await;
    assert_eq!(r, Err(RpcError::LinkDropped("room-2".into())));
    logs.wait_for("failed to decrypt").await;
    assert!(
        logs.text().contains("bad message on peer link: closing it"),
        "{}",
        logs.text()
    );
    // The dialer redials; the new link carries calls again.
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(l) = a.peers.link_of("room-2")
            && l.generation != first
        {
            break;
        }
        assert!(Instant::now() < deadline, "no new link to room-2");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(&echo(&a, b"after").await.unwrap()[..], b"after");
}

#[tokio::test]
async fn a_plain_server_and_an_encrypting_one_refuse_each_other_with_a_clear_reason() {
    for (dialer, acceptor) in [(false, true), (true, false)] {
        let (logs, _guard) = Logs::capture();
        let (a, _p) = pair(dialer, acceptor).await;
        // Both sides say why, naming the setting; neither hangs.
        logs.wait_for("peer link refused").await;
        logs.wait_for("refused this link before proving it knows the secret")
            .await;
        let text = logs.text();
        assert!(
            text.contains("`encryptLinks` in master.json differs"),
            "{text}"
        );
        assert!(a.peers.link_of("room-2").is_none());
    }
}
