//! Type-erased handlers, remotes, route functions and callbacks, and the [`Reply`] trait that
//! turns a handler's return value into an optional encoded reply.
//!
//! Messages are JSON (mydog compatible): a handler's request type is decoded from the client's
//! payload with serde; a payload that does not decode is logged and the handler is not called.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::FutureExt;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{App, ServerInfo, Session};

/// A boxed, sendable future.
pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Client message handler: `(app, session, payload) -> encoded reply or error text`.
pub(crate) type HandlerFn =
    Arc<dyn Fn(App, Session, Bytes) -> BoxFuture<Result<Option<Bytes>, String>> + Send + Sync>;
/// RPC remote: `(app, args) -> encoded result or error text`.
pub(crate) type RemoteFn =
    Arc<dyn Fn(App, Bytes) -> BoxFuture<Result<Bytes, String>> + Send + Sync>;
/// Route function: picks the backend server id for a session.
pub(crate) type RouteFn = Arc<dyn Fn(&App, &Session) -> Option<String> + Send + Sync>;
/// Client on/off callback.
pub(crate) type SessionCb = Arc<dyn Fn(App, Session) -> BoxFuture<()> + Send + Sync>;
/// Server added/removed callback.
pub(crate) type ServerCb = Arc<dyn Fn(App, ServerInfo) + Send + Sync>;
/// Async callback with only the app (`on_before_exit`).
pub(crate) type SessionlessCb = Arc<dyn Fn(App) -> BoxFuture<()> + Send + Sync>;
/// Callback without arguments (`on_start_all`).
pub(crate) type AppCb = Arc<dyn Fn(App) + Send + Sync>;
/// `before` filter: `(app, session, route, payload) -> continue?`.
pub(crate) type BeforeFn = Arc<dyn Fn(&App, &Session, &str, &[u8]) -> bool + Send + Sync>;
/// `after` filter: `(app, session, route, reply)`.
pub(crate) type AfterFn = Arc<dyn Fn(&App, &Session, &str, Option<&[u8]>) + Send + Sync>;
/// `global_before` filter: `(app, session, cmd, payload) -> continue?`.
pub(crate) type GlobalFn = Arc<dyn Fn(&App, &Session, u16, &[u8]) -> bool + Send + Sync>;
/// A `kennel send` handler: the command's arguments in, the text printed by the CLI out.
pub(crate) type CliSendCb =
    Arc<dyn Fn(App, Vec<String>) -> BoxFuture<Result<String, String>> + Send + Sync>;

/// What a handler returns: an optional reply to the client.
///
/// `Option<T>` replies with `T` as JSON when `Some`; `()` never replies (like a mydog handler
/// that does not call `next`).
pub trait Reply: Send + 'static {
    /// Encodes the reply, `None` for no reply.
    fn into_reply(self) -> Result<Option<Bytes>, String>;
}

impl<T: Serialize + Send + 'static> Reply for Option<T> {
    fn into_reply(self) -> Result<Option<Bytes>, String> {
        match self {
            None => Ok(None),
            Some(v) => encode(&v).map(Some),
        }
    }
}

impl Reply for () {
    fn into_reply(self) -> Result<Option<Bytes>, String> {
        Ok(None)
    }
}

/// Encodes a message as JSON.
pub(crate) fn encode<T: Serialize + ?Sized>(v: &T) -> Result<Bytes, String> {
    serde_json::to_vec(v)
        .map(Bytes::from)
        .map_err(|e| format!("cannot encode: {e}"))
}

/// Decodes a JSON message.
pub(crate) fn decode<T: DeserializeOwned>(b: &[u8]) -> Result<T, String> {
    serde_json::from_slice(b).map_err(|e| format!("cannot decode: {e}"))
}

/// Erases a typed handler.
pub(crate) fn erase_handler<Req, Res, F, Fut>(f: F) -> HandlerFn
where
    Req: DeserializeOwned + Send + 'static,
    Res: Reply,
    F: Fn(App, Session, Req) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Res> + Send + 'static,
{
    Arc::new(move |app, session, payload| match decode::<Req>(&payload) {
        Ok(req) => {
            // `map`, not `async move { fut.await... }`: an async block would hold the handler's
            // future twice (captured, then awaited), doubling every boxed handler.
            Box::pin(f(app, session, req).map(Reply::into_reply))
        }
        Err(e) => Box::pin(std::future::ready(Err(e))),
    })
}

/// Erases a typed remote whose output `finish` turns into an encoded result or error text.
pub(crate) fn erase_remote<Args, Out, F, Fut>(
    f: F,
    finish: fn(Out) -> Result<Bytes, String>,
) -> RemoteFn
where
    Args: DeserializeOwned + Send + 'static,
    Out: Send + 'static,
    F: Fn(App, Args) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Out> + Send + 'static,
{
    Arc::new(move |app, payload| match decode::<Args>(&payload) {
        Ok(args) => Box::pin(f(app, args).map(finish)),
        Err(e) => Box::pin(std::future::ready(Err(e))),
    })
}
