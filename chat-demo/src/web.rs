//! The browser chat page's HTTP side: a WebSocket frontend whose `servers.json` entry has
//! `"web": <port>` serves the files of `web/` (the page, `kennel.js`, `chat.js`) on that port,
//! plus `/config.json`, which tells the page where this frontend's WebSocket clients connect.
//!
//! Keys of the entry: `web` (port; 0 = any free port), `webDir` (the folder served, relative to
//! the project dir; default `web`), `webHost` (address to bind; default the entry's `host`).
//! Only `GET`/`HEAD` of files inside that folder are answered (tower-http's `ServeDir`: paths
//! with `..` or outside the folder get 404, other methods 405).
//!
//! When the entry has `"ssl": true` the page is served over https with the frontend's own
//! certificate ([`kennel::App::client_tls`], reloaded with it), and the page connects with
//! `wss://` (`kennel.js`'s `frontendUrl`). TLS handshakes run in their own tasks, each within
//! [`TLS_HANDSHAKE_TIMEOUT`], so a slow client holds up nobody.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use kennel::tokio_rustls::server::TlsStream;
use kennel::{App, TlsAcceptor};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tower_http::services::ServeDir;

/// Where and what the page server serves, read from this server's config entry.
#[derive(Debug, Clone, PartialEq)]
pub struct WebConfig {
    /// `host:port` to bind.
    pub bind: String,
    /// The folder served.
    pub dir: PathBuf,
    /// Body of `/config.json`.
    pub page_config: Value,
}

impl WebConfig {
    /// Reads the `web*` keys of this server's entry: `None` when there is no `web` key; an
    /// error naming the server and the key when a value is wrong or this server is not a
    /// WebSocket frontend (a browser cannot speak the TCP transport).
    pub fn from_app(app: &App) -> Result<Option<WebConfig>> {
        let me = app.my_info();
        let Some(port) = me.extra.get("web") else {
            return Ok(None);
        };
        let id = &me.id;
        let Some(port) = port.as_u64().and_then(|p| u16::try_from(p).ok()) else {
            bail!("{id}: \"web\" must be a port number (0-65535), not {port}");
        };
        let transport = me.extra.get("connector").and_then(Value::as_str);
        let client_port = match (me.frontend, me.client_port, transport) {
            (true, Some(p), Some("ws" | "websocket")) => p,
            _ => bail!(
                "{id}: \"web\" serves a page that talks WebSocket; put it on a frontend with \
                 \"connector\": \"ws\""
            ),
        };
        let text = |key: &str, default: &str| -> Result<String> {
            match me.extra.get(key) {
                None => Ok(default.to_string()),
                Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
                Some(v) => bail!("{id}: \"{key}\" must be a non-empty string, not {v}"),
            }
        };
        let dir = app.dir().join(text("webDir", "web")?);
        let dir = dir.canonicalize().unwrap_or(dir);
        if !dir.join("index.html").is_file() {
            bail!(
                "{id}: \"webDir\" {} holds no index.html (the chat page)",
                dir.display()
            );
        }
        let host = text("webHost", &me.host)?;
        // A wildcard client host means "the host the page was loaded from".
        let ws_host = match me.host.as_str() {
            "0.0.0.0" | "::" | "[::]" | "" => Value::Null,
            h => json!(h),
        };
        Ok(Some(WebConfig {
            bind: join_host_port(&host, port),
            dir,
            page_config: json!({"server": id, "ws": {"host": ws_host, "port": client_port}}),
        }))
    }

    /// Binds the page's port; the error names the address.
    pub async fn bind(&self) -> Result<TcpListener> {
        TcpListener::bind(&self.bind)
            .await
            .with_context(|| format!("chat page: cannot listen on {}", self.bind))
    }

    /// The router: `/config.json`, then the files of [`WebConfig::dir`].
    pub fn router(&self) -> Router {
        let page_config = self.page_config.to_string();
        Router::new()
            .route(
                "/config.json",
                get(move || async move {
                    (
                        [
                            (header::CONTENT_TYPE, "application/json"),
                            (header::CACHE_CONTROL, "no-store"),
                        ],
                        page_config,
                    )
                        .into_response()
                }),
            )
            .fallback_service(ServeDir::new(&self.dir))
    }
}

/// `host:port`, bracketing a bare IPv6 host.
fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The page's URL for a bound address (wildcards shown as 127.0.0.1): `https://` with `tls`.
pub fn page_url(addr: SocketAddr, tls: bool) -> String {
    let ip = if addr.ip().is_unspecified() {
        "127.0.0.1".to_string()
    } else if addr.is_ipv6() {
        format!("[{}]", addr.ip())
    } else {
        addr.ip().to_string()
    };
    let scheme = if tls { "https" } else { "http" };
    format!("{scheme}://{ip}:{}/", addr.port())
}

/// Binds the page's port, logs `chat page at http(s)://...`, and serves it in a task for the
/// rest of the process (over TLS with `tls`).
pub async fn start(cfg: WebConfig, tls: Option<TlsAcceptor>) -> Result<SocketAddr> {
    let listener = cfg.bind().await?;
    let addr = listener.local_addr()?;
    let router = cfg.router();
    tracing::info!(dir = %cfg.dir.display(), "chat page at {}", page_url(addr, tls.is_some()));
    tokio::spawn(async move {
        let served = match tls {
            None => axum::serve(listener, router).await,
            Some(tls) => axum::serve(TlsListener::new(listener, tls, addr), router).await,
        };
        if let Err(e) = served {
            tracing::error!("chat page server stopped: {e}");
        }
    });
    Ok(addr)
}

/// How long a page client's TLS handshake may take.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// TLS handshakes done and waiting for the HTTP server at most.
const HANDSHAKEN_QUEUE: usize = 64;

/// A listener whose connections have done their TLS handshake: a task accepts and runs each
/// handshake in a task of its own (within [`TLS_HANDSHAKE_TIMEOUT`]).
struct TlsListener {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    fn new(listener: TcpListener, tls: TlsAcceptor, local: SocketAddr) -> TlsListener {
        let (tx, rx) = mpsc::channel(HANDSHAKEN_QUEUE);
        tokio::spawn(async move {
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!("chat page: accept failed: {e}; retrying");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let (tls, tx) = (tls.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, tls.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let _ = tx.send((stream, peer)).await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, "chat page: TLS handshake failed: {e}")
                        }
                        Err(_) => tracing::debug!(%peer, "chat page: no TLS handshake in time"),
                    }
                });
            }
        });
        TlsListener { rx, local }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(x) => x,
            // The accepting task ended (never, short of a panic): accept nothing more.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_and_urls() {
        assert_eq!(join_host_port("127.0.0.1", 80), "127.0.0.1:80");
        assert_eq!(join_host_port("::1", 80), "[::1]:80");
        assert_eq!(join_host_port("[::1]", 80), "[::1]:80");
        assert_eq!(
            page_url("0.0.0.0:4080".parse().unwrap(), false),
            "http://127.0.0.1:4080/"
        );
        assert_eq!(
            page_url("[::1]:4080".parse().unwrap(), true),
            "https://[::1]:4080/"
        );
    }
}
