//! Running one of this server's remotes, behind a panic boundary: for a peer's call (started
//! inline on the link's reader, see `peer_msg.rs`) or for a call to this server itself
//! (`app.rpc(app.id())`, awaited in place). A panic is the call's error.

use bytes::Bytes;

use crate::panic::{Panic, guarded};
use crate::routing::handler::BoxFuture;
use crate::{App, RpcError};

/// The work of a remote: an encoded result, or the remote's error text.
pub(crate) type RemoteWork = BoxFuture<Result<Bytes, String>>;

/// Runs local remote `route` to its end (a call to this server itself).
pub(crate) async fn run_local(app: &App, route: &str, args: Bytes) -> Result<Bytes, RpcError> {
    let fut = start(app, route, args)?;
    let r = guarded(fut).await;
    finished(app, route, r)
}

/// Starts local remote `route`: its future, or `NoRemote`, or its panic (reported) while it
/// was being created.
pub(crate) fn start(app: &App, route: &str, args: Bytes) -> Result<RemoteWork, RpcError> {
    let Some(r) = app.router().code().remotes.get(route) else {
        return Err(RpcError::NoRemote {
            server: app.id().to_string(),
            route: route.to_string(),
        });
    };
    app.guard("remote", route, None, || r(app.clone(), args))
        .map_err(|p| panicked(app, route, &p))
}

/// What a remote's work ended with: its result, its error, or its panic (reported).
pub(crate) fn finished(
    app: &App,
    route: &str,
    r: Result<Result<Bytes, String>, Panic>,
) -> Result<Bytes, RpcError> {
    match r {
        Ok(r) => r.map_err(|m| error(app, route, m)),
        Err(p) => {
            app.panicked("remote", route, None, &p);
            Err(panicked(app, route, &p))
        }
    }
}

/// The error a caller gets from a remote that panicked.
fn panicked(app: &App, route: &str, p: &Panic) -> RpcError {
    error(app, route, format!("panicked: {}", p.message()))
}

/// A local remote's failure.
fn error(app: &App, route: &str, message: String) -> RpcError {
    RpcError::Remote {
        server: app.id().to_string(),
        route: route.to_string(),
        message,
    }
}
