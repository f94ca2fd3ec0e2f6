//! Cluster-wide checks after expansion: unique server ids (the master's included) and no two
//! listeners on one `host:port` (RPC ports, frontend client ports and the master port).
//!
//! Hosts are compared as written: `localhost` and `127.0.0.1` are different hosts here.
//! A non-frontend's `clientPort` is kept in its config but is not a listener, so it is not
//! checked.

use std::collections::HashMap;

use crate::MasterConfig;
use crate::error::{ConfigError, Problem};
use crate::expand::Placed;
use crate::source::SourceFile;

/// Checks ids and addresses of the master and every expanded server.
pub(crate) fn check_cluster(
    master_file: &SourceFile,
    servers_file: &SourceFile,
    env: &str,
    master: &MasterConfig,
    servers: &[Placed],
) -> Result<(), ConfigError> {
    let master_owner = format!(
        "the master \"{}\" ({})",
        master.id,
        master_file.path.display()
    );
    let mut ids: HashMap<&str, String> = HashMap::new();
    ids.insert(&master.id, master_owner.clone());
    let mut addrs: HashMap<(&str, u16), String> = HashMap::new();
    addrs.insert((&master.host, master.port), master_owner);

    for placed in servers {
        let s = &placed.config;
        let fail = |problem| servers_file.invalid(env, Some(placed.entry.clone()), problem);
        if let Some(other) = ids.get(s.info.id.as_str()) {
            return Err(fail(Problem::DuplicateId {
                id: s.info.id.clone(),
                other: other.clone(),
            }));
        }
        ids.insert(&s.info.id, placed.entry.clone());

        let mut listeners = vec![("RPC port", s.info.port)];
        if s.info.frontend {
            listeners.extend(s.info.client_port.map(|p| ("client port", p)));
        }
        for (what, port) in listeners {
            if let Some(other) = addrs.get(&(s.info.host.as_str(), port)) {
                return Err(fail(Problem::AddressInUse {
                    id: s.info.id.clone(),
                    what,
                    host: s.info.host.clone(),
                    port,
                    other: other.clone(),
                }));
            }
            addrs.insert(
                (&s.info.host, port),
                format!("the {what} of server \"{}\" ({})", s.info.id, placed.entry),
            );
        }
    }
    Ok(())
}
