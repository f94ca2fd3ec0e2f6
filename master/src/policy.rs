//! Restart policies and crash-loop detection, read from the configuration (typed and checked
//! by kennel-config when the project loads, [`kennel_config::settings`]):
//!
//! - a server entry's `"restart": "always" | "on-failure" | "never"` in `servers.json`
//!   (default `always`); every server the entry expands to gets it, so it is set per type or
//!   per server by where it is written. `on-failure` does not restart a server that exited
//!   with status 0; an adopted server's exit status is unknown and counts as a failure.
//! - a server entry's `"external": true`: the master never starts it (see
//!   [`crate::supervisor`]);
//! - `crashLoop: {"restarts": 5, "windowSecs": 60}` in `master.json`: a server that would be
//!   restarted while it has already been restarted `restarts` times within the last
//!   `windowSecs` seconds is not restarted: it is marked `crashloop` (`kennel start <id>` or
//!   `kennel restart <id>` starts it again).

pub(crate) use kennel_config::settings::{CrashLoop, RestartPolicy};
