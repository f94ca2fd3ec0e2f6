//! The TCP connector of a frontend: accepts game clients and runs each connection's lifecycle
//! (PROTOCOL.md): pre-handshake limits, handshake (md5 of the route list), heartbeat, frames to
//! routing, and the close path (flush queued frames, `client off` callbacks, unbind).

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use kennel_proto::client::{self, ClientCodec, Frame, HandshakeReply, HandshakeRequest};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::App;
use crate::frontend::{Conn, SEND_QUEUE};
use crate::session::Session;

/// Frontend connector settings (mydog's `connector` config).
#[derive(Debug, Clone)]
pub struct ConnectorConfig {
    /// Heartbeat interval in seconds announced to clients; a client silent for twice this long
    /// is closed. 0 turns heartbeats off.
    pub heartbeat: u64,
    /// Largest frame `len` a client may send (type byte + body).
    pub max_len: usize,
    /// Connections beyond this are closed at once.
    pub max_connections: usize,
    /// A client that has not completed its handshake by then is closed.
    pub handshake_timeout: Duration,
    /// Disable Nagle's algorithm on client sockets.
    pub no_delay: bool,
}

impl Default for ConnectorConfig {
    fn default() -> Self {
        ConnectorConfig {
            heartbeat: 60,
            max_len: client::DEFAULT_MAX_LEN,
            max_connections: 20_000,
            handshake_timeout: Duration::from_secs(10),
            no_delay: true,
        }
    }
}

/// Accepts clients until `shutdown`.
pub(crate) async fn accept_loop(app: App, listener: TcpListener, shutdown: CancellationToken) {
    loop {
        let (stream, addr) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    warn!(cause = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let cfg = app.connector_config();
        if app.inner.frontend.count() >= cfg.max_connections {
            warn!(%addr, max = cfg.max_connections, "maxConnectionNum reached: closing new client");
            drop(stream);
            continue;
        }
        let app = app.clone();
        tokio::spawn(async move {
            if let Err(reason) = serve(app, stream, addr.ip().to_string()).await {
                debug!(%addr, %reason, "client closed");
            }
        });
    }
}

/// Runs one client connection to its end. Returns why it closed.
async fn serve(app: App, stream: TcpStream, ip: String) -> Result<(), String> {
    let cfg = app.connector_config();
    let _ = stream.set_nodelay(cfg.no_delay);
    let (rd, wr) = stream.into_split();
    // Before the handshake: one frame of at most 50 bytes of body.
    let codec = ClientCodec::new(1 + client::PRE_HANDSHAKE_MAX_BODY);
    let mut reader = FramedRead::with_capacity(rd, codec, 256);

    let first = tokio::time::timeout(cfg.handshake_timeout, reader.next())
        .await
        .map_err(|_| "no handshake within the timeout".to_string())?;
    let body = match first {
        Some(Ok(Frame::Handshake(body))) => body,
        Some(Ok(other)) => return Err(format!("expected a handshake, got {other:?}")),
        Some(Err(e)) => return Err(format!("before handshake: {e}")),
        None => return Err("closed before handshake".into()),
    };
    let req: HandshakeRequest =
        serde_json::from_slice(&body).map_err(|e| format!("bad handshake JSON: {e}"))?;
    reader.decoder_mut().set_max_len(cfg.max_len);

    let (tx, rx) = mpsc::channel::<Bytes>(SEND_QUEUE);
    let conn = Arc::new(Conn::new(app.inner.frontend.next_id(), tx));
    let session = Session::frontend(
        app.id().to_string(),
        conn.clone(),
        ip,
        Arc::downgrade(&app.inner.frontend),
    );
    conn.send(handshake_reply(&app, &req, cfg.heartbeat));
    let writer = tokio::spawn(write_loop(wr, rx, conn.closing.clone()));
    app.inner.frontend.add(session.clone());
    app.client_on(&session).await;

    let result = read_loop(&app, &session, &mut reader, cfg.heartbeat).await;

    app.inner.frontend.remove(&session);
    conn.close();
    drop(conn);
    app.client_off(&session).await;
    drop(session);
    let _ = writer.await;
    result
}

fn handshake_reply(app: &App, req: &HandshakeRequest, heartbeat: u64) -> Bytes {
    let md5 = app.inner.route_md5.clone();
    let route = (req.md5 != md5).then(|| app.inner.route_names.clone());
    let reply = HandshakeReply {
        md5,
        heartbeat,
        route,
    };
    let body = serde_json::to_vec(&reply).expect("handshake reply serializes");
    let mut b = BytesMut::with_capacity(5 + body.len());
    client::put_frame(&mut b, client::TYPE_HANDSHAKE, &body);
    b.freeze()
}

async fn read_loop(
    app: &App,
    session: &Session,
    reader: &mut FramedRead<tokio::net::tcp::OwnedReadHalf, ClientCodec>,
    heartbeat: u64,
) -> Result<(), String> {
    let conn = session.conn().expect("frontend session").clone();
    let limit = if heartbeat > 0 {
        Duration::from_secs(2 * heartbeat)
    } else {
        Duration::MAX
    };
    let silent = tokio::time::sleep(limit.min(Duration::from_secs(100 * 365 * 86400)));
    tokio::pin!(silent);
    loop {
        let frame = tokio::select! {
            _ = conn.closing.cancelled() => return Ok(()),
            _ = &mut silent => return Err(format!("no heartbeat for {} s", limit.as_secs())),
            f = reader.next() => f,
        };
        match frame {
            None => return Ok(()),
            Some(Err(e)) => {
                warn!(conn = conn.id, ip = session.ip(), cause = %e, "bad client frame: closing");
                return Err(e.to_string());
            }
            Some(Ok(Frame::Heartbeat)) => {
                if heartbeat > 0 {
                    silent.as_mut().reset(tokio::time::Instant::now() + limit);
                }
                conn.send(client::heartbeat_frame());
            }
            Some(Ok(Frame::Message { cmd, payload })) => {
                if let Err(e) = app.route_client_message(session, cmd, payload).await {
                    warn!(conn = conn.id, ip = session.ip(), cmd, "{e}: closing");
                    return Err(e);
                }
            }
            Some(Ok(Frame::Handshake(_))) => {
                warn!(conn = conn.id, "second handshake: closing");
                return Err("second handshake".into());
            }
        }
    }
}

/// Writes queued frames, coalescing whatever is queued into one write. On `closing` it writes
/// what is still queued, then shuts the socket down.
async fn write_loop(
    mut wr: OwnedWriteHalf,
    mut rx: mpsc::Receiver<Bytes>,
    closing: CancellationToken,
) {
    let mut buf = BytesMut::new();
    loop {
        let first = tokio::select! {
            biased;
            f = rx.recv() => match f { Some(f) => f, None => break },
            _ = closing.cancelled() => {
                while let Ok(f) = rx.try_recv() {
                    buf.extend_from_slice(&f);
                }
                if !buf.is_empty() {
                    let _ = tokio::time::timeout(Duration::from_secs(5), wr.write_all(&buf)).await;
                }
                break;
            }
        };
        let res = if rx.is_empty() {
            wr.write_all(&first).await
        } else {
            buf.extend_from_slice(&first);
            while buf.len() < 64 * 1024 {
                match rx.try_recv() {
                    Ok(f) => buf.extend_from_slice(&f),
                    Err(_) => break,
                }
            }
            let r = wr.write_all(&buf).await;
            buf.clear();
            r
        };
        if res.is_err() {
            closing.cancel();
            return;
        }
    }
    let _ = wr.shutdown().await;
}

/// Logs where clients connect.
pub(crate) fn log_listening(app: &App, addr: &std::net::SocketAddr) {
    info!(id = app.id(), %addr, "accepting game clients (tcp)");
}
