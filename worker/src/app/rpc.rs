//! Server-to-server RPC: `app.rpc(server_id).call(route, &args)` and `.notify(..)`.
//!
//! Arguments and results are JSON. A call to this server itself runs the remote directly,
//! without the network. A call to a known server whose link is not up yet waits for the link
//! within the call's timeout, at most `rpcMsgCacheCount` calls per peer (then
//! [`RpcError::QueueFull`]); a call in flight when the link drops fails at once with
//! [`RpcError::LinkDropped`]; a remote that fails returns [`RpcError::Remote`].
//!
//! Typed calls: [`crate::remote_route!`] declares a route as a type carrying its argument and
//! result types, so [`Rpc::call_typed`] and [`crate::App::remote_typed`] check them at compile
//! time. A trait and a declarative macro were chosen over a proc-macro on a remote "service"
//! trait: they keep remotes plain closures (like handlers), need no extra crate, and a route
//! named by a type cannot be misspelled.
//!
//! Every call and notify is counted (with its errors by kind and, for calls, its latency) in
//! [`crate::stats`], which the server reports to the master. The wire side (links, pending
//! calls, replies) is `mesh/rpc.rs`; a call to this server runs the remote through routing.

use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::routing::handler::{decode, encode};
use crate::routing::remote;
use crate::{App, RpcError};

/// A remote's route as a type, with its argument and result types; declare one with
/// [`crate::remote_route!`].
pub trait RemoteRoute: Copy + Send + Sync + 'static {
    /// The route, `"type.file.method"`.
    const ROUTE: &'static str;
    /// The argument type.
    type Args: Serialize + DeserializeOwned + Send + Sync + 'static;
    /// The result type.
    type Ret: Serialize + DeserializeOwned + Send + 'static;
}

/// Declares a typed remote route: `remote_route!(pub Echo = "chat.main.echo", fn(Args) -> Ret);`
/// makes a unit struct `Echo` implementing [`RemoteRoute`], for [`Rpc::call_typed`] and
/// [`crate::App::remote_typed`].
///
/// ```
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// pub struct Add { pub a: i64, pub b: i64 }
///
/// kennel::remote_route!(
///     /// Adds two numbers on a `calc` server.
///     pub CalcAdd = "calc.main.add", fn(Add) -> i64
/// );
///
/// use kennel::RemoteRoute;
/// assert_eq!(CalcAdd::ROUTE, "calc.main.add");
/// ```
#[macro_export]
macro_rules! remote_route {
    ($(#[$meta:meta])* $vis:vis $name:ident = $route:literal, fn($args:ty) -> $ret:ty) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy)]
        $vis struct $name;
        impl $crate::RemoteRoute for $name {
            const ROUTE: &'static str = $route;
            type Args = $args;
            type Ret = $ret;
        }
    };
}

/// The target meaning "every server of the route's type".
pub(crate) const ALL: &str = "*";

/// A handle for calling one server's remotes; see [`App::rpc`].
pub struct Rpc {
    app: App,
    target: String,
    timeout: Duration,
}

impl Rpc {
    pub(crate) fn new(app: App, target: String) -> Rpc {
        let timeout = app.mesh().timeout();
        Rpc {
            app,
            target,
            timeout,
        }
    }

    /// Overrides the timeout for calls made through this handle.
    pub fn timeout(mut self, t: Duration) -> Rpc {
        self.timeout = t;
        self
    }

    /// Calls `route` (e.g. `"chat.main.echo"`) with `args` and waits for the result.
    pub async fn call<A: Serialize + ?Sized, R: DeserializeOwned>(
        &self,
        route: &str,
        args: &A,
    ) -> Result<R, RpcError> {
        let started = Instant::now();
        let result = async {
            let args = encode(args).map_err(RpcError::Codec)?;
            let raw = self.call_raw(route, args, started).await?;
            decode(&raw).map_err(RpcError::Codec)
        }
        .await;
        self.app.stats().call(started.elapsed(), &result);
        result
    }

    /// Calls a typed route (see [`crate::remote_route!`]).
    pub async fn call_typed<R: RemoteRoute>(
        &self,
        _route: R,
        args: &R::Args,
    ) -> Result<R::Ret, RpcError> {
        self.call(R::ROUTE, args).await
    }

    /// Notifies a typed route (see [`crate::remote_route!`]).
    pub async fn notify_typed<R: RemoteRoute>(
        &self,
        _route: R,
        args: &R::Args,
    ) -> Result<(), RpcError> {
        self.notify(R::ROUTE, args).await
    }

    /// Sends `route(args)` without waiting for a result. With the target `"*"` it goes to
    /// every live server of the route's type (this one included).
    pub async fn notify<A: Serialize + ?Sized>(
        &self,
        route: &str,
        args: &A,
    ) -> Result<(), RpcError> {
        let args = match encode(args) {
            Ok(a) => a,
            Err(e) => {
                let r = Err(RpcError::Codec(e));
                self.app.stats().notify(&r);
                return r;
            }
        };
        if self.target == ALL {
            let server_type = route.split('.').next().unwrap_or_default();
            for id in self.app.server_ids_of_type(server_type).iter() {
                Rpc::new(self.app.clone(), id.clone())
                    .timeout(self.timeout)
                    .notify_raw(route, args.clone())
                    .await?;
            }
            return Ok(());
        }
        self.notify_raw(route, args).await
    }

    async fn notify_raw(&self, route: &str, args: Bytes) -> Result<(), RpcError> {
        let result = self.notify_raw_uncounted(route, args).await;
        self.app.stats().notify(&result);
        result
    }

    async fn notify_raw_uncounted(&self, route: &str, args: Bytes) -> Result<(), RpcError> {
        if self.target == self.app.id() {
            let app = self.app.clone();
            let route = route.to_string();
            tokio::spawn(async move {
                let _ = remote::run_local(&app, &route, args).await;
            });
            return Ok(());
        }
        self.app
            .mesh()
            .notify(&self.target, route, args, self.timeout)
            .await
    }

    /// Calls `route`; the timeout runs from `started`.
    async fn call_raw(
        &self,
        route: &str,
        args: Bytes,
        started: Instant,
    ) -> Result<Bytes, RpcError> {
        if self.target == ALL {
            return Err(RpcError::Codec(
                "call to \"*\" has no single reply: use notify".into(),
            ));
        }
        if self.target == self.app.id() {
            return remote::run_local(&self.app, route, args).await;
        }
        self.app
            .mesh()
            .call(&self.target, route, args, started, self.timeout)
            .await
    }
}

impl App {
    /// An RPC handle for server `server_id` (this server's own id calls locally).
    pub fn rpc(&self, server_id: &str) -> Rpc {
        Rpc::new(self.clone(), server_id.to_string())
    }
}
