//! Every known server and the current link to each ([`Peers`]), and how a sender gets a link:
//! at once when it is up, or waiting for it within a timeout while the peer is known but not
//! linked yet (booting, reconnecting), at most `rpcMsgCacheCount` waiters per peer. Pairs of
//! types in `noRpcMatrix` never link: asking for such a link fails at once.
//!
//! Also the one timer of RPC: calls past their deadline are failed by a sweep every
//! [`CALL_SWEEP`] while any call waits ([`expire_calls`]), not by a timer per call.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::RpcError;
use crate::clock::now_ms;
use crate::mesh::link::Link;
use crate::mesh::{Mesh, ServerInfo};
use crate::stats::LogThrottle;

/// How often calls past their deadline are failed with [`RpcError::Timeout`]: a call times
/// out between its timeout and this much later. One sweep per server instead of a timer per
/// call, and only while calls are waiting.
pub(crate) const CALL_SWEEP: Duration = Duration::from_millis(50);

struct Peer {
    info: Option<ServerInfo>,
    link: watch::Sender<Option<Arc<Link>>>,
    /// Callers waiting for `link` (bounded by `rpcMsgCacheCount`).
    waiting: Arc<AtomicUsize>,
    /// Stops this peer's dialer (smaller id dials).
    dialer: Option<CancellationToken>,
    /// Since when there has been no link ([`now_ms`]): when the peer became known, or its last
    /// link went down.
    down_since: AtomicU64,
    /// When discovery last listed it.
    added_at: Instant,
}

impl Peer {
    fn new() -> Peer {
        Peer {
            info: None,
            link: watch::channel(None).0,
            waiting: Arc::new(AtomicUsize::new(0)),
            dialer: None,
            down_since: AtomicU64::new(now_ms()),
            added_at: Instant::now(),
        }
    }
}

/// Every known server and the links to them.
#[derive(Default)]
pub(crate) struct Peers {
    map: RwLock<HashMap<String, Peer>>,
    /// Numbers links, so a link that ends uninstalls itself only.
    pub(crate) generation: AtomicU64,
    /// Ids of the known servers by type, sorted; rebuilt when a server is added or removed,
    /// so a lookup per request is a read lock and an `Arc` clone.
    by_type: RwLock<HashMap<String, Arc<[String]>>>,
    /// Notified when a call starts waiting on a link that had none (see [`expire_calls`]).
    pub(crate) calls_waiting: Arc<Notify>,
    /// Limits the log lines about client messages that could not be forwarded.
    pub(crate) refusal_log: LogThrottle,
}

/// Fails calls past their deadline, every [`CALL_SWEEP`] while any call waits; sleeps
/// otherwise. Runs until `shutdown`.
pub(crate) async fn expire_calls(mesh: Arc<Mesh>, shutdown: CancellationToken) {
    let peers = &mesh.peers;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = peers.calls_waiting.notified() => {}
        }
        // A call that starts waiting after a sweep found none leaves a permit in the
        // `Notify`, so it is never missed.
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(CALL_SWEEP) => {}
            }
            if peers.expire(Instant::now()) == 0 {
                break;
            }
        }
    }
}

/// Builds the per-type id lists from the map.
fn index_by_type(map: &HashMap<String, Peer>) -> HashMap<String, Arc<[String]>> {
    let mut by_type: HashMap<String, Vec<String>> = HashMap::new();
    for (id, p) in map {
        if let Some(info) = &p.info {
            by_type
                .entry(info.server_type.clone())
                .or_default()
                .push(id.clone());
        }
    }
    by_type
        .into_iter()
        .map(|(t, mut ids)| {
            ids.sort();
            (t, ids.into())
        })
        .collect()
}

/// Watches a peer's current link.
pub(crate) type LinkWatch = watch::Receiver<Option<Arc<Link>>>;

/// What a sender gets for a peer whose link is not up: the watch, and the peer's count of
/// waiters.
pub(crate) type Wait = (LinkWatch, Arc<AtomicUsize>);

impl Peers {
    /// Fails every call past its deadline; how many calls are still waiting.
    fn expire(&self, now: Instant) -> usize {
        let links: Vec<Arc<Link>> = self
            .map
            .read()
            .unwrap()
            .values()
            .filter_map(|p| p.link.borrow().clone())
            .collect();
        links.iter().map(|l| l.expire(now)).sum()
    }

    /// Every known server (this one included once registered).
    pub(crate) fn servers(&self) -> Vec<ServerInfo> {
        self.map
            .read()
            .unwrap()
            .values()
            .filter_map(|p| p.info.clone())
            .collect()
    }

    /// Ids of the known servers of one type, sorted (shared, not copied).
    pub(crate) fn ids_of_type(&self, server_type: &str) -> Arc<[String]> {
        static EMPTY: std::sync::OnceLock<Arc<[String]>> = std::sync::OnceLock::new();
        match self.by_type.read().unwrap().get(server_type) {
            Some(ids) => ids.clone(),
            None => EMPTY.get_or_init(|| Arc::from(Vec::new())).clone(),
        }
    }

    /// The type of a known server.
    pub(crate) fn type_of(&self, id: &str) -> Option<String> {
        let map = self.map.read().unwrap();
        map.get(id)?.info.as_ref().map(|i| i.server_type.clone())
    }

    /// Whether `id` is a known backend server of type `server_type`.
    pub(crate) fn is_backend_of_type(&self, id: &str, server_type: &str) -> bool {
        self.map
            .read()
            .unwrap()
            .get(id)
            .and_then(|p| p.info.as_ref())
            .is_some_and(|i| i.server_type == server_type && !i.frontend)
    }

    /// Ids of every known server.
    pub(crate) fn ids(&self) -> Vec<String> {
        self.map
            .read()
            .unwrap()
            .iter()
            .filter(|(_, p)| p.info.is_some())
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Whether discovery listed `id` after `t`.
    pub(crate) fn added_since(&self, id: &str, t: Instant) -> bool {
        self.map
            .read()
            .unwrap()
            .get(id)
            .is_some_and(|p| p.added_at > t)
    }

    /// Adds or updates a server: whether it is new, and `dialer` back if this peer had none
    /// (the caller then starts dialing it with that token).
    pub(crate) fn add(
        &self,
        info: ServerInfo,
        dialer: Option<CancellationToken>,
    ) -> (bool, Option<CancellationToken>) {
        let mut map = self.map.write().unwrap();
        let entry = map.entry(info.id.clone()).or_insert_with(Peer::new);
        let new = entry.info.is_none();
        let retyped = entry
            .info
            .as_ref()
            .is_none_or(|old| old.server_type != info.server_type);
        entry.info = Some(info);
        entry.added_at = Instant::now();
        let dialer = match dialer {
            Some(token) if entry.dialer.is_none() => {
                entry.dialer = Some(token.clone());
                Some(token)
            }
            _ => None,
        };
        if retyped {
            *self.by_type.write().unwrap() = index_by_type(&map);
        }
        (new, dialer)
    }

    /// Forgets a server: stops dialing it, closes its link and fails its calls.
    pub(crate) fn remove(&self, id: &str) -> Option<ServerInfo> {
        let peer = {
            let mut map = self.map.write().unwrap();
            let peer = map.remove(id)?;
            *self.by_type.write().unwrap() = index_by_type(&map);
            peer
        };
        if let Some(d) = &peer.dialer {
            d.cancel();
        }
        if let Some(l) = peer.link.borrow().as_ref() {
            l.closed.cancel();
            l.fail_pending();
        }
        peer.info
    }

    /// Installs a new link to its peer, replacing (and closing) any previous one.
    pub(crate) fn install(&self, link: Arc<Link>) {
        let mut map = self.map.write().unwrap();
        let entry = map.entry(link.peer().to_owned()).or_insert_with(Peer::new);
        let old = entry.link.send_replace(Some(link));
        if let Some(old) = old {
            old.closed.cancel();
            old.fail_pending();
        }
    }

    /// Removes `link` if it is still the current one for its peer.
    pub(crate) fn uninstall(&self, link: &Link) {
        let map = self.map.read().unwrap();
        if let Some(p) = map.get(link.peer()) {
            p.link.send_if_modified(|cur| {
                if cur
                    .as_ref()
                    .is_some_and(|c| c.generation == link.generation)
                {
                    *cur = None;
                    p.down_since.store(now_ms(), Ordering::Relaxed);
                    true
                } else {
                    false
                }
            });
        }
    }

    /// The current link to `id` (`None`: not installed), for tests.
    #[cfg(test)]
    pub(crate) fn link_of(&self, id: &str) -> Option<Arc<Link>> {
        self.map.read().unwrap().get(id)?.link.borrow().clone()
    }
}

impl Mesh {
    /// The link to a known server if it is up (`Ok(Ok)`), or what to wait on (`Ok(Err)`).
    /// Unknown servers and pairs of types `noRpcMatrix` keeps apart fail.
    pub(crate) fn link_now(&self, id: &str) -> Result<Result<Arc<Link>, Wait>, RpcError> {
        match self.peers.map.read().unwrap().get(id) {
            None => Err(RpcError::UnknownServer(id.to_string())),
            Some(p) => {
                if let Some(info) = &p.info
                    && id != self.id()
                    && !self
                        .config()
                        .may_link(self.server_type(), &info.server_type)
                {
                    return Err(RpcError::NoLink {
                        server: id.to_string(),
                        from_type: self.server_type().to_string(),
                        to_type: info.server_type.clone(),
                    });
                }
                match p.link.borrow().as_ref() {
                    Some(l) => Ok(Ok(l.clone())),
                    None => Ok(Err((p.link.subscribe(), p.waiting.clone()))),
                }
            }
        }
    }

    /// The link to a known server, waiting up to `timeout` while it is not connected yet
    /// (booting, reconnecting). `route` names what waits, for the timeout error.
    pub(crate) async fn wait_link(
        &self,
        id: &str,
        route: &str,
        timeout: Duration,
    ) -> Result<Arc<Link>, RpcError> {
        match self.link_now(id)? {
            Ok(link) => Ok(link),
            // Boxed: the common case above keeps its callers' futures small.
            Err(wait) => Box::pin(self.wait_for_link(id, route, timeout, wait)).await,
        }
    }

    /// The link for a client message a frontend forwards to `id`. A link that is not up is
    /// waited for only until `timeout` after it went down, in total: the connection task that
    /// waits also answers its client, so once a peer has been unreachable that long, every
    /// forward to it fails at once (instead of each waiting `timeout` again).
    pub(crate) async fn forward_link(
        &self,
        id: &str,
        route: &str,
        timeout: Duration,
    ) -> Result<Arc<Link>, RpcError> {
        let wait = match self.link_now(id)? {
            Ok(link) => return Ok(link),
            Err(w) => w,
        };
        let down_ms = self
            .peers
            .map
            .read()
            .unwrap()
            .get(id)
            .map_or(0, |p| p.down_since.load(Ordering::Relaxed));
        let down_for = Duration::from_millis(now_ms().saturating_sub(down_ms));
        let left = timeout.saturating_sub(down_for);
        if left.is_zero() {
            return Err(RpcError::Timeout {
                server: id.to_string(),
                route: route.to_string(),
            });
        }
        Box::pin(self.wait_for_link(id, route, left, wait)).await
    }

    /// Waits for a link that is not up yet (see [`Mesh::wait_link`]), at most
    /// `rpcMsgCacheCount` waiters per peer.
    async fn wait_for_link(
        &self,
        id: &str,
        route: &str,
        timeout: Duration,
        (mut rx, waiting): Wait,
    ) -> Result<Arc<Link>, RpcError> {
        let limit = self.config().msg_cache_count;
        if waiting.fetch_add(1, Ordering::AcqRel) >= limit {
            waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(RpcError::QueueFull {
                server: id.to_string(),
                count: limit,
            });
        }
        let r = tokio::time::timeout(timeout, rx.wait_for(|l| l.is_some())).await;
        waiting.fetch_sub(1, Ordering::AcqRel);
        match r {
            Ok(Ok(l)) => Ok(l.clone().expect("waited for Some")),
            Ok(Err(_)) => Err(RpcError::UnknownServer(id.to_string())),
            Err(_) => Err(RpcError::Timeout {
                server: id.to_string(),
                route: route.to_string(),
            }),
        }
    }

    /// Forgets a server (see [`Peers::remove`]).
    pub(crate) fn remove(&self, id: &str) -> Option<ServerInfo> {
        self.peers.remove(id)
    }
}
