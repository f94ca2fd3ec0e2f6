//! A TCP proxy for tests of the internal links: forwards to a port on 127.0.0.1, records every
//! byte both ways, and on request flips one bit of the next chunk from the dialer. Also
//! compiled into the worker's own peer-mesh tests (`worker/src/mesh/wire_tests.rs`, by path),
//! so it uses tokio only.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};

/// A running proxy (its tasks end with the runtime).
pub struct Proxy {
    /// The port it listens on.
    pub port: u16,
    /// Every byte forwarded, both directions interleaved.
    pub seen: Arc<Mutex<Vec<u8>>>,
    /// Set: the next chunk from the dialer gets its last bit flipped (then it is cleared).
    pub tamper: Arc<AtomicBool>,
    /// Connections forwarded so far.
    pub connections: Arc<AtomicUsize>,
}

impl Proxy {
    /// Listens on a free port of 127.0.0.1, forwarding to `upstream` there. A connection whose
    /// upstream refuses is closed (the dialer sees a failed dial).
    pub async fn start(upstream: u16) -> Proxy {
        let l = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let p = Proxy {
            port: l.local_addr().expect("proxy address").port(),
            seen: Arc::default(),
            tamper: Arc::default(),
            connections: Arc::default(),
        };
        let (seen, tamper, n) = (p.seen.clone(), p.tamper.clone(), p.connections.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = l.accept().await {
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                    continue;
                };
                n.fetch_add(1, Ordering::SeqCst);
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pump(cr, sw, seen.clone(), Some(tamper.clone())));
                tokio::spawn(pump(sr, cw, seen.clone(), None));
            }
        });
        p
    }

    /// Whether `needle` crossed the proxy (within one read of it: a short string does).
    pub fn saw(&self, needle: &[u8]) -> bool {
        let seen = self.seen.lock().unwrap();
        seen.windows(needle.len()).any(|w| w == needle)
    }
}

async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    seen: Arc<Mutex<Vec<u8>>>,
    tamper: Option<Arc<AtomicBool>>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        seen.lock().unwrap().extend_from_slice(&buf[..n]);
        if let Some(t) = &tamper
            && n > 2
            && t.swap(false, Ordering::SeqCst)
        {
            // On an encrypted link a chunk's last byte is a record's ciphertext or tag, never
            // its length prefix.
            buf[n - 1] ^= 0x01;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}
