//! Support for kennel's integration tests: a game client speaking PROTOCOL.md ([`client`]), a
//! fixture that boots the real chat-demo cluster in a temp dir on free ports ([`cluster`],
//! [`ports`]), chat load for abuse, fault and soak tests ([`load`]), a recording and tampering
//! TCP proxy for the internal links ([`proxy`]), the mydog peer
//! ([`mydog`]), the benchmark harness ([`bench`]), the headless-Chromium tooling of the chat
//! page ([`browser`]) and test certificates for TLS ([`tls`]).

pub mod bench;
pub mod browser;
pub mod client;
pub mod cluster;
pub mod load;
pub mod mydog;
pub mod ports;
pub mod proxy;
pub mod tls;

use std::time::Duration;

/// The deadline every wait in these tests lives under.
pub const TIMEOUT: Duration = Duration::from_secs(30);
