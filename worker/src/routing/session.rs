//! [`Session`]: a game client's state. On its frontend the session is live (it owns the
//! connection: `bind`, `send`, `close`); a backend handler gets a copy that travelled with the
//! forwarded message (uid, frontend id, settings).
//!
//! Settings set with [`Session::set`] travel with every message the frontend forwards; the JSON
//! encoding of the settings is cached until the next change, so forwarding does not re-encode.
//! Local settings ([`Session::set_local`]) never leave the frontend. A backend changes its copy
//! and calls [`Session::apply`] to update the frontend's live session.
//!
//! The settings are capped at [`SETTINGS_MAX`] bytes of JSON: they travel with every forwarded
//! message, so a game that let a client grow them would make each of its messages carry
//! megabytes. [`Session::set`] beyond the cap is an error and changes nothing.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::app::WeakApp;
use crate::edge::ClientSession;
use crate::edge::clients::{Clients, Conn};
use crate::{App, PushError, SessionError};
use kennel_proto::msg;

/// Largest JSON of a session's settings ([`Session::set`]), 64 KiB.
pub const SETTINGS_MAX: usize = 64 * 1024;

/// Counts what `serde_json` writes (the encoded length, without a buffer).
struct Counter(usize);

impl std::io::Write for Counter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0 += b.len();
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Bytes `"key":value,` takes in the settings' JSON.
fn entry_len(key: &str, value: &Value) -> usize {
    let mut c = Counter(2); // the colon and the comma
    let _ = serde_json::to_writer(&mut c, key);
    let _ = serde_json::to_writer(&mut c, value);
    c.0
}

/// A game client's session.
#[derive(Clone)]
pub struct Session {
    inner: Arc<Inner>,
}

struct Inner {
    /// The server id of the client's frontend.
    frontend_id: Arc<str>,
    /// Connection id on that frontend.
    conn_id: u64,
    /// Client's address.
    ip: String,
    state: Mutex<State>,
    /// The live connection (frontend sessions only).
    conn: Option<Arc<Conn>>,
    /// The frontend's registry, for `bind` (frontend sessions only).
    clients: Weak<Clients<Session>>,
    /// The app, for `send` and `apply`.
    app: WeakApp,
}

#[derive(Default)]
struct State {
    uid: Option<u64>,
    /// The settings; `None` until first read on a backend copy, whose settings are parsed
    /// from `encoded` only if a handler looks at them.
    settings: Option<Map<String, Value>>,
    /// Cached JSON of `settings`; `None` after a change.
    encoded: Option<Bytes>,
    /// The settings' JSON length (an upper bound: `{}` plus each entry's [`entry_len`]).
    size: usize,
    /// Frontend-only settings.
    local: Map<String, Value>,
}

impl State {
    /// The settings, parsed from `encoded` on first use.
    fn settings(&mut self) -> &mut Map<String, Value> {
        let encoded = &self.encoded;
        let size = &mut self.size;
        self.settings.get_or_insert_with(|| {
            *size = encoded.as_ref().map_or(2, |b| b.len().max(2));
            encoded
                .as_deref()
                .and_then(|b| serde_json::from_slice(b).ok())
                .unwrap_or_default()
        })
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("frontend_id", &self.inner.frontend_id)
            .field("conn_id", &self.inner.conn_id)
            .field("uid", &self.uid())
            .finish()
    }
}

impl Session {
    /// The session's state. A panic while it was locked (a game type's `Deserialize` in
    /// [`Session::get`]) leaves nothing half-written, so the lock is taken even if poisoned:
    /// the session stays usable and can still be ended.
    fn state(&self) -> MutexGuard<'_, State> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// A live frontend session for a new connection.
    pub(crate) fn live(app: &App, conn: Arc<Conn>, ip: String) -> Session {
        Session {
            inner: Arc::new(Inner {
                frontend_id: app.server_id().clone(),
                conn_id: conn.id,
                ip,
                state: Mutex::new(State::default()),
                conn: Some(conn),
                clients: Arc::downgrade(app.clients()),
                app: app.downgrade(),
            }),
        }
    }

    /// A backend copy, from a forwarded message (its settings are parsed when first read).
    /// `peer_id` is the id of the server that forwarded it: the session's frontend when the
    /// message leaves `frontend_id` empty (see [`Session::to_forward`]).
    pub(crate) fn from_proto(app: &App, s: msg::Session, peer_id: &Arc<str>) -> Session {
        let frontend_id = if s.frontend_id.is_empty() || s.frontend_id == **peer_id {
            peer_id.clone()
        } else {
            s.frontend_id.into()
        };
        Session {
            inner: Arc::new(Inner {
                frontend_id,
                conn_id: s.conn_id,
                ip: s.ip,
                state: Mutex::new(State {
                    uid: s.uid,
                    settings: None,
                    encoded: if s.settings.is_empty() {
                        None
                    } else {
                        Some(s.settings)
                    },
                    // Measured when the settings are first parsed.
                    size: 0,
                    local: Map::new(),
                }),
                conn: None,
                clients: Weak::new(),
                app: app.downgrade(),
            }),
        }
    }

    /// The copy that travels with a message its own frontend forwards: `frontend_id` is left
    /// empty, the receiver knows it from the link.
    pub(crate) fn to_forward(&self) -> msg::Session {
        self.proto(String::new())
    }

    /// The copy that travels with a forwarded message.
    pub(crate) fn to_proto(&self) -> msg::Session {
        self.proto(self.inner.frontend_id.to_string())
    }

    fn proto(&self, frontend_id: String) -> msg::Session {
        let mut st = self.state();
        let settings = match (&st.encoded, &st.settings) {
            (Some(b), _) => b.clone(),
            (None, None) => Bytes::new(),
            (None, Some(m)) if m.is_empty() => Bytes::new(),
            (None, Some(m)) => {
                let b = Bytes::from(serde_json::to_vec(m).unwrap_or_default());
                st.encoded = Some(b.clone());
                b
            }
        };
        msg::Session {
            uid: st.uid,
            frontend_id,
            conn_id: self.inner.conn_id,
            settings,
            ip: self.inner.ip.clone(),
        }
    }

    /// The bound user id, if any.
    pub fn uid(&self) -> Option<u64> {
        self.state().uid
    }

    /// The id of the frontend server the client is connected to.
    pub fn frontend_id(&self) -> &str {
        &self.inner.frontend_id
    }

    /// The same as [`Session::frontend_id`], by mydog's name (`session.sid`).
    pub fn sid(&self) -> &str {
        &self.inner.frontend_id
    }

    /// The frontend's id, shared.
    pub(crate) fn frontend_id_shared(&self) -> &Arc<str> {
        &self.inner.frontend_id
    }

    /// The connection's id on its frontend.
    pub fn conn_id(&self) -> u64 {
        self.inner.conn_id
    }

    /// The client's IP address.
    pub fn ip(&self) -> &str {
        &self.inner.ip
    }

    /// Binds `uid` to this client (frontend only). Returns `false` if the session is already
    /// bound, if `uid` is bound to another client of this frontend, or on a backend copy.
    pub fn bind(&self, uid: u64) -> bool {
        let Some(clients) = self.inner.clients.upgrade() else {
            return false;
        };
        let mut st = self.state();
        if st.uid.is_some() {
            return false;
        }
        if !clients.bind_uid(uid, self.inner.conn_id) {
            return false;
        }
        st.uid = Some(uid);
        true
    }

    /// Reads a setting.
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Option<T> {
        let mut st = self.state();
        st.settings().get(key).and_then(|v| T::deserialize(v).ok())
    }

    /// Sets a setting; it travels with every message this frontend forwards from now on.
    /// Fails, changing nothing, when the value does not serialize or the settings would
    /// exceed [`SETTINGS_MAX`] bytes of JSON.
    pub fn set<T: Serialize>(&self, key: &str, value: T) -> Result<(), SessionError> {
        let v = serde_json::to_value(value).map_err(|e| SessionError::Encode {
            key: key.to_string(),
            message: e.to_string(),
        })?;
        let add = entry_len(key, &v);
        let mut st = self.state();
        let old = st.settings().get(key).map_or(0, |o| entry_len(key, o));
        let size = (st.size + add).saturating_sub(old);
        if size > SETTINGS_MAX {
            return Err(SessionError::TooLarge {
                key: key.to_string(),
                size,
                max: SETTINGS_MAX,
            });
        }
        st.settings().insert(key.to_string(), v);
        st.size = size;
        st.encoded = None;
        Ok(())
    }

    /// Removes a setting.
    pub fn delete(&self, key: &str) {
        let mut st = self.state();
        if let Some(old) = st.settings().remove(key) {
            st.size = st.size.saturating_sub(entry_len(key, &old));
            st.encoded = None;
        }
    }

    /// Reads a frontend-only setting.
    pub fn get_local<T: DeserializeOwned>(&self, key: &str) -> Option<T> {
        let st = self.state();
        st.local.get(key).and_then(|v| T::deserialize(v).ok())
    }

    /// Sets a frontend-only setting: it never travels with forwarded messages.
    pub fn set_local<T: Serialize>(&self, key: &str, value: T) {
        let v = serde_json::to_value(value).unwrap_or(Value::Null);
        self.state().local.insert(key.to_string(), v);
    }

    /// Removes a frontend-only setting.
    pub fn delete_local(&self, key: &str) {
        self.state().local.remove(key);
    }

    /// Whether this is the live session on the client's frontend (not a backend copy).
    pub fn is_live(&self) -> bool {
        self.inner.conn.is_some()
    }

    /// The complete settings as JSON (for `apply`).
    pub(crate) fn settings_json(&self) -> Bytes {
        self.to_forward().settings
    }

    /// Replaces the settings (a backend's `apply`); refused beyond [`SETTINGS_MAX`].
    pub(crate) fn replace_settings(&self, json: &[u8]) -> Result<(), String> {
        if json.len() > SETTINGS_MAX {
            return Err(format!(
                "{} bytes of settings, more than the {SETTINGS_MAX} allowed",
                json.len()
            ));
        }
        let settings: Map<String, Value> = if json.is_empty() {
            Map::new()
        } else {
            serde_json::from_slice(json).map_err(|e| e.to_string())?
        };
        let mut st = self.state();
        st.size = settings.iter().map(|(k, v)| entry_len(k, v)).sum::<usize>() + 2;
        st.settings = Some(settings);
        st.encoded = None;
        Ok(())
    }

    /// Sends this session's settings to its frontend, which replaces the live session's
    /// settings with them (the next message it forwards carries them). On the frontend itself
    /// this does nothing: the live session is already current.
    pub async fn apply(&self) {
        if self.is_live() {
            return;
        }
        if let Some(app) = self.inner.app.upgrade() {
            crate::routing::deliver::apply_session(&app, self).await;
        }
    }

    /// Pushes `msg` as `route` to this client (from the frontend or any backend).
    pub async fn send(&self, route: &str, msg: &impl Serialize) -> Result<(), PushError> {
        match self.inner.app.upgrade() {
            Some(app) => app.send_to(self, route, msg).await,
            None => Ok(()),
        }
    }

    /// The live connection, on the frontend.
    pub(crate) fn conn(&self) -> Option<&Arc<Conn>> {
        self.inner.conn.as_ref()
    }

    /// Closes the client's connection (frontend only; queued frames are flushed first).
    pub fn close(&self) {
        if let Some(c) = &self.inner.conn {
            c.close();
        }
    }
}

impl ClientSession for Session {
    fn uid(&self) -> Option<u64> {
        Session::uid(self)
    }

    fn ip(&self) -> &str {
        Session::ip(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend_copy(settings: &str) -> Session {
        Session {
            inner: Arc::new(Inner {
                frontend_id: "gate-1".into(),
                conn_id: 1,
                ip: String::new(),
                state: Mutex::new(State {
                    encoded: (!settings.is_empty()).then(|| Bytes::from(settings.to_owned())),
                    ..State::default()
                }),
                conn: None,
                clients: Weak::new(),
                app: WeakApp::default(),
            }),
        }
    }

    #[test]
    fn settings_are_capped_in_bytes_and_a_refused_set_changes_nothing() {
        let s = backend_copy(r#"{"room":7}"#);
        let big = "x".repeat(SETTINGS_MAX);
        let err = s.set("pad", &big).unwrap_err();
        assert!(matches!(err, SessionError::TooLarge { ref key, .. } if key == "pad"));
        assert!(err.to_string().contains("65536"), "{err}");
        assert_eq!(s.get::<u32>("room"), Some(7));
        assert_eq!(s.get::<String>("pad"), None);
        // Up to the cap it fits; replacing a value counts the new one, not both.
        let fits = "y".repeat(SETTINGS_MAX - 100);
        s.set("pad", &fits).unwrap();
        s.set("pad", &fits).unwrap();
        assert!(s.set("more", "z".repeat(200)).is_err());
        s.delete("pad");
        s.set("more", "z".repeat(200)).unwrap();
        // The real encoding stays within the estimate.
        let json = s.settings_json();
        assert!(
            json.len() <= s.inner.state.lock().unwrap().size,
            "{}",
            json.len()
        );
        // An apply from a peer beyond the cap is refused.
        let huge = format!("{{\"k\":\"{}\"}}", "q".repeat(SETTINGS_MAX));
        assert!(s.replace_settings(huge.as_bytes()).is_err());
    }
}
