//! The browser chat page's HTTP side: a WebSocket frontend whose `servers.json` entry has
//! `"web": <port>` serves the files of `web/` (the page, `kennel.js`, `chat.js`) on that port,
//! plus `/config.json`, which tells the page where this frontend's WebSocket clients connect.
//!
//! Keys of the entry: `web` (port; 0 = any free port), `webDir` (the folder served, relative to
//! the project dir; default `web`), `webHost` (address to bind; default the entry's `host`).
//! Only `GET`/`HEAD` of files inside that folder are answered (tower-http's `ServeDir`: paths
//! with `..` or outside the folder get 404, other methods 405).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use kennel::App;
use serde_json::{Value, json};
use tokio::net::TcpListener;
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

/// The page's URL for a bound address (wildcards shown as 127.0.0.1).
pub fn page_url(addr: SocketAddr) -> String {
    let ip = if addr.ip().is_unspecified() {
        "127.0.0.1".to_string()
    } else if addr.is_ipv6() {
        format!("[{}]", addr.ip())
    } else {
        addr.ip().to_string()
    };
    format!("http://{ip}:{}/", addr.port())
}

/// Binds the page's port, logs `chat page at http://...`, and serves it in a task for the
/// rest of the process.
pub async fn start(cfg: WebConfig) -> Result<SocketAddr> {
    let listener = cfg.bind().await?;
    let addr = listener.local_addr()?;
    let router = cfg.router();
    tracing::info!(dir = %cfg.dir.display(), "chat page at {}", page_url(addr));
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::error!("chat page server stopped: {e}");
        }
    });
    Ok(addr)
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
            page_url("0.0.0.0:4080".parse().unwrap()),
            "http://127.0.0.1:4080/"
        );
        assert_eq!(
            page_url("[::1]:4080".parse().unwrap()),
            "http://[::1]:4080/"
        );
    }
}
