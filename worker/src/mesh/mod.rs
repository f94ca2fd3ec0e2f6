//! The RPC mesh: every known server ([`peers`]), one authenticated TCP link per pair of
//! servers ([`link`]: its outbox and calls in flight; [`io`]: dial, accept, authenticate, run;
//! [`stream`]: read and write, encrypted or not), the wire side of RPC ([`rpc`]), its
//! settings ([`rpc_config`]), and discovery ([`master_link`]: the master as the one backend so
//! far).
//!
//! The mesh imports nothing from the app or routing: messages for the game leave it through
//! [`PeerHandler`] (client messages, pushes, remote calls, session applies; replies to its own
//! calls and heartbeats it handles itself), and what discovery learns leaves it through
//! [`Membership`]. An etcd backend would be a second [`Membership`] driver beside
//! `master_link`. `encryptLinks` ([`Mesh::cipher`]) changes how `io`, `stream` and
//! `master_link` carry bytes, nothing above them.

use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use kennel_proto::msg::{Cipher, ClientPush, ClientRequest, Report, RpcRequest, SessionApply};
use tokio_util::sync::CancellationToken;

pub(crate) mod io;
pub(crate) mod link;
pub(crate) mod master_link;
pub(crate) mod peers;
pub(crate) mod rpc;
pub(crate) mod rpc_config;
pub(crate) mod stream;
#[cfg(test)]
mod wire_tests;

use crate::stats::Stats;
use link::Link;
use peers::Peers;
use rpc_config::RpcConfig;

/// A server as the cluster knows it (from the master's list: what the server registered; the
/// same description as a config entry's `info`, built from the wire in kennel-proto).
pub use kennel_config::ServerInfo;

/// How the messages a link reads for the game leave the mesh (implemented by routing). Each
/// is called on the link's reader task, in arrival order, and must not wait.
pub(crate) trait PeerHandler: Clone + Send + Sync + 'static {
    /// A client message a frontend forwarded.
    fn client_message(&self, link: &Arc<Link>, req: ClientRequest);
    /// Frames for clients of this frontend.
    fn push(&self, link: &Link, push: ClientPush);
    /// A call or notify of one of this server's remotes; a call is answered with
    /// [`Link::answer`].
    fn call(&self, link: &Arc<Link>, req: RpcRequest);
    /// A backend's copy of a session's settings, for the live session here.
    fn apply(&self, link: &Link, apply: SessionApply);
    /// The reader handled every message its reads brought and is about to wait (or ends):
    /// what the calls above held back to write once per client goes out now.
    fn read_all(&self) {}
}

/// How what discovery learns leaves the mesh (implemented by the app's membership).
pub(crate) trait Membership: Clone + Send + Sync + 'static {
    /// A server joined (or is listed again).
    fn server_added(&self, info: ServerInfo);
    /// A server left.
    fn server_removed(&self, id: &str);
    /// This server's report for the master (every second while registered).
    fn report(&self) -> Report;
    /// Answers a `kennel send`: the text the CLI prints, or this server's error.
    fn command(&self, args: Vec<String>) -> impl Future<Output = Result<String, String>> + Send;
}

/// This server's place in the mesh: who it is, the secret its links prove, the RPC settings,
/// the known servers and their links.
pub(crate) struct Mesh {
    me: ServerInfo,
    id: Arc<str>,
    secret: Vec<u8>,
    /// What protects the master link and peer links after authentication (`encryptLinks`).
    pub(crate) cipher: Cipher,
    /// The RPC settings, fixed when first read ([`Mesh::config`]).
    config: OnceLock<RpcConfig>,
    /// What [`Mesh::config`] fixes: the master config's, or [`Mesh::set_config`]'s.
    draft: Mutex<Option<RpcConfig>>,
    pub(crate) peers: Peers,
    /// Ids of calls in flight (0 is a notify).
    call_seq: AtomicU64,
    pub(crate) stats: Arc<Stats>,
    /// Cancelled when the server stops: ends the listener, dialers and links.
    shutdown: CancellationToken,
}

impl Mesh {
    /// `config`: the RPC settings of the master config (replaceable until first read);
    /// `encrypt`: `encryptLinks`.
    pub(crate) fn new(
        me: ServerInfo,
        secret: Vec<u8>,
        encrypt: bool,
        config: RpcConfig,
        stats: Arc<Stats>,
        shutdown: CancellationToken,
    ) -> Mesh {
        Mesh {
            id: me.id.as_str().into(),
            me,
            secret,
            cipher: if encrypt {
                Cipher::Noise
            } else {
                Cipher::Plain
            },
            config: OnceLock::new(),
            draft: Mutex::new(Some(config)),
            peers: Peers::default(),
            call_seq: AtomicU64::new(0),
            stats,
            shutdown,
        }
    }

    /// This server.
    pub(crate) fn me(&self) -> &ServerInfo {
        &self.me
    }

    /// This server's id.
    pub(crate) fn id(&self) -> &str {
        &self.id
    }

    /// This server's id, shared (by the sessions of its clients).
    pub(crate) fn id_shared(&self) -> &Arc<str> {
        &self.id
    }

    /// This server's type.
    pub(crate) fn server_type(&self) -> &str {
        &self.me.server_type
    }

    /// The RPC settings in effect. The first read fixes them: from then on
    /// [`Mesh::set_config`] is refused.
    pub(crate) fn config(&self) -> &RpcConfig {
        if let Some(c) = self.config.get() {
            return c;
        }
        // Fixed under the draft's lock, so a concurrent `set_config` is either in or refused.
        let mut draft = self.draft.lock().unwrap_or_else(|e| e.into_inner());
        self.config.get_or_init(|| draft.take().unwrap_or_default())
    }

    /// Replaces the RPC settings unless they have been read already (then `false`).
    pub(crate) fn set_config(&self, cfg: RpcConfig) -> bool {
        let mut draft = self.draft.lock().unwrap_or_else(|e| e.into_inner());
        if self.config.get().is_some() {
            return false;
        }
        *draft = Some(cfg);
        true
    }

    /// `rpc.timeout`.
    pub(crate) fn timeout(&self) -> Duration {
        self.config().timeout
    }

    /// Adds or updates a server; true if it is new. Dials it when this server has the smaller
    /// id (and `noRpcMatrix` lets the two types link); its messages go to `handler`.
    pub(crate) fn add<H: PeerHandler>(self: &Arc<Self>, info: ServerInfo, handler: &H) -> bool {
        let dials = self.id() < info.id.as_str()
            && self
                .config()
                .may_link(self.server_type(), &info.server_type);
        let dialer = dials.then(|| self.shutdown.child_token());
        let (new, dialer) = self.peers.add(info.clone(), dialer);
        if let Some(token) = dialer {
            tokio::spawn(io::dial_loop(self.clone(), handler.clone(), info, token));
        }
        new
    }
}
