//! A server's description on the wire ([`msg::ServerInfo`]): the one conversion from a config
//! entry (feature `config`: the master describes servers that have not registered, a server
//! describes itself when it registers), and the reading of the fields the wire encodes (a
//! client port of 0 is none; the entry's extra keys travel as a JSON object).
//!
//! The one in-memory description of a server is [`kennel_config::ServerInfo`] (a config
//! entry's `info`, and `kennel::ServerInfo`, a server's view of its peers); a peer's is built
//! from the wire by the `From` conversion here only.

use serde_json::{Map, Value};

use crate::msg;

impl msg::ServerInfo {
    /// A config entry as the cluster describes it, with the process id `pid` (0: not known).
    #[cfg(feature = "config")]
    pub fn from_config(s: &kennel_config::ServerConfig, pid: u32) -> msg::ServerInfo {
        let s = &s.info;
        msg::ServerInfo {
            id: s.id.clone(),
            server_type: s.server_type.clone(),
            host: s.host.clone(),
            port: u32::from(s.port),
            frontend: s.frontend,
            client_port: s.client_port.map_or(0, u32::from),
            pid,
            extra_json: serde_json::to_string(&s.extra).unwrap_or_default(),
        }
    }

    /// The RPC port (0 when the wire holds more than a port).
    pub fn rpc_port(&self) -> u16 {
        u16::try_from(self.port).unwrap_or(0)
    }

    /// The client port, if the server has one.
    pub fn client_port(&self) -> Option<u16> {
        u16::try_from(self.client_port).ok().filter(|p| *p != 0)
    }

    /// The entry's extra keys (empty when the JSON is not an object).
    pub fn extra(&self) -> Map<String, Value> {
        serde_json::from_str(&self.extra_json).unwrap_or_default()
    }
}

/// A peer as the cluster knows it: what it registered.
#[cfg(feature = "config")]
impl From<&msg::ServerInfo> for kennel_config::ServerInfo {
    fn from(s: &msg::ServerInfo) -> Self {
        kennel_config::ServerInfo {
            id: s.id.clone(),
            server_type: s.server_type.clone(),
            host: s.host.clone(),
            port: s.rpc_port(),
            frontend: s.frontend,
            client_port: s.client_port(),
            extra: s.extra(),
        }
    }
}

#[cfg(all(test, feature = "config"))]
mod tests {
    use super::*;

    #[test]
    fn a_config_entry_reads_back_the_same() {
        let mut extra = Map::new();
        extra.insert("threads".into(), Value::from(2));
        let cfg = kennel_config::ServerConfig {
            info: kennel_config::ServerInfo {
                id: "gate-1".into(),
                server_type: "gate".into(),
                host: "10.0.0.2".into(),
                port: 4010,
                frontend: true,
                client_port: Some(4000),
                extra: extra.clone(),
            },
            bin: Some("other".into()),
            args: vec!["x".into()],
            settings: Default::default(),
        };
        let w = msg::ServerInfo::from_config(&cfg, 77);
        assert_eq!(
            (w.id.as_str(), w.server_type.as_str(), w.pid),
            ("gate-1", "gate", 77)
        );
        assert_eq!(
            (w.rpc_port(), w.client_port(), w.extra()),
            (4010, Some(4000), extra)
        );
        // A peer's view of it is the entry's info.
        assert_eq!(kennel_config::ServerInfo::from(&w), cfg.info);
        let mut no_client_port = cfg.clone();
        no_client_port.info.client_port = None;
        let none = msg::ServerInfo::from_config(&no_client_port, 0);
        assert_eq!(none.client_port(), None);
        assert_eq!(kennel_config::ServerInfo::from(&none), no_client_port.info);
        let junk = msg::ServerInfo {
            extra_json: "[1]".into(),
            client_port: 70_000,
            ..none
        };
        assert!(junk.extra().is_empty());
        assert_eq!(junk.client_port(), None);
    }
}
