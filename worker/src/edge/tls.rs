//! TLS for game clients (a frontend entry's `"ssl": true` with `cert` and `key`): wss, or TLS
//! carrying the TCP frame protocol. rustls on the ring provider.
//!
//! - [`ClientCerts`] is the certificate new connections get: a rustls `ResolvesServerCert`
//!   holding the current chain and key, read again when the files' modification times change
//!   (checked every `certReload` seconds by [`watch`]) or on `kennel send reload-tls`
//!   ([`RELOAD_TLS`]). A file that does not pass the load-time checks (PEM, key matching the
//!   certificate, valid now) keeps the previous certificate and logs why; connections already
//!   open keep their session either way, so a renewal drops nobody.
//! - [`accept`] runs the TLS handshake of one client over a socket capped in bytes before the
//!   handshake ([`Capped`]), within the connection's handshake deadline; the stream it gives
//!   ([`TlsStream`]) carries that deadline on to the WebSocket upgrade and the kennel handshake
//!   and lifts the cap once the kennel handshake is done. Its state is boxed: a TLS connection
//!   costs the task one pointer, and the plain paths nothing.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use kennel_config::settings::{TlsSettings, read_cert_and_key};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::edge::wire::{Capped, ClientStream};

/// The `kennel send` command that reloads the certificate now (`kennel send --type connector
/// reload-tls`); kennel answers it before the game's `on_cli_send` handler.
pub const RELOAD_TLS: &str = "reload-tls";

/// Bytes a TLS client may send before its kennel handshake over TCP: the TLS handshake (a
/// ClientHello is 0.5-2 KiB; post-quantum key shares included) and the first frame.
pub(crate) const TLS_PRE_HANDSHAKE_BYTES: usize = 16 * 1024;

/// Over wss: the TLS handshake, then the WebSocket upgrade's own budget in TLS records.
pub(crate) const WSS_PRE_HANDSHAKE_BYTES: usize =
    TLS_PRE_HANDSHAKE_BYTES + crate::edge::wire::WS_PRE_HANDSHAKE_BYTES + 1024;

/// The modification times of the certificate and key files (`None`: unreadable).
type Stamp = (Option<SystemTime>, Option<SystemTime>);

/// The certificate and key a TLS frontend serves, reloaded from their files.
pub struct ClientCerts {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
    /// The files' times when they were last read (loaded or refused).
    seen: Mutex<Stamp>,
}

impl std::fmt::Debug for ClientCerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCerts")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl ClientCerts {
    /// Reads the certificate and key `tls` names (paths already absolute).
    pub(crate) fn load(tls: &TlsSettings) -> Result<ClientCerts, String> {
        let seen = stamp(&tls.cert, &tls.key);
        let got =
            read_cert_and_key(&tls.cert, &tls.key, SystemTime::now()).map_err(|e| e.to_string())?;
        info!(cert = %tls.cert.display(), "TLS for clients: serving {}", got.describe());
        Ok(ClientCerts {
            cert: tls.cert.clone(),
            key: tls.key.clone(),
            current: RwLock::new(got.certified),
            seen: Mutex::new(seen),
        })
    }

    /// Reads the files again if their modification times changed since they were last read:
    /// `None` when they did not.
    pub(crate) fn check(&self) -> Option<Result<String, String>> {
        let now = stamp(&self.cert, &self.key);
        if *self.seen.lock().unwrap() == now {
            return None;
        }
        Some(self.read_again(now, "the files changed"))
    }

    /// Reads the files again now (`kennel send reload-tls`): what new connections get, or why
    /// the previous certificate is kept.
    pub(crate) fn reload(&self) -> Result<String, String> {
        self.read_again(stamp(&self.cert, &self.key), RELOAD_TLS)
    }

    fn read_again(&self, seen: Stamp, why: &str) -> Result<String, String> {
        // The times are taken before the read: a file written meanwhile is read again next time.
        *self.seen.lock().unwrap() = seen;
        match read_cert_and_key(&self.cert, &self.key, SystemTime::now()) {
            Ok(got) => {
                *self.current.write().unwrap() = got.certified.clone();
                let what = format!("new connections get {}", got.describe());
                info!(cert = %self.cert.display(), "TLS certificate reloaded ({why}): {what}");
                Ok(what)
            }
            Err(e) => {
                let what = format!("{e}; new connections still get the previous certificate");
                error!(cert = %self.cert.display(), "TLS certificate not reloaded ({why}): {what}");
                Err(what)
            }
        }
    }

    /// The acceptor of this frontend's TLS clients (and of anything else that serves the same
    /// certificate, such as a game's web page).
    pub(crate) fn acceptor(self: &Arc<Self>) -> TlsAcceptor {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("the ring provider supports the default TLS versions")
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        TlsAcceptor::from(Arc::new(config))
    }
}

impl ResolvesServerCert for ClientCerts {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().unwrap().clone())
    }
}

fn stamp(cert: &std::path::Path, key: &std::path::Path) -> Stamp {
    let mtime = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    (mtime(cert), mtime(key))
}

/// Checks the files every `period` until `shutdown` (a change reloads them).
pub(crate) async fn watch(certs: Arc<ClientCerts>, period: Duration, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {
                // Logged by `check`; a blocking read of two small files.
                let _ = certs.check();
            }
        }
    }
}

/// A client's TLS stream after its TLS handshake, over a socket capped at `LIMIT` bytes until
/// the kennel handshake is done; carries the connection's handshake deadline.
pub(crate) struct TlsStream<const LIMIT: usize>(Box<Tls<LIMIT>>);

struct Tls<const LIMIT: usize> {
    io: tokio_rustls::server::TlsStream<Capped<LIMIT>>,
    deadline: Instant,
}

/// The TLS handshake of the client on `stream`, by `deadline`; `None` (logged) when it failed.
pub(crate) async fn accept<const LIMIT: usize>(
    acceptor: &TlsAcceptor,
    stream: TcpStream,
    addr: SocketAddr,
    deadline: Instant,
) -> Option<TlsStream<LIMIT>> {
    // Boxed: the handshake's state is freed once it is done.
    let handshake = Box::pin(tokio::time::timeout_at(
        deadline,
        acceptor.accept(Capped::<LIMIT>::new(stream)),
    ));
    let reason = match handshake.await {
        Ok(Ok(io)) => return Some(TlsStream(Box::new(Tls { io, deadline }))),
        // A client that just leaves (a port check, a player closing the tab) stays at debug.
        Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
            format!("closed during the TLS handshake: {e}")
        }
        Ok(Err(e)) => {
            warn!(ip = %addr.ip(), cause = %e, "TLS handshake failed: closing");
            format!("TLS handshake failed: {e}")
        }
        Err(_) => {
            warn!(ip = %addr.ip(), "no TLS handshake within the handshake timeout: closing");
            "no TLS handshake within the handshake timeout".into()
        }
    };
    debug!(%addr, %reason, "client closed");
    None
}

impl<const LIMIT: usize> ClientStream for TlsStream<LIMIT> {
    fn lift(&mut self) {
        self.0.io.get_mut().0.lift();
    }

    fn holds_output(&self) -> bool {
        self.0.io.get_ref().1.wants_write()
    }

    fn handshake_deadline(&self) -> Option<Instant> {
        Some(self.0.deadline)
    }
}

impl<const LIMIT: usize> AsyncRead for TlsStream<LIMIT> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0.io).poll_read(cx, buf)
    }
}

impl<const LIMIT: usize> AsyncWrite for TlsStream<LIMIT> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0.io).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }
}
