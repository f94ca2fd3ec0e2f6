//! kennel-client: a game client speaking kennel's (and mydog 2.x's) client protocol
//! (`PROTOCOL.md`) over TCP or WebSocket, either over TLS ([`TlsOptions`]: TLS over TCP, or
//! `wss://`). It is the way to write bots, load tests and integration tests against a kennel
//! (or mydog) frontend.
//!
//! - **Handshake** with the route list cached by md5 per address ([`RouteCache`]): a reconnect
//!   sends the cached md5 and the server skips resending the list, as mydog clients do.
//! - **Requests**: [`Client::request`] sends JSON on a route name and awaits the typed reply.
//!   Replies are matched by cmd, in order per cmd (as mydog answers them). Every request has a
//!   timeout (10 s by default, [`ClientBuilder::request_timeout`]).
//! - **Notifications** ([`Client::notify`]) expect no reply; **pushes** reach
//!   [`Client::on`] handlers and [`Client::subscribe`] streams.
//! - **Heartbeats** every `heartbeat` seconds the server announced; silence past twice that
//!   closes the connection ([`Error::Closed`]).
//! - Errors are one enum, [`Error`]: `Closed`, `Timeout`, `UnknownRoute`, `Decode`, `Encode`,
//!   `Io`, `Handshake`, `Tls`.
//!
//! Each connection runs a reader task and a writer task; messages are encoded straight into one
//! reused buffer and written in batches. For load generators that drive a connection
//! themselves, [`ClientBuilder::connect_raw`] hands out the handshaken [`FrameReader`] and
//! [`FrameWriter`] (push frames, flush once, read replies in order).
//!
//! # A bot
//!
//! ```no_run
//! use std::time::Duration;
//! use kennel_client::{Client, Result};
//! use serde_json::{Value, json};
//!
//! # async fn bot() -> Result<()> {
//! let client = Client::builder("127.0.0.1:4001")   // `.ws()` for a WebSocket frontend
//!     .request_timeout(Duration::from_secs(5))
//!     .connect()
//!     .await?;
//! // Pushes: a handler (runs on the reader task) or a stream.
//! client.on("chat.main.onChat", |push| println!("chat: {}", String::from_utf8_lossy(&push.payload)))?;
//! let mut chat = client.subscribe("chat.main.onChat")?;
//!
//! let login: Value = client.request("connector.main.login", &json!({"uid": 42, "room": 1})).await?;
//! assert_eq!(login["code"], 0);
//! let _: Value = client.request("chat.main.join", &json!({})).await?;
//! client.notify("chat.main.send", &json!({"text": "hello"}))?;
//! let echoed: Value = chat.recv_json(Duration::from_secs(5)).await?;
//! assert_eq!(echoed["u"], 42);
//! client.close().await;
//! # Ok(()) }
//! ```
//!
//! # A load loop on the raw connection
//!
//! ```no_run
//! use kennel_client::{Client, Frame, Result};
//!
//! # async fn load() -> Result<()> {
//! let conn = Client::builder("127.0.0.1:4001").connect_raw().await?;
//! let cmd = conn.handshake.routes.cmd("connector.main.echo")?;
//! let (mut rd, mut wr) = (conn.reader, conn.writer);
//! for _ in 0..16 {
//!     wr.push_message(cmd, b"{\"n\":1}");
//! }
//! wr.flush().await?;
//! let mut replies = 0;
//! while replies < 16 {
//!     if let Frame::Message { .. } = rd.next().await? {
//!         replies += 1;
//!     }
//! }
//! # Ok(()) }
//! ```

mod client;
mod conn;
mod error;
mod tls;

pub use client::{Client, ClientBuilder, Push, PushStream};
pub use conn::{
    Connection, FrameReader, FrameWriter, Handshake, Options, RouteCache, Routes, Transport,
};
pub use error::{Error, Result};
pub use kennel_proto::client::{Frame, HandshakeReply};
pub use tls::TlsOptions;
