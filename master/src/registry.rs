//! The live master links: which servers are registered, and the cluster messages that keep
//! every server's view of the cluster current.
//!
//! ```text
//! server -> master : Register {info}                  (first message after authentication)
//! master -> server : List {every live server, itself included}   or Error {reason}, then close
//! master -> others : Add {info}
//! ...
//! server -> master : Ping {seq}        master -> server : Pong {seq}
//! server -> master : Report {clients, status, rpc, panics}   (every second)
//! master -> server : Command {seq, args}   server -> master : CommandReply {seq, ..}
//! (link drops)     master -> others : Remove {id}
//! ```
//!
//! Each link has a writer task fed by a bounded channel; a link whose channel is full (the
//! server stopped reading) is closed rather than allowed to grow the master's memory.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use kennel_proto::msg::{
    AddServer, Command, FromMaster, RemoveServer, Report, RpcStats, ServerInfo, ServerList,
    from_master,
};
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::event::Answer;
use crate::state::LinkState;

/// A registered server that sent no report (it sends one a second) for this long is shown as
/// `unreachable`: hung, stopped, or cut off, though its socket is still open.
pub(crate) const SILENT_AFTER: Duration = Duration::from_secs(5);

/// One live master link.
#[derive(Debug)]
pub(crate) struct Link {
    /// Distinguishes this link from an earlier or later link of the same server.
    pub(crate) link_id: u64,
    /// What the server registered with.
    pub(crate) info: ServerInfo,
    /// When it registered.
    pub(crate) since: Instant,
    /// Feeds the link's writer task; dropped (closing the writer) when the link is removed.
    tx: mpsc::Sender<FromMaster>,
    /// Cancelled to close the link (by the registry when the link falls behind, or by the
    /// link's own task when the socket ends).
    close: CancellationToken,
    /// Connected clients, as last reported by the server.
    pub(crate) clients: Option<u32>,
    /// The app's own `list` columns, as last reported.
    pub(crate) status: HashMap<String, String>,
    /// RPC counters, as last reported.
    pub(crate) rpc: Option<RpcStats>,
    /// Panics caught in the server's game code by route, as last reported.
    pub(crate) panics: HashMap<String, u64>,
    /// Messages dropped and clients closed by a limit, as last reported.
    pub(crate) dropped: HashMap<String, u64>,
    /// When the server last reported (or registered): a link silent past
    /// [`SILENT_AFTER`] shows the server as `unreachable`.
    pub(crate) heard: Instant,
    /// `kennel send` commands waiting for this server's reply, by seq. Dropped (the waiter
    /// sees the link close) with the link.
    pending: HashMap<u64, oneshot::Sender<Result<String, String>>>,
}

impl Link {
    /// Whether the server has reported nothing for [`SILENT_AFTER`].
    pub(crate) fn silent(&self) -> bool {
        self.heard.elapsed() >= SILENT_AFTER
    }
}

/// The live links, by server id.
#[derive(Debug)]
pub(crate) struct Registry {
    /// Configured ids in config order: the order of every `List`.
    order: Vec<String>,
    links: HashMap<String, Link>,
    /// Ids that registered at least once (for the readiness line).
    ever: HashSet<String>,
    next_link_id: u64,
    next_seq: u64,
}

impl Registry {
    /// An empty registry for servers `order` (config order).
    pub(crate) fn new(order: Vec<String>) -> Registry {
        Registry {
            order,
            links: HashMap::new(),
            ever: HashSet::new(),
            next_link_id: 1,
            next_seq: 1,
        }
    }

    /// Adds server `id` (new in the config) at the end of the order.
    pub(crate) fn add(&mut self, id: String) {
        if !self.order.contains(&id) {
            self.order.push(id);
        }
    }

    /// The live link of server `id`.
    pub(crate) fn get(&self, id: &str) -> Option<&Link> {
        self.links.get(id)
    }

    /// The state of server `id`'s link: none, live, or live but silent.
    pub(crate) fn link_state(&self, id: &str) -> LinkState {
        match self.links.get(id) {
            None => LinkState::Down,
            Some(l) if l.silent() => LinkState::Silent,
            Some(_) => LinkState::Live,
        }
    }

    /// Whether server `id` has registered at least once.
    pub(crate) fn registered_once(&self, id: &str) -> bool {
        self.ever.contains(id)
    }

    /// Records what server `id` reported on link `link_id`.
    pub(crate) fn report(&mut self, id: &str, link_id: u64, report: Report) {
        if let Some(l) = self.links.get_mut(id).filter(|l| l.link_id == link_id) {
            l.clients = Some(report.clients);
            l.status = report.status;
            l.rpc = report.rpc;
            l.panics = report.panics;
            l.dropped = report.dropped;
            l.heard = Instant::now();
        }
    }

    /// Sends `args` to server `id` as a `kennel send` command; the answer arrives on the
    /// returned receiver (an `Err` receive: the link closed first). `None`: not registered.
    pub(crate) fn command(&mut self, id: &str, args: &[String]) -> Option<Answer> {
        let seq = self.next_seq;
        self.next_seq += 1;
        let link = self.links.get_mut(id)?;
        let (tx, rx) = oneshot::channel();
        link.pending.insert(seq, tx);
        let msg = from_master::Msg::Command(Command {
            seq,
            args: args.to_vec(),
        });
        send(link, msg);
        Some(rx)
    }

    /// Hands server `id`'s reply to command `seq` to its waiter.
    pub(crate) fn command_reply(
        &mut self,
        id: &str,
        link_id: u64,
        seq: u64,
        result: Result<String, String>,
    ) {
        if let Some(tx) = self
            .links
            .get_mut(id)
            .filter(|l| l.link_id == link_id)
            .and_then(|l| l.pending.remove(&seq))
        {
            let _ = tx.send(result);
        }
    }

    /// Records a new link (the caller checked the id is configured and not live), sends it the
    /// list of live servers and tells every other live server about it. Returns its link id.
    pub(crate) fn admit(
        &mut self,
        info: ServerInfo,
        tx: mpsc::Sender<FromMaster>,
        close: CancellationToken,
    ) -> u64 {
        let link_id = self.next_link_id;
        self.next_link_id += 1;
        let id = info.id.clone();
        self.ever.insert(id.clone());
        self.links.insert(
            id.clone(),
            Link {
                link_id,
                info: info.clone(),
                since: Instant::now(),
                tx,
                close,
                clients: None,
                status: HashMap::new(),
                rpc: None,
                panics: HashMap::new(),
                dropped: HashMap::new(),
                heard: Instant::now(),
                pending: HashMap::new(),
            },
        );
        let list = ServerList {
            servers: self
                .order
                .iter()
                .filter_map(|i| self.links.get(i))
                .map(|l| l.info.clone())
                .collect(),
        };
        for (other, link) in &self.links {
            let msg = if *other == id {
                from_master::Msg::List(list.clone())
            } else {
                from_master::Msg::Add(AddServer {
                    info: Some(info.clone()),
                })
            };
            send(link, msg);
        }
        link_id
    }

    /// Removes the link `link_id` of server `id` (if it is still the live one) and tells the
    /// other servers. Returns whether it was removed.
    pub(crate) fn remove(&mut self, id: &str, link_id: u64) -> bool {
        if self.links.get(id).is_none_or(|l| l.link_id != link_id) {
            return false;
        }
        if let Some(link) = self.links.remove(id) {
            link.close.cancel();
        }
        for link in self.links.values() {
            send(
                link,
                from_master::Msg::Remove(RemoveServer { id: id.to_owned() }),
            );
        }
        true
    }
}

/// Queues `msg` on `link`; a link that is not keeping up is closed.
fn send(link: &Link, msg: from_master::Msg) {
    match link.tx.try_send(FromMaster { msg: Some(msg) }) {
        Ok(()) | Err(TrySendError::Closed(_)) => {}
        Err(TrySendError::Full(_)) => {
            warn!(server = %link.info.id, "master link is not keeping up; closing it");
            link.close.cancel();
        }
    }
}
