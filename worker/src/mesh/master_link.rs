//! The link to the master: authenticate, register, and keep the server list current
//! (encrypted after authentication with `encryptLinks`).
//!
//! ```text
//! server -> master : (auth, role SERVER) Register{info}
//! master -> server : List{all live servers} | Error{reason}
//! master -> server : Add{info} / Remove{id} as servers come and go
//! server -> master : Report{clients, status, rpc, panics}  every second while registered
//! master -> server : Command{seq, args}          (`kennel send`)
//! server -> master : CommandReply{seq, reply|error}   from the App::on_cli_send handler
//! ```
//! The master is the one discovery backend so far: what it says goes to [`Membership`], so
//! another backend (etcd) would drive the same trait.
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
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use kennel_config::MasterConfig;
use kennel_proto::auth;
use kennel_proto::frame::{AUTH_MAX_FRAME, DEFAULT_MAX_FRAME, ProtoCodec, length_codec};
use kennel_proto::msg::{
    self, CommandReply, FromMaster, Register, Role, ToMaster, from_master, to_master,
};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::Error;
use crate::mesh::{Membership, Mesh, ServerInfo};

/// How often a registered server reports its clients, status columns and RPC counters.
const REPORT_INTERVAL: Duration = Duration::from_secs(1);
/// `TCP_USER_TIMEOUT` of the master link (both ends): a host gone without a FIN is noticed.
const MASTER_USER_TIMEOUT: Duration = Duration::from_secs(30);

/// Answers `kennel send` command `seq`.
async fn answer<M: Membership>(membership: M, seq: u64, args: Vec<String>) -> CommandReply {
    match membership.command(args).await {
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

/// Where the master is and what this server registers as.
pub(crate) struct Master {
    addr: String,
    id: String,
    /// This server as it registers (`info.pid` is this process).
    info: msg::ServerInfo,
}

impl Master {
    pub(crate) fn new(m: &MasterConfig, info: msg::ServerInfo) -> Master {
        Master {
            addr: format!("{}:{}", m.host, m.port),
            id: m.id.clone(),
            info,
        }
    }
}

/// Keeps this server registered until `shutdown`. Returns an error only if the master, having
/// proven it knows the secret, refused the registration.
pub(crate) async fn run<M: Membership>(
    mesh: Arc<Mesh>,
    membership: M,
    master: Master,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let addr = &master.addr;
    let mut delay = Duration::from_millis(100);
    let mut registered_before = false;
    // The last failure logged: each new kind of failure is logged once, not every retry.
    let mut last_logged: Option<String> = None;
    loop {
        let r = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            r = session(&mesh, &membership, &master, registered_before) => r,
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
            Err(LinkErr::Other(e, true)) => {
                // E.g. a record that failed to decrypt: the link is gone, as if dropped.
                warn!(master = %addr, cause = %e, "master link broken; serving on, redialing");
                registered_before = true;
                delay = Duration::from_millis(100);
                last_logged = None;
            }
            Err(LinkErr::Other(e, false)) => {
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
enum Step {
    FromMaster(FromMaster),
    ToMaster(to_master::Msg),
}

impl From<FromMaster> for Step {
    fn from(m: FromMaster) -> Step {
        Step::FromMaster(m)
    }
}

impl From<to_master::Msg> for Step {
    fn from(m: to_master::Msg) -> Step {
        Step::ToMaster(m)
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

async fn session<M: Membership>(
    mesh: &Arc<Mesh>,
    membership: &M,
    master: &Master,
    reconnect: bool,
) -> Result<(), LinkErr> {
    let other = |e: String| LinkErr::Other(e, false);
    let stream = TcpStream::connect(&master.addr)
        .await
        .map_err(|e| other(e.to_string()))?;
    let _ = stream.set_nodelay(true);
    // The kernel gives up on a master that acknowledges nothing for this long.
    kennel_proto::net::set_user_timeout(&stream, MASTER_USER_TIMEOUT);
    let mut framed = Framed::new(stream, length_codec(AUTH_MAX_FRAME));
    let dial = auth::dial_with(
        &mut framed,
        &mesh.secret,
        Role::Server,
        mesh.id(),
        &master.id,
        mesh.cipher,
    );
    let transport = match tokio::time::timeout(Duration::from_secs(5), dial).await {
        Err(_) => return Err(other("authentication timed out".into())),
        Ok(Err(auth::AuthError::Refused(r) | auth::AuthError::Rejected(r))) => {
            return Err(LinkErr::Untrusted(r));
        }
        Ok(Err(e)) => return Err(other(e.to_string())),
        Ok(Ok((_, transport))) => transport,
    };
    // Encrypted (`encryptLinks`): the link's bytes are Noise records from here on.
    let codec = ProtoCodec::<FromMaster, ToMaster>::new(DEFAULT_MAX_FRAME);
    let mut framed = kennel_proto::noise::framed_link(framed, transport, codec);
    let info = master.info.clone();
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
        let step: Step = tokio::select! {
            m = framed.next() => match m {
                Some(m) => m.map_err(|e| LinkErr::Other(e.to_string(), registered))?.into(),
                None => break,
            },
            Some(r) = replies.recv() => to_master::Msg::CommandReply(r).into(),
            _ = report.tick(), if registered => to_master::Msg::Report(membership.report()).into(),
        };
        let m = match step {
            Step::ToMaster(msg) => {
                framed
                    .send(ToMaster { msg: Some(msg) })
                    .await
                    .map_err(|e| LinkErr::Other(e.to_string(), registered))?;
                continue;
            }
            Step::FromMaster(m) => m,
        };
        match m.msg {
            Some(from_master::Msg::List(list)) => {
                registered = true;
                let encrypted = kennel_proto::noise::is_encrypted(framed.get_ref());
                info!(
                    servers = list.servers.len(),
                    encrypted, "registered with the master"
                );
                let ids: HashSet<String> = list.servers.iter().map(|s| s.id.clone()).collect();
                for s in &list.servers {
                    membership.server_added(ServerInfo::from(s));
                }
                if reconnect {
                    let (mesh, membership) = (mesh.clone(), membership.clone());
                    let listed_at = std::time::Instant::now();
                    tokio::spawn(async move {
                        tokio::time::sleep(mesh.config().reconcile_grace).await;
                        for id in mesh.peers.ids() {
                            if !ids.contains(&id)
                                && id != mesh.id()
                                && !mesh.peers.added_since(&id, listed_at)
                            {
                                membership.server_removed(&id);
                            }
                        }
                    });
                }
            }
            Some(from_master::Msg::Add(a)) => {
                if let Some(info) = &a.info {
                    membership.server_added(ServerInfo::from(info));
                }
            }
            Some(from_master::Msg::Remove(r)) => membership.server_removed(&r.id),
            Some(from_master::Msg::Error(e)) => {
                error!(reason = %e.error, "the master refused this server's registration");
                return Err(LinkErr::Refused(e.error));
            }
            Some(from_master::Msg::Command(c)) => {
                let (membership, tx) = (membership.clone(), replies_tx.clone());
                tokio::spawn(async move {
                    let _ = tx.send(answer(membership, c.seq, c.args).await).await;
                });
            }
            None => {}
        }
    }
    if registered {
        Ok(())
    } else {
        Err(LinkErr::Other("master closed the link".into(), false))
    }
}
