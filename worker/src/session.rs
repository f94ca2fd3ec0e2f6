//! [`Session`]: a game client's state. On its frontend the session is live (it owns the
//! connection: `bind`, `send`, `close`); a backend handler gets a copy that travelled with the
//! forwarded message (uid, frontend id, settings).
//!
//! Settings set with [`Session::set`] travel with every message the frontend forwards; the JSON
//! encoding of the settings is cached until the next change, so forwarding does not re-encode.

use std::sync::{Arc, Mutex, Weak};

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::frontend::{Conn, FrontendState};
use kennel_proto::msg;

/// A game client's session.
#[derive(Clone)]
pub struct Session {
    inner: Arc<Inner>,
}

struct Inner {
    /// Frontend server id the client is connected to.
    sid: String,
    /// Connection id on that frontend.
    conn_id: u64,
    /// Client's address.
    ip: String,
    state: Mutex<State>,
    /// The live connection (frontend sessions only).
    conn: Option<Arc<Conn>>,
    /// The frontend registry, for `bind` (frontend sessions only).
    frontend: Weak<FrontendState>,
}

#[derive(Default)]
struct State {
    uid: Option<u64>,
    settings: Map<String, Value>,
    /// Cached JSON of `settings`; `None` after a change.
    encoded: Option<Bytes>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("sid", &self.inner.sid)
            .field("conn_id", &self.inner.conn_id)
            .field("uid", &self.uid())
            .finish()
    }
}

impl Session {
    /// A live frontend session for a new connection.
    pub(crate) fn frontend(
        sid: String,
        conn: Arc<Conn>,
        ip: String,
        frontend: Weak<FrontendState>,
    ) -> Session {
        Session {
            inner: Arc::new(Inner {
                sid,
                conn_id: conn.id,
                ip,
                state: Mutex::new(State::default()),
                conn: Some(conn),
                frontend,
            }),
        }
    }

    /// A backend copy, from a forwarded message.
    pub(crate) fn from_proto(s: msg::Session) -> Session {
        let settings = match serde_json::from_slice::<Map<String, Value>>(&s.settings) {
            Ok(m) => m,
            Err(_) => Map::new(),
        };
        Session {
            inner: Arc::new(Inner {
                sid: s.sid,
                conn_id: s.conn_id,
                ip: s.ip,
                state: Mutex::new(State {
                    uid: s.uid,
                    settings,
                    encoded: if s.settings.is_empty() {
                        None
                    } else {
                        Some(s.settings)
                    },
                }),
                conn: None,
                frontend: Weak::new(),
            }),
        }
    }

    /// The copy that travels with a forwarded message.
    pub(crate) fn to_proto(&self) -> msg::Session {
        let mut st = self.inner.state.lock().unwrap();
        let settings = match &st.encoded {
            Some(b) => b.clone(),
            None if st.settings.is_empty() => Bytes::new(),
            None => {
                let b = Bytes::from(serde_json::to_vec(&st.settings).unwrap_or_default());
                st.encoded = Some(b.clone());
                b
            }
        };
        msg::Session {
            uid: st.uid,
            sid: self.inner.sid.clone(),
            conn_id: self.inner.conn_id,
            settings,
            ip: self.inner.ip.clone(),
        }
    }

    /// The bound user id, if any.
    pub fn uid(&self) -> Option<u64> {
        self.inner.state.lock().unwrap().uid
    }

    /// The id of the frontend server the client is connected to (mydog's `sid`).
    pub fn sid(&self) -> &str {
        &self.inner.sid
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
        let Some(frontend) = self.inner.frontend.upgrade() else {
            return false;
        };
        let mut st = self.inner.state.lock().unwrap();
        if st.uid.is_some() {
            return false;
        }
        if !frontend.bind_uid(uid, self.inner.conn_id) {
            return false;
        }
        st.uid = Some(uid);
        true
    }

    /// Reads a setting.
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Option<T> {
        let st = self.inner.state.lock().unwrap();
        st.settings.get(key).and_then(|v| T::deserialize(v).ok())
    }

    /// Sets a setting; it travels with every message this frontend forwards from now on.
    pub fn set<T: Serialize>(&self, key: &str, value: T) {
        let v = serde_json::to_value(value).unwrap_or(Value::Null);
        let mut st = self.inner.state.lock().unwrap();
        st.settings.insert(key.to_string(), v);
        st.encoded = None;
    }

    /// Removes a setting.
    pub fn delete(&self, key: &str) {
        let mut st = self.inner.state.lock().unwrap();
        if st.settings.remove(key).is_some() {
            st.encoded = None;
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
