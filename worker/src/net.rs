//! Accepting on a listener until shutdown, in one place for both listeners (clients and peer
//! links): an accept error (e.g. out of file descriptors) is logged and retried after a pause
//! instead of ending the loop.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// The next connection, or `None` once `shutdown` is cancelled.
pub(crate) async fn accept(
    listener: &TcpListener,
    shutdown: &CancellationToken,
    what: &str,
) -> Option<(TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            r = listener.accept() => match r {
                Ok(x) => return Some(x),
                Err(e) => {
                    warn!(cause = %e, "{what} accept failed; retrying");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}
