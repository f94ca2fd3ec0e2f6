//! The high-level [`Client`]: a cloneable handle over one connection with a reader task and a
//! writer task, requests matched to replies by cmd (FIFO per cmd, as mydog answers them),
//! notifications, push handlers and push streams, heartbeats, and a timeout on every request.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use kennel_proto::client::{Frame, TYPE_HEARTBEAT, put_frame};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::conn::{
    Connection, FrameReader, FrameWriter, Handshake, Options, RouteCache, Routes, Transport,
    encode_json,
};
use crate::error::{Error, Result};

/// Configures and opens a [`Client`] (or a raw [`Connection`]).
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    addr: String,
    opts: Options,
}

impl ClientBuilder {
    /// A builder for `addr` (`host:port`) with [`Options::default`].
    pub fn new(addr: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            addr: addr.into(),
            opts: Options::default(),
        }
    }

    /// Connects over TLS (TCP: TLS carrying the frames; WebSocket: `wss://addr/`), trusting
    /// what `tls` trusts.
    pub fn tls(mut self, tls: crate::TlsOptions) -> Self {
        self.opts.tls = Some(tls);
        self
    }

    /// Speaks WebSocket (`ws://addr/`) instead of TCP.
    pub fn ws(mut self) -> Self {
        self.opts.transport = Transport::Ws;
        self
    }

    /// Chooses the transport.
    pub fn transport(mut self, t: Transport) -> Self {
        self.opts.transport = t;
        self
    }

    /// Limit for each request's reply (default 10 s).
    pub fn request_timeout(mut self, d: Duration) -> Self {
        self.opts.request_timeout = d;
        self
    }

    /// Limit for connect + handshake (default 10 s).
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.opts.connect_timeout = d;
        self
    }

    /// Sends heartbeats every `d` instead of the server's interval (`ZERO` = never), and treats
    /// `2 * d` of silence as a dead connection.
    pub fn heartbeat(mut self, d: Duration) -> Self {
        self.opts.heartbeat_override = Some(d);
        self
    }

    /// Caches route lists in `cache` instead of the process-wide cache.
    pub fn route_cache(mut self, cache: RouteCache) -> Self {
        self.opts.route_cache = Some(cache);
        self
    }

    /// Never caches: every handshake sends an empty md5 and gets the list.
    pub fn no_route_cache(mut self) -> Self {
        self.opts.route_cache = None;
        self
    }

    /// Largest frame accepted from the server (default 10 MiB).
    pub fn max_len(mut self, n: usize) -> Self {
        self.opts.max_len = n;
        self
    }

    /// The options so far.
    pub fn options(&self) -> &Options {
        &self.opts
    }

    /// Connects, handshakes and starts the connection's reader and writer tasks.
    pub async fn connect(self) -> Result<Client> {
        let conn = Connection::connect(&self.addr, &self.opts).await?;
        Ok(Client::start(conn, &self.opts))
    }

    /// Connects and handshakes, returning the split frame reader and writer for code that
    /// drives the connection itself (load generators).
    pub async fn connect_raw(self) -> Result<Connection> {
        Connection::connect(&self.addr, &self.opts).await
    }
}

/// A server push (or a message on a cmd with no request waiting).
#[derive(Debug, Clone)]
pub struct Push {
    /// The push route's cmd.
    pub cmd: u16,
    /// The push route's name (`""` for a cmd outside the route list).
    pub route: Arc<str>,
    /// The encoded message (JSON text).
    pub payload: Bytes,
}

impl Push {
    /// The message decoded from JSON.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_slice(&self.payload).map_err(|e| Error::Decode {
            what: format!("push {}", self.route),
            reason: e.to_string(),
        })
    }
}

/// The pushes of one route, in arrival order; ends when the connection closes.
pub struct PushStream {
    rx: mpsc::UnboundedReceiver<Push>,
    route: String,
    shared: Arc<Shared>,
}

impl PushStream {
    /// The next push; `None` once the connection is closed and every push was taken.
    pub async fn recv(&mut self) -> Option<Push> {
        self.rx.recv().await
    }

    /// The next push within `limit`: [`Error::Timeout`], or [`Error::Closed`] when the
    /// connection ended.
    pub async fn recv_timeout(&mut self, limit: Duration) -> Result<Push> {
        match tokio::time::timeout(limit, self.rx.recv()).await {
            Ok(Some(p)) => Ok(p),
            Ok(None) => Err(Error::Closed(self.shared.close_reason())),
            Err(_) => Err(Error::Timeout {
                what: format!("push {}", self.route),
                after: limit,
            }),
        }
    }

    /// The next push decoded from JSON, within `limit`.
    pub async fn recv_json<T: DeserializeOwned>(&mut self, limit: Duration) -> Result<T> {
        self.recv_timeout(limit).await?.json()
    }

    /// A push that already arrived, if any.
    pub fn try_recv(&mut self) -> Option<Push> {
        self.rx.try_recv().ok()
    }
}

type Handler = Arc<dyn Fn(Push) + Send + Sync>;

struct State {
    /// Encoded frames waiting for the writer task.
    out: BytesMut,
    /// Requests waiting for their reply, per cmd, in send order.
    waiters: HashMap<u16, VecDeque<oneshot::Sender<Bytes>>>,
    handlers: HashMap<u16, Vec<Handler>>,
    subscribers: HashMap<u16, Vec<mpsc::UnboundedSender<Push>>>,
    /// Why the connection closed, once it did.
    closed: Option<String>,
}

struct Shared {
    addr: String,
    handshake: Handshake,
    route_names: Vec<Arc<str>>,
    request_timeout: Duration,
    state: Mutex<State>,
    wake_writer: Notify,
    cancel: CancellationToken,
    writer_task: Mutex<Option<JoinHandle<()>>>,
    /// Milliseconds since `born` at the last frame received.
    last_rx_ms: AtomicU64,
    born: Instant,
    late_replies: AtomicU64,
    unhandled_pushes: AtomicU64,
}

impl Shared {
    fn close_reason(&self) -> String {
        self.state
            .lock()
            .unwrap()
            .closed
            .clone()
            .unwrap_or_else(|| "closing".into())
    }

    /// Marks the connection closed (first reason wins), fails every waiting request, ends
    /// every push stream and stops both tasks.
    fn shut(&self, reason: String) {
        let (waiters, subscribers) = {
            let mut st = self.state.lock().unwrap();
            if st.closed.is_none() {
                st.closed = Some(reason);
            }
            (
                std::mem::take(&mut st.waiters),
                std::mem::take(&mut st.subscribers),
            )
        };
        // Dropping the senders wakes every waiter with "closed".
        drop(waiters);
        drop(subscribers);
        self.cancel.cancel();
    }

    fn dispatch(&self, cmd: u16, payload: Bytes) {
        let (handlers, subscribers) = {
            let mut st = self.state.lock().unwrap();
            if let Some(tx) = st.waiters.get_mut(&cmd).and_then(VecDeque::pop_front) {
                drop(st);
                if tx.send(payload).is_err() {
                    // The request timed out or was dropped: this is its late reply.
                    self.late_replies.fetch_add(1, Ordering::Relaxed);
                }
                return;
            }
            (
                st.handlers.get(&cmd).cloned(),
                st.subscribers.get(&cmd).cloned(),
            )
        };
        if handlers.is_none() && subscribers.is_none() {
            self.unhandled_pushes.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let push = Push {
            cmd,
            route: self
                .route_names
                .get(cmd as usize)
                .cloned()
                .unwrap_or_else(|| Arc::from("")),
            payload,
        };
        for h in handlers.iter().flatten() {
            h(push.clone());
        }
        for s in subscribers.iter().flatten() {
            let _ = s.send(push.clone());
        }
    }
}

/// A connected game client. Clones share the connection; it closes when the last clone is
/// dropped or [`Client::close`] is called.
///
/// Requests are matched to replies by cmd: replies on one cmd come back in request order, so
/// each cmd keeps a FIFO of waiting requests. A message on a cmd with a waiting request is that
/// request's reply; otherwise it is a push for [`Client::on`] handlers and [`Client::subscribe`]
/// streams. A reply arriving after its request timed out is counted in
/// [`Client::late_replies`] and dropped.
#[derive(Clone)]
pub struct Client {
    shared: Arc<Shared>,
    _guard: Arc<DropGuard>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("addr", &self.shared.addr)
            .field("closed", &self.shared.state.lock().unwrap().closed)
            .finish()
    }
}

impl Client {
    /// A [`ClientBuilder`] for `addr` (`host:port`).
    pub fn builder(addr: impl Into<String>) -> ClientBuilder {
        ClientBuilder::new(addr)
    }

    /// Connects over TCP with default options.
    pub async fn connect(addr: &str) -> Result<Client> {
        ClientBuilder::new(addr).connect().await
    }

    /// Connects over WebSocket (`ws://addr/`) with default options.
    pub async fn connect_ws(addr: &str) -> Result<Client> {
        ClientBuilder::new(addr).ws().connect().await
    }

    /// Starts the reader and writer tasks over a handshaken connection.
    pub fn start(conn: Connection, opts: &Options) -> Client {
        let Connection {
            reader,
            writer,
            handshake,
            addr,
        } = conn;
        let heartbeat = match opts.heartbeat_override {
            Some(d) if d.is_zero() => None,
            Some(d) => Some(d),
            None => handshake.heartbeat(),
        };
        let route_names = handshake
            .routes
            .list()
            .iter()
            .map(|r| Arc::from(r.as_str()))
            .collect();
        let cancel = CancellationToken::new();
        let shared = Arc::new(Shared {
            addr,
            handshake,
            route_names,
            request_timeout: opts.request_timeout,
            state: Mutex::new(State {
                out: BytesMut::with_capacity(4096),
                waiters: HashMap::new(),
                handlers: HashMap::new(),
                subscribers: HashMap::new(),
                closed: None,
            }),
            wake_writer: Notify::new(),
            cancel: cancel.clone(),
            writer_task: Mutex::new(None),
            last_rx_ms: AtomicU64::new(0),
            born: Instant::now(),
            late_replies: AtomicU64::new(0),
            unhandled_pushes: AtomicU64::new(0),
        });
        tokio::spawn(read_loop(shared.clone(), reader));
        let w = tokio::spawn(write_loop(shared.clone(), writer, heartbeat));
        *shared.writer_task.lock().unwrap() = Some(w);
        Client {
            shared,
            _guard: Arc::new(cancel.drop_guard()),
        }
    }

    /// The server's route list.
    pub fn routes(&self) -> &Routes {
        &self.shared.handshake.routes
    }

    /// What the handshake established (the reply, the md5 sent).
    pub fn handshake(&self) -> &Handshake {
        &self.shared.handshake
    }

    /// The address connected to.
    pub fn addr(&self) -> &str {
        &self.shared.addr
    }

    /// Sends `msg` (as JSON) on `route` and waits for the reply, decoded from JSON, within the
    /// request timeout.
    pub async fn request<Req, Resp>(&self, route: &str, msg: &Req) -> Result<Resp>
    where
        Req: Serialize + ?Sized,
        Resp: DeserializeOwned,
    {
        let bytes = self.request_raw(route, msg).await?;
        serde_json::from_slice(&bytes).map_err(|e| Error::Decode {
            what: format!("reply to {route}"),
            reason: e.to_string(),
        })
    }

    /// [`Client::request`] with the reply's raw payload.
    pub async fn request_raw<Req: Serialize + ?Sized>(
        &self,
        route: &str,
        msg: &Req,
    ) -> Result<Bytes> {
        self.request_raw_timeout(route, msg, self.shared.request_timeout)
            .await
    }

    /// [`Client::request`] with its own timeout.
    pub async fn request_timeout<Req, Resp>(
        &self,
        route: &str,
        msg: &Req,
        limit: Duration,
    ) -> Result<Resp>
    where
        Req: Serialize + ?Sized,
        Resp: DeserializeOwned,
    {
        let bytes = self.request_raw_timeout(route, msg, limit).await?;
        serde_json::from_slice(&bytes).map_err(|e| Error::Decode {
            what: format!("reply to {route}"),
            reason: e.to_string(),
        })
    }

    async fn request_raw_timeout<Req: Serialize + ?Sized>(
        &self,
        route: &str,
        msg: &Req,
        limit: Duration,
    ) -> Result<Bytes> {
        let cmd = self.routes().cmd(route)?;
        let (tx, rx) = oneshot::channel();
        {
            let mut st = self.shared.state.lock().unwrap();
            if let Some(why) = &st.closed {
                return Err(Error::Closed(why.clone()));
            }
            // Encode and enqueue under one lock: the FIFO order is the byte order.
            encode_json(&mut st.out, cmd, route, msg)?;
            st.waiters.entry(cmd).or_default().push_back(tx);
        }
        self.shared.wake_writer.notify_one();
        match tokio::time::timeout(limit, rx).await {
            Ok(Ok(bytes)) => Ok(bytes),
            Ok(Err(_)) => Err(Error::Closed(self.shared.close_reason())),
            Err(_) => Err(Error::Timeout {
                what: format!("request {route}"),
                after: limit,
            }),
        }
    }

    /// Sends `msg` (as JSON) on `route` without waiting for anything.
    pub fn notify<Req: Serialize + ?Sized>(&self, route: &str, msg: &Req) -> Result<()> {
        let cmd = self.routes().cmd(route)?;
        {
            let mut st = self.shared.state.lock().unwrap();
            if let Some(why) = &st.closed {
                return Err(Error::Closed(why.clone()));
            }
            encode_json(&mut st.out, cmd, route, msg)?;
        }
        self.shared.wake_writer.notify_one();
        Ok(())
    }

    /// Calls `handler` (on the connection's reader task: keep it short) for every push of
    /// `route`.
    pub fn on(&self, route: &str, handler: impl Fn(Push) + Send + Sync + 'static) -> Result<()> {
        let cmd = self.routes().cmd(route)?;
        self.shared
            .state
            .lock()
            .unwrap()
            .handlers
            .entry(cmd)
            .or_default()
            .push(Arc::new(handler));
        Ok(())
    }

    /// A stream of every push of `route` from now on. Pushes queue unboundedly until taken.
    pub fn subscribe(&self, route: &str) -> Result<PushStream> {
        let cmd = self.routes().cmd(route)?;
        let (tx, rx) = mpsc::unbounded_channel();
        {
            let mut st = self.shared.state.lock().unwrap();
            if st.closed.is_none() {
                st.subscribers.entry(cmd).or_default().push(tx);
            }
        }
        Ok(PushStream {
            rx,
            route: route.to_string(),
            shared: self.shared.clone(),
        })
    }

    /// Sends queued messages, closes the connection and waits for the writer to finish.
    /// Requests still waiting fail with [`Error::Closed`].
    pub async fn close(&self) {
        self.shared.shut("closed by the client".into());
        let task = self.shared.writer_task.lock().unwrap().take();
        if let Some(t) = task {
            let _ = t.await;
        }
    }

    /// True once the connection is closed (for any reason).
    pub fn is_closed(&self) -> bool {
        self.shared.state.lock().unwrap().closed.is_some()
    }

    /// Why the connection closed, once it did.
    pub fn closed_reason(&self) -> Option<String> {
        self.shared.state.lock().unwrap().closed.clone()
    }

    /// Waits until the connection is closed; returns why.
    pub async fn closed(&self) -> String {
        self.shared.cancel.cancelled().await;
        self.shared.close_reason()
    }

    /// Replies that arrived after their request timed out (and were dropped).
    pub fn late_replies(&self) -> u64 {
        self.shared.late_replies.load(Ordering::Relaxed)
    }

    /// Pushes that arrived with neither a handler nor a stream for their route (dropped).
    pub fn unhandled_pushes(&self) -> u64 {
        self.shared.unhandled_pushes.load(Ordering::Relaxed)
    }
}

async fn read_loop(shared: Arc<Shared>, mut reader: FrameReader) {
    let reason = loop {
        let frame = tokio::select! {
            f = reader.next() => f,
            _ = shared.cancel.cancelled() => break "closed by the client".to_string(),
        };
        shared
            .last_rx_ms
            .store(shared.born.elapsed().as_millis() as u64, Ordering::Relaxed);
        match frame {
            Ok(Frame::Message { cmd, payload }) => shared.dispatch(cmd, payload),
            Ok(Frame::Heartbeat) => {}
            Ok(Frame::Handshake(_)) => break "protocol error: a second handshake reply".into(),
            Err(Error::Closed(why)) => break why,
            Err(e) => break e.to_string(),
        }
    };
    // First reason wins: after `close()` or a drop this keeps "closed by the client".
    shared.shut(reason);
}

async fn write_loop(shared: Arc<Shared>, mut writer: FrameWriter, heartbeat: Option<Duration>) {
    // Heartbeats go out every `h`; silence is checked four times per `h`.
    let h = heartbeat.unwrap_or(Duration::from_secs(3600 * 24 * 365));
    let check_every = (h / 4).max(Duration::from_millis(1));
    let mut check =
        tokio::time::interval_at(tokio::time::Instant::now() + check_every, check_every);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next_beat = Instant::now() + h;
    loop {
        let stop = tokio::select! {
            _ = shared.wake_writer.notified() => false,
            _ = check.tick(), if heartbeat.is_some() => {
                let now = Instant::now();
                let last = Duration::from_millis(shared.last_rx_ms.load(Ordering::Relaxed));
                let silent = now.duration_since(shared.born).saturating_sub(last);
                if silent > 2 * h {
                    shared.shut(format!(
                        "heartbeat timeout: nothing from the server for {silent:?} (heartbeat {h:?})"
                    ));
                    true
                } else {
                    if now >= next_beat {
                        next_beat = now + h;
                        put_frame(&mut shared.state.lock().unwrap().out, TYPE_HEARTBEAT, &[]);
                    }
                    false
                }
            }
            _ = shared.cancel.cancelled() => true,
        };
        // Take what is queued; the writer's (flushed, empty) buffer becomes the new queue.
        std::mem::swap(&mut shared.state.lock().unwrap().out, &mut writer.buf);
        // (A no-op when nothing is queued.)
        if let Err(e) = writer.flush().await {
            shared.shut(format!("write failed: {e}"));
            return;
        }
        if stop {
            let _ = writer.shutdown().await;
            return;
        }
    }
}
