//! The link to the master: authenticate, register, and keep the server list current.
//!
//! ```text
//! server -> master : (auth, role SERVER) Register{info}
//! master -> server : List{all live servers} | Error{reason}
//! master -> server : Add{info} / Remove{id} as servers come and go
//! server -> master : Report{clients, status, rpc, panics}  every second while registered
//! master -> server : Command{seq, args}          (`kennel send`)
//! server -> master : CommandReply{seq, reply|error}   from the App::on_cli_send handler
//! ```
//! The server dials until the master answers and redials when the link drops, keeping its peers
//! meanwhile. After re-registering it waits a grace period (`rpc.reconcileGrace`, mydog's 5 s by default), then forgets peers the
//! master no longer lists.
//!
//! Only the master's answer to `Register` (a `RegisterError`: duplicate or unknown id), sent
//! on a link where the master has proven it knows the server secret, ends the process. A
//! refusal during authentication carries no proof (anyone who can answer the master port can
//! send one, e.g. while the master is down), so it is logged and retried with backoff like any
//! other failure to reach the master.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use kennel_proto::auth;
use kennel_proto::frame::{AUTH_MAX_FRAME, DEFAULT_MAX_FRAME, ProtoCodec, length_codec};
use kennel_proto::msg::{
    CommandReply, FromMaster, Register, Report, Role, ToMaster, from_master, to_master,
};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::{App, Error};

/// How often a registered server reports its clients, status columns and RPC counters.
const REPORT_INTERVAL: Duration = Duration::from_secs(1);
/// `TCP_USER_TIMEOUT` of the master link (both ends): a host gone without a FIN is noticed.
const MASTER_USER_TIMEOUT: Duration = Duration::from_secs(30);

/// A `kennel send` handler: the command's arguments in, the text printed by the CLI out.
pub(crate) type CliSendCb = Arc<
    dyn Fn(App, Vec<String>) -> Pin<Box<dyn Future<Output = Result<String, String>> + Send>>
        + Send
        + Sync,
>;

impl App {
    /// Answers `kennel send [--id ..] [--type ..] args...`: `f` gets the arguments and returns
    /// the text the CLI prints for this server (`Err`: printed as this server's error). Set
    /// once; a server without a handler answers with an error.
    pub fn on_cli_send<F, Fut>(&self, f: F) -> &Self
    where
        F: Fn(App, Vec<String>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, String>> + Send + 'static,
    {
        let cb: CliSendCb = Arc::new(move |app, args| Box::pin(f(app, args)));
        if self.inner.cli_send.set(cb).is_err() {
            warn!("on_cli_send called twice; keeping the first handler");
        }
        self
    }
}

/// This server's per-second report: client count, the app's status columns, RPC and panic
/// counters.
fn self_report(app: &App) -> Report {
    let stats = &app.inner.stats;
    Report {
        clients: u32::try_from(app.inner.frontend.count()).unwrap_or(u32::MAX),
        status: stats.status(app),
        rpc: Some(stats.rpc()),
        panics: stats.panics(),
        dropped: stats.drops.snapshot(),
    }
}

/// Runs the `kennel send` handler for `args` (an error when there is none).
async fn answer(app: App, seq: u64, args: Vec<String>) -> CommandReply {
    let result = match app.inner.cli_send.get().cloned() {
        Some(cb) => match crate::dispatch::guarded(async { cb(app.clone(), args).await }).await {
            Ok(r) => r,
            Err(p) => {
                app.panicked("on_cli_send", "on_cli_send", None, &p);
                Err(format!("the on_cli_send handler panicked: {}", p.message()))
            }
        },
        None => Err("this server has no `kennel send` handler (App::on_cli_send)".to_owned()),
    };
    match result {
        Ok(reply) => CommandReply {
            seq,
            reply,
            error: String::new(),
        },
        Err(error) => CommandReply {
            seq,
            reply: String::new(),
            error,
        },
    }
}

/// Keeps this server registered until `shutdown`. Returns an error only if the master, having
/// proven it knows the secret, refused the registration.
pub(crate) async fn run(app: App, shutdown: CancellationToken) -> Result<(), Error> {
    let m = &app.inner.project.master;
    let addr = format!("{}:{}", m.host, m.port);
    let mut delay = Duration::from_millis(100);
    let mut registered_before = false;
    // The last failure logged: each new kind of failure is logged once, not every retry.
    let mut last_logged: Option<String> = None;
    loop {
        let r = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            r = session(&app, &addr, registered_before) => r,
        };
        match r {
            Ok(()) => {
                warn!(master = %addr, "master link dropped; serving on, redialing");
                registered_before = true;
                delay = Duration::from_millis(100);
                last_logged = None;
            }
            Err(LinkErr::Refused(e)) => return Err(Error::Refused(e)),
            Err(LinkErr::Untrusted(e)) => {
                if last_logged.as_deref() != Some(e.as_str()) {
                    warn!(master = %addr, cause = %e, "the master port refused this server before proving it knows the secret: not trusted, retrying");
                    last_logged = Some(e);
                }
            }
            Err(LinkErr::Other(e, registered)) => {
                registered_before |= registered;
                if last_logged.as_deref() != Some(e.as_str()) {
                    warn!(master = %addr, cause = %e, "cannot register with the master yet; retrying");
                    last_logged = Some(e);
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}

/// One step of the link loop: a message from the master, or one to send to it.
enum Incoming {
    Received(FromMaster),
    Send(to_master::Msg),
}

impl From<FromMaster> for Incoming {
    fn from(m: FromMaster) -> Incoming {
        Incoming::Received(m)
    }
}

impl From<to_master::Msg> for Incoming {
    fn from(m: to_master::Msg) -> Incoming {
        Incoming::Send(m)
    }
}

enum LinkErr {
    /// The master's `RegisterError`, after it proved it knows the secret: ends the server.
    Refused(String),
    /// A refusal from whoever answered the master port without proving the secret (or a
    /// rejection of this server's proof): retried.
    Untrusted(String),
    /// Failure, and whether registration had succeeded before it.
    Other(String, bool),
}

async fn session(app: &App, addr: &str, reconnect: bool) -> Result<(), LinkErr> {
    let other = |e: String| LinkErr::Other(e, false);
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| other(e.to_string()))?;
    let _ = stream.set_nodelay(true);
    // The kernel gives up on a master that acknowledges nothing for this long.
    kennel_proto::net::set_user_timeout(&stream, MASTER_USER_TIMEOUT);
    let mut framed = Framed::new(stream, length_codec(AUTH_MAX_FRAME));
    let master_id = app.inner.project.master.id.clone();
    match tokio::time::timeout(
        Duration::from_secs(5),
        auth::dial(
            &mut framed,
            &app.inner.secret,
            Role::Server,
            app.id(),
            &master_id,
        ),
    )
    .await
    {
        Err(_) => return Err(other("authentication timed out".into())),
        Ok(Err(auth::AuthError::Refused(r) | auth::AuthError::Rejected(r))) => {
            return Err(LinkErr::Untrusted(r));
        }
        Ok(Err(e)) => return Err(other(e.to_string())),
        Ok(Ok(_)) => {}
    }
    let mut framed =
        framed.map_codec(|_| ProtoCodec::<FromMaster, ToMaster>::new(DEFAULT_MAX_FRAME));
    let info = app.my_info().to_proto(std::process::id());
    framed
        .send(ToMaster {
            msg: Some(to_master::Msg::Register(Register { info: Some(info) })),
        })
        .await
        .map_err(|e| other(e.to_string()))?;
    let mut registered = false;
    let (replies_tx, mut replies) = tokio::sync::mpsc::channel::<CommandReply>(64);
    let mut report = tokio::time::interval(REPORT_INTERVAL);
    report.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let out: Incoming = tokio::select! {
            m = framed.next() => match m {
                Some(m) => m.map_err(|e| LinkErr::Other(e.to_string(), registered))?.into(),
                None => break,
            },
            Some(r) = replies.recv() => to_master::Msg::CommandReply(r).into(),
            _ = report.tick(), if registered => to_master::Msg::Report(self_report(app)).into(),
        };
        let m = match out {
            Incoming::Send(msg) => {
                framed
                    .send(ToMaster { msg: Some(msg) })
                    .await
                    .map_err(|e| LinkErr::Other(e.to_string(), registered))?;
                continue;
            }
            Incoming::Received(m) => m,
        };
        match m.msg {
            Some(from_master::Msg::List(list)) => {
                registered = true;
                info!(servers = list.servers.len(), "registered with the master");
                let ids: HashSet<String> = list.servers.iter().map(|s| s.id.clone()).collect();
                for s in list.servers {
                    app.server_added(s.into());
                }
                if reconnect {
                    let app = app.clone();
                    let listed_at = std::time::Instant::now();
                    tokio::spawn(async move {
                        tokio::time::sleep(app.rpc_config().reconcile_grace).await;
                        for id in app.inner.peers.ids() {
                            if !ids.contains(&id)
                                && id != app.id()
                                && !app.added_since(&id, listed_at)
                            {
                                app.server_removed(&id);
                            }
                        }
                    });
                }
            }
            Some(from_master::Msg::Add(a)) => {
                if let Some(info) = a.info {
                    app.server_added(info.into());
                }
            }
            Some(from_master::Msg::Remove(r)) => app.server_removed(&r.id),
            Some(from_master::Msg::Error(e)) => {
                error!(reason = %e.error, "the master refused this server's registration");
                return Err(LinkErr::Refused(e.error));
            }
            Some(from_master::Msg::Command(c)) => {
                let (app, tx) = (app.clone(), replies_tx.clone());
                tokio::spawn(async move {
                    let _ = tx.send(answer(app, c.seq, c.args).await).await;
                });
            }
            Some(from_master::Msg::Pong(_)) | None => {}
        }
    }
    if registered {
        Ok(())
    } else {
        Err(LinkErr::Other("master closed the link".into(), false))
    }
}
