//! The wire side of RPC: a call or notify to a peer goes out on its link (waited for within
//! the call's timeout while the peer is not linked yet), a call's reply comes back on the same
//! link ([`Link::replied`]), and a call of one of this server's remotes is answered with
//! [`Link::answer`]. The API (`app.rpc(id)`, local calls, counters) is `app/rpc.rs`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kennel_proto::msg::{RpcRequest, RpcResponse, peer_msg};
use tracing::warn;

use crate::RpcError;
use crate::mesh::Mesh;
use crate::mesh::link::{Link, msg};

impl Mesh {
    /// The link to `target`, and `route(args)` as a request with call id `id` (0: a notify).
    async fn request(
        &self,
        target: &str,
        route: &str,
        args: Bytes,
        id: u64,
        timeout: Duration,
    ) -> Result<(Arc<Link>, kennel_proto::msg::PeerMsg), RpcError> {
        let link = self.wait_link(target, route, timeout).await?;
        let m = msg(peer_msg::Msg::Rpc(RpcRequest {
            id,
            route: route.to_string(),
            args,
        }));
        Ok((link, m))
    }

    /// Sends `route(args)` to peer `target` without a reply.
    pub(crate) async fn notify(
        &self,
        target: &str,
        route: &str,
        args: Bytes,
        timeout: Duration,
    ) -> Result<(), RpcError> {
        let (link, m) = self.request(target, route, args, 0, timeout).await?;
        link.send(m).await.map_err(|e| e.rpc_error(target))
    }

    /// Calls `route(args)` on peer `target`; the deadline is `started + timeout`, link wait
    /// included. No timer per call: the sweep (`peers::expire_calls`) fails it past its
    /// deadline, with the route filled in here.
    pub(crate) async fn call(
        &self,
        target: &str,
        route: &str,
        args: Bytes,
        started: Instant,
        timeout: Duration,
    ) -> Result<Bytes, RpcError> {
        let id = self.call_seq.fetch_add(1, Ordering::Relaxed) + 1;
        let (link, m) = self.request(target, route, args, id, timeout).await?;
        let rx = link.call(id, m, started + timeout).await?;
        drop(link);
        match rx.await {
            Ok(Err(RpcError::Remote {
                server, message, ..
            })) => Err(RpcError::Remote {
                server,
                route: route.to_string(),
                message,
            }),
            Ok(Err(RpcError::Timeout { server, .. })) => Err(RpcError::Timeout {
                server,
                route: route.to_string(),
            }),
            Ok(r) => r,
            Err(_) => Err(RpcError::LinkDropped(target.to_string())),
        }
    }
}

impl Link {
    /// A reply to one of this server's calls on this link.
    pub(crate) fn replied(&self, r: RpcResponse) {
        let result = if r.error.is_empty() {
            Ok(r.result)
        } else {
            Err(RpcError::Remote {
                server: self.peer().to_string(),
                route: String::new(),
                message: r.error,
            })
        };
        self.complete(r.id, result);
    }

    /// Answers the peer's call `id` of `route` (`id` 0 is a notify: a failure is logged,
    /// nothing goes back). Queued without waiting (see [`Link::send_now`]).
    pub(crate) fn answer(self: &Arc<Self>, id: u64, route: &str, r: Result<Bytes, RpcError>) {
        if id == 0 {
            if let Err(e) = r {
                warn!(route, from = self.peer(), "notify failed: {e}");
            }
            return;
        }
        let reply = match r {
            Ok(result) => RpcResponse {
                id,
                result,
                error: String::new(),
            },
            // The remote's own message travels; the caller adds server and route.
            Err(RpcError::Remote { message, .. }) => RpcResponse {
                id,
                result: Bytes::new(),
                error: message,
            },
            Err(e) => RpcResponse {
                id,
                result: Bytes::new(),
                error: e.to_string(),
            },
        };
        self.send_now(msg(peer_msg::Msg::RpcReply(reply)));
    }
}
