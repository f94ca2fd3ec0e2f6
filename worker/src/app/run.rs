//! Running a server: its tokio runtime ([`App::runtime`], from the entry's `threads`),
//! [`App::run`] (freeze the registrations, bind the RPC port and, on frontends, the client
//! port, join the mesh, register with the master, wait for a signal or [`App::shutdown`],
//! then the stop sequence: before-exit hooks, close clients), and the membership callbacks
//! discovery drives ([`Members`]: servers added and removed, `on_start_all`, the report and
//! `kennel send`, whose `reload-tls` kennel answers itself).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use kennel_proto::msg::{self, Report};
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::edge::connector::{self, Connector};
use crate::edge::tls::{self, RELOAD_TLS};
use crate::mesh::master_link::{self, Master};
use crate::mesh::{Membership, io, peers};
use crate::routing::handler::{AppCb, ServerCb, SessionlessCb};
use crate::routing::inbound::Inbound;
use crate::routing::peer_msg::PeerMessages;
use crate::{App, Error, ServerInfo};

/// How long the before-exit hooks may take together (the master's stop timeout is longer).
pub const BEFORE_EXIT_TIMEOUT: Duration = Duration::from_secs(5);

/// The app's own callbacks, frozen by `run`.
pub(crate) struct Callbacks {
    pub(crate) on_add: Vec<ServerCb>,
    pub(crate) on_remove: Vec<ServerCb>,
    pub(crate) on_start_all: Vec<AppCb>,
    pub(crate) before_exit: Vec<SessionlessCb>,
}

impl App {
    /// Builds the tokio runtime this server's entry in `servers.json` asks for with
    /// `"threads": N`. Without the key (or with 1) the runtime is single-threaded, like a mydog
    /// (Node) server: one core per server process, no work stealing or cross-thread wake-ups,
    /// and the least memory; a cluster uses more cores by running more servers. A server that
    /// needs more than one core (e.g. a busy frontend) sets `"threads": 2` or more.
    ///
    /// ```no_run
    /// # fn main() -> anyhow::Result<()> {
    /// let app = kennel::App::from_args()?;
    /// // register handlers, remotes, ...
    /// app.runtime()?.block_on(app.run())?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn runtime(&self) -> Result<tokio::runtime::Runtime, Error> {
        let threads = self.settings().map_or(1, |s| s.threads);
        let mut builder = if threads == 1 {
            tokio::runtime::Builder::new_current_thread()
        } else {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(threads);
            b
        };
        builder
            .enable_all()
            .build()
            .map_err(|e| Error::Setup(format!("cannot start the async runtime: {e}")))
    }

    /// Runs the server until SIGTERM/SIGINT or [`App::shutdown`]: binds the RPC port (and the
    /// client port on frontends), registers with the master, joins the mesh.
    pub async fn run(&self) -> Result<(), Error> {
        let (callbacks, connector_cfg) = self.freeze()?;
        let _ = self.inner.callbacks.set(callbacks);
        let me = self.my_info();
        let shutdown = self.inner.shutdown.clone();
        let mesh = self.mesh();
        let (peer_listener, rpc_addr) = bind("rpc", &me.host, me.port).await?;
        tokio::spawn(io::accept_loop(
            mesh.clone(),
            PeerMessages(self.clone()),
            peer_listener,
            shutdown.clone(),
        ));
        tokio::spawn(peers::expire_calls(mesh.clone(), shutdown.clone()));
        if let (true, Some(port)) = (me.frontend, me.client_port) {
            let (l, bound) = bind("clients", &me.host, port).await?;
            let mut c = self.connector(connector_cfg);
            if let Some(certs) = self.client_certs() {
                c.tls = Some(certs.acceptor());
                let reload = self
                    .settings()
                    .and_then(|s| s.connector.tls.as_ref()?.reload);
                if let Some(period) = reload {
                    tokio::spawn(tls::watch(certs.clone(), period, shutdown.clone()));
                }
            }
            if c.cfg.io == crate::Io::Uring {
                c = self.with_uring(c)?;
            }
            let c = Arc::new(c);
            c.log_listening(&bound);
            tokio::spawn(connector::accept_loop(c, l, shutdown.clone()));
        }
        info!(id = self.id(), server_type = self.server_type(), rpc = %rpc_addr, "server started");
        let entry = self.inner.project.server(self.id());
        let wire = entry.map_or_else(Default::default, |e| {
            msg::ServerInfo::from_config(e, std::process::id())
        });
        let master = Master::new(&self.inner.project.master, wire);
        let master = tokio::spawn(master_link::run(
            mesh.clone(),
            Members(self.clone()),
            master,
            shutdown.clone(),
        ));
        let signals = wait_for_signal();
        tokio::pin!(master);
        tokio::select! {
            _ = shutdown.cancelled() => {}
            s = signals => info!(signal = s, "stopping"),
            r = &mut master => {
                shutdown.cancel();
                if let Ok(Err(e)) = r {
                    return Err(e);
                }
            }
        }
        // Before-exit hooks run while the server still serves (unless stopped by a fatal
        // master refusal), bounded in time.
        let hooks = async {
            for cb in self.callbacks().map_or(&[][..], |c| &c.before_exit[..]) {
                let _ = self
                    .guard_async("on_before_exit", None, cb(self.clone()))
                    .await;
            }
        };
        if tokio::time::timeout(BEFORE_EXIT_TIMEOUT, hooks)
            .await
            .is_err()
        {
            warn!(
                "before-exit hooks did not finish within {BEFORE_EXIT_TIMEOUT:?}; stopping anyway"
            );
        }
        shutdown.cancel();
        // Close clients (each flushes its queue first).
        self.clients().close_all();
        let deadline = Instant::now() + Duration::from_secs(3);
        while self.clients().count() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        info!("stopped");
        Ok(())
    }

    /// This frontend's connector, its clients handed to routing.
    fn connector(&self, cfg: crate::ConnectorConfig) -> Connector<Inbound> {
        Connector::new(
            cfg,
            self.router().code().codecs.clone(),
            self.clients().clone(),
            self.stats().clone(),
            Inbound(self.clone()),
            self.server_id().clone(),
            self.router().md5().to_owned(),
            self.routes().to_vec(),
        )
    }

    /// The connector on io_uring (`"io": "uring"`): plain TCP only, and the ring must set up
    /// here (no silent fallback to epoll).
    fn with_uring(&self, mut c: Connector<Inbound>) -> Result<Connector<Inbound>, Error> {
        let refuse = |why: String| {
            Error::Setup(format!(
                "{}: `\"io\": \"uring\"` in its servers entry: {why}",
                self.id()
            ))
        };
        if c.cfg.transport != crate::Transport::Tcp || c.tls.is_some() {
            return Err(refuse(
                "io_uring drives plain TCP clients only (this frontend is WebSocket or TLS): use `\"io\": \"epoll\"`".into(),
            ));
        }
        #[cfg(target_os = "linux")]
        {
            let (ring, reactor) = crate::edge::uring::Ring::new().map_err(|e| {
                refuse(format!(
                    "{e}; set `\"io\": \"epoll\"` to run without io_uring"
                ))
            })?;
            tokio::spawn(crate::edge::uring::reactor(reactor));
            c.uring = Some(ring);
            Ok(c)
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = &mut c;
            Err(refuse("io_uring is Linux only".into()))
        }
    }

    fn callbacks(&self) -> Option<&Callbacks> {
        self.inner.callbacks.get()
    }
}

/// The app as discovery sees it.
#[derive(Clone)]
pub(crate) struct Members(pub(crate) App);

impl Membership for Members {
    fn server_added(&self, info: ServerInfo) {
        let app = &self.0;
        let id = info.id.clone();
        if app.mesh().add(info.clone(), &PeerMessages(app.clone())) {
            if id != app.id() {
                info!(server = %id, "server added");
            }
            for cb in app.callbacks().map_or(&[][..], |c| &c.on_add[..]) {
                let _ = app.guard("on_add_server", "on_add_server", None, || {
                    cb(app.clone(), info.clone())
                });
            }
        }
        self.check_start_all();
    }

    fn server_removed(&self, id: &str) {
        let app = &self.0;
        if id == app.id() {
            return;
        }
        if let Some(info) = app.mesh().remove(id) {
            info!(server = %id, "server removed");
            for cb in app.callbacks().map_or(&[][..], |c| &c.on_remove[..]) {
                let _ = app.guard("on_remove_server", "on_remove_server", None, || {
                    cb(app.clone(), info.clone())
                });
            }
        }
    }

    fn report(&self) -> Report {
        self.0.report()
    }

    async fn command(&self, args: Vec<String>) -> Result<String, String> {
        let app = &self.0;
        if args.first().is_some_and(|a| a == RELOAD_TLS) {
            return match app.client_certs() {
                Some(certs) => certs.reload(),
                None => Err("this server serves no TLS (its entry has no \"ssl\": true)".into()),
            };
        }
        let Some(cb) = app.inner.cli_send.get() else {
            return Err("this server has no `kennel send` handler (App::on_cli_send)".to_owned());
        };
        match app
            .guard_async("on_cli_send", None, cb(app.clone(), args))
            .await
        {
            Ok(r) => r,
            Err(p) => Err(format!("the on_cli_send handler panicked: {}", p.message())),
        }
    }
}

impl Members {
    /// Fires `on_start_all` once every configured server is known.
    fn check_start_all(&self) {
        let app = &self.0;
        if app.inner.started_all.load(Ordering::Acquire) {
            return;
        }
        let known = app.mesh().peers.ids();
        let all = app
            .inner
            .project
            .servers
            .iter()
            .all(|s| known.contains(&s.info.id));
        if all && !app.inner.started_all.swap(true, Ordering::AcqRel) {
            info!("every configured server has registered");
            for cb in app.callbacks().map_or(&[][..], |c| &c.on_start_all[..]) {
                let _ = app.guard("on_start_all", "on_start_all", None, || cb(app.clone()));
            }
            release_free_heap();
        }
    }
}

/// A listener on `host:port` for `what`, and the address it is bound to.
async fn bind(
    what: &'static str,
    host: &str,
    port: u16,
) -> Result<(TcpListener, std::net::SocketAddr), Error> {
    let addr = format!("{host}:{port}");
    let bound = match TcpListener::bind(&addr).await {
        Ok(l) => l.local_addr().map(|a| (l, a)),
        Err(e) => Err(e),
    };
    bound.map_err(|source| Error::Bind { what, addr, source })
}

/// Start-up is over (config parsing, registration): hands the whole free pages of the heap back
/// to the kernel. glibc returns only the top of the heap by itself; the start-up's garbage in
/// the middle (about 100-200 KB per server) would stay resident for the server's lifetime.
fn release_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory and is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}

async fn wait_for_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        std::future::pending::<()>().await;
        unreachable!()
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use kennel_proto::frame::{AUTH_MAX_FRAME, length_codec};
    use tokio_util::codec::Framed;
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::edge::connection::{ClientIo, serve};
    use crate::edge::connector::{OpenGuard, serve_ws};
    use crate::edge::wire::TcpWire;

    /// Bytes a task's future may grow past its measured size before this test fails.
    const SLACK: usize = 64;

    /// Sizes of the futures every client connection and every peer link is, measured before
    /// the worker was split into layers (commit `c9d489a`, rustc 1.95) in this build profile
    /// (debug: what `cargo test` builds; release: what runs). After the split (one
    /// `Connector` handle instead of the app and the config; a mesh handle beside the routing
    /// handler): debug 696 / 1464 / 904 / 1256 / 1384 B, release 688 / 1440 / 888 / 1224 /
    /// 1360 B. A future that holds something for the task's life unboxed (the handshake, the
    /// authentication, a dial attempt) grows by hundreds of bytes.
    struct Sizes {
        serve_tcp: usize,
        serve_ws: usize,
        run_link: usize,
        inbound: usize,
        dial_loop: usize,
    }

    const MEASURED: Sizes = if cfg!(debug_assertions) {
        Sizes {
            serve_tcp: 712,
            serve_ws: 1496,
            run_link: 904,
            inbound: 1240,
            dial_loop: 1368,
        }
    } else {
        Sizes {
            serve_tcp: 704,
            serve_ws: 1472,
            run_link: 888,
            inbound: 1208,
            dial_loop: 1344,
        }
    };

    /// A TLS connection's task (`serve_tls`, both transports: the TLS state is boxed) costs at
    /// most this much more than its plain twin.
    const TLS_TASK_EXTRA: usize = 256;

    #[tokio::test]
    async fn a_tls_connection_task_is_a_plain_one_and_a_pointer() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let tls = kennel_config::settings::TlsSettings {
            cert: cert_path,
            key: key_path,
            reload: None,
        };
        let certs = Arc::new(crate::edge::tls::ClientCerts::load(&tls).unwrap());
        let app = crate::app::test_app(true);
        let (_, cfg) = app.freeze().unwrap();
        let c = Arc::new(app.connector(cfg));
        let open = Arc::new(AtomicUsize::new(0));
        let addr = "127.0.0.1:9".parse().unwrap();
        let pair = crate::net::tcp_pair;
        let ((a, _a), (b, _b), (d, _d), (e, _e)) =
            (pair().await, pair().await, pair().await, pair().await);
        let io = ClientIo::new(TcpWire::new(a), c.frame_decoder());
        let tcp = std::mem::size_of_val(&serve(c.clone(), io, addr, OpenGuard::new(&open)));
        let ws = std::mem::size_of_val(&serve_ws(c.clone(), b, addr, OpenGuard::new(&open)));
        let acceptor = certs.acceptor();
        use crate::edge::tls::{TLS_PRE_HANDSHAKE_BYTES, WSS_PRE_HANDSHAKE_BYTES};
        let (o1, o2) = (OpenGuard::new(&open), OpenGuard::new(&open));
        let tls_tcp = connector::serve_tls::<_, TLS_PRE_HANDSHAKE_BYTES, _, _>(
            c.clone(),
            acceptor.clone(),
            d,
            addr,
            o1,
            connector::serve_frames,
        );
        let wss = connector::serve_tls::<_, WSS_PRE_HANDSHAKE_BYTES, _, _>(
            c,
            acceptor,
            e,
            addr,
            o2,
            connector::upgrade_then_serve,
        );
        let (tls_tcp, wss) = (std::mem::size_of_val(&tls_tcp), std::mem::size_of_val(&wss));
        eprintln!(
            "serve_tls (tcp): {tls_tcp} B (serve tcp {tcp} B); serve_tls (wss): {wss} B (serve_ws {ws} B)"
        );
        for (what, tls, plain) in [("TLS TCP", tls_tcp, tcp), ("wss", wss, ws)] {
            assert!(
                tls <= plain + TLS_TASK_EXTRA,
                "a {what} connection's task is {tls} B, its plain twin's {plain} B: something it holds for the task's life is no longer boxed"
            );
        }
    }

    #[tokio::test]
    async fn the_connection_and_link_tasks_keep_their_size() {
        let app = crate::app::test_app(true);
        let (_, cfg) = app.freeze().unwrap();
        let c = Arc::new(app.connector(cfg));
        let open = Arc::new(AtomicUsize::new(0));
        let addr = "127.0.0.1:9".parse().unwrap();
        let (a, _a) = crate::net::tcp_pair().await;
        let (b, _b) = crate::net::tcp_pair().await;
        let (d, _d) = crate::net::tcp_pair().await;
        let (e, _e) = crate::net::tcp_pair().await;
        let io = ClientIo::new(TcpWire::new(a), c.frame_decoder());
        let tcp = serve(c.clone(), io, addr, OpenGuard::new(&open));
        let ws = serve_ws(c.clone(), b, addr, OpenGuard::new(&open));
        let mesh = app.mesh().clone();
        let handler = PeerMessages(app.clone());
        let framed = Framed::new(d, length_codec(AUTH_MAX_FRAME));
        let link = io::run_link(
            mesh.clone(),
            handler.clone(),
            "room-1".into(),
            framed,
            None,
            CancellationToken::new(),
        );
        let gate = kennel_proto::net::PreAuthGate::new(4, 4);
        let (ticket, _) = gate.admit(addr.ip());
        let inbound = io::inbound(
            mesh.clone(),
            handler.clone(),
            e,
            addr,
            ticket,
            CancellationToken::new(),
        );
        let peer = app
            .servers_of_type("room")
            .pop()
            .unwrap_or_else(|| app.my_info().clone());
        let dial = io::dial_loop(mesh, handler, peer, CancellationToken::new());
        let got = [
            (
                "serve (tcp)",
                std::mem::size_of_val(&tcp),
                MEASURED.serve_tcp,
            ),
            ("serve_ws", std::mem::size_of_val(&ws), MEASURED.serve_ws),
            ("run_link", std::mem::size_of_val(&link), MEASURED.run_link),
            ("inbound", std::mem::size_of_val(&inbound), MEASURED.inbound),
            (
                "dial_loop",
                std::mem::size_of_val(&dial),
                MEASURED.dial_loop,
            ),
        ];
        for (what, size, measured) in got {
            eprintln!("{what}: {size} B (measured {measured} B)");
        }
        for (what, size, measured) in got {
            assert!(
                size <= measured + SLACK,
                "the {what} future grew to {size} B from {measured} B: something it holds for the task's life is no longer boxed"
            );
        }
    }
}
