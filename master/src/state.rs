//! A server's state, in one place: what the supervisor knows of its process ([`Proc`]), what
//! the registry knows of its master link ([`LinkState`]), and the one state shown for it
//! ([`ServerState`]), derived from those two by [`ServerState::of`] and nowhere else.
//!
//! [`ServerState`] is what `kennel list` prints (lowercase names, `--json` too), what the
//! metrics label samples with, what `kennel restart` / `remove` / `start --daemon` wait on and
//! what the CLI link carries (`ServerStatus.state`, the proto enum `kennel.ServerState`: mapped
//! to and from it by [`ServerState::to_wire`] and [`ServerState::from_wire`] only).
//!
//! Layering: this module imports nothing of the master's own; every other module may use it.

use std::fmt;
use std::str::FromStr;
use std::time::Instant;

use kennel_proto::msg::ServerState as Wire;

/// What the master knows about one server's process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Proc {
    /// Not started by this master (it only accepts registrations).
    Unmanaged,
    /// Alive (as far as the master knows: its exit has not been seen yet).
    Running {
        pid: u32,
        since: Instant,
        /// Registered over its master link since this start.
        registered: bool,
        /// Sent SIGTERM/SIGKILL (stop sequence, `restart`, `remove`).
        signalled: bool,
        /// Started by an earlier master and adopted by this one.
        adopted: bool,
    },
    /// Waiting for its restart delay to pass (or to be started again after a failed spawn).
    Restarting,
    /// Exited and not restarted (the cluster is stopping, or its restart policy said so).
    Exited,
    /// Not restarted because it kept crashing.
    CrashLoop,
    /// Stopped by the operator (`kennel remove`) and not restarted.
    Removed,
}

/// What the master knows about one server's master link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LinkState {
    /// No live link.
    Down,
    /// Live, and the server reports.
    Live,
    /// Live, but the server has reported nothing for a while
    /// ([`crate::registry::SILENT_AFTER`]).
    Silent,
}

/// A server's state as `kennel list` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ServerState {
    /// Started, not registered yet.
    Starting,
    /// Registered, its master link live.
    Running,
    /// Registered, but no report for 5 s (hung, stopped, or cut off; the socket is open).
    Unreachable,
    /// Registered once since its start, but its master link is down.
    Unlinked,
    /// Sent SIGTERM/SIGKILL (stop sequence, `kennel restart`, `kennel remove`).
    Stopping,
    /// Waiting for its restart delay.
    Restarting,
    /// Exited and not restarted (its restart policy, or the cluster is stopping).
    Exited,
    /// Not restarted because it kept crashing (`kennel start <id>` starts it again).
    CrashLoop,
    /// Stopped by `kennel remove` and not restarted.
    Removed,
    /// Started by hand or by another supervisor, and registered.
    External,
    /// External and not registered.
    Down,
    /// A state this build does not know (a newer master sent it), or none was sent.
    Unknown,
}

impl ServerState {
    /// Every state a master reports, in the order the metrics list them ([`Unknown`] is not
    /// one).
    ///
    /// [`Unknown`]: ServerState::Unknown
    pub const ALL: [ServerState; 11] = [
        ServerState::Starting,
        ServerState::Running,
        ServerState::Unreachable,
        ServerState::Unlinked,
        ServerState::Stopping,
        ServerState::Restarting,
        ServerState::Exited,
        ServerState::CrashLoop,
        ServerState::Removed,
        ServerState::External,
        ServerState::Down,
    ];

    /// The state of a server whose process is `proc` and whose master link is `link`.
    pub(crate) fn of(proc: Proc, link: LinkState) -> ServerState {
        match (proc, link) {
            (
                Proc::Running {
                    signalled: true, ..
                },
                _,
            ) => ServerState::Stopping,
            (Proc::Running { .. }, LinkState::Silent) => ServerState::Unreachable,
            (Proc::Running { .. }, LinkState::Live) => ServerState::Running,
            (
                Proc::Running {
                    registered: true, ..
                },
                LinkState::Down,
            ) => ServerState::Unlinked,
            (Proc::Running { .. }, LinkState::Down) => ServerState::Starting,
            (Proc::Restarting, _) => ServerState::Restarting,
            (Proc::Exited, _) => ServerState::Exited,
            (Proc::CrashLoop, _) => ServerState::CrashLoop,
            (Proc::Removed, _) => ServerState::Removed,
            (Proc::Unmanaged, LinkState::Silent) => ServerState::Unreachable,
            (Proc::Unmanaged, LinkState::Live) => ServerState::External,
            (Proc::Unmanaged, LinkState::Down) => ServerState::Down,
        }
    }

    /// Its name: `running`, `crashloop`, ... (as `kennel list` and `--json` print it).
    pub const fn as_str(self) -> &'static str {
        match self {
            ServerState::Starting => "starting",
            ServerState::Running => "running",
            ServerState::Unreachable => "unreachable",
            ServerState::Unlinked => "unlinked",
            ServerState::Stopping => "stopping",
            ServerState::Restarting => "restarting",
            ServerState::Exited => "exited",
            ServerState::CrashLoop => "crashloop",
            ServerState::Removed => "removed",
            ServerState::External => "external",
            ServerState::Down => "down",
            ServerState::Unknown => "unknown",
        }
    }

    /// Its value on the wire (`ServerStatus.state`).
    pub fn to_wire(self) -> i32 {
        let wire = match self {
            ServerState::Starting => Wire::Starting,
            ServerState::Running => Wire::Running,
            ServerState::Unreachable => Wire::Unreachable,
            ServerState::Unlinked => Wire::Unlinked,
            ServerState::Stopping => Wire::Stopping,
            ServerState::Restarting => Wire::Restarting,
            ServerState::Exited => Wire::Exited,
            ServerState::CrashLoop => Wire::Crashloop,
            ServerState::Removed => Wire::Removed,
            ServerState::External => Wire::External,
            ServerState::Down => Wire::Down,
            ServerState::Unknown => Wire::Unknown,
        };
        wire as i32
    }

    /// The state a `ServerStatus.state` value stands for ([`ServerState::Unknown`] for a
    /// value this build does not know).
    pub fn from_wire(value: i32) -> ServerState {
        match Wire::try_from(value).unwrap_or(Wire::Unknown) {
            Wire::Starting => ServerState::Starting,
            Wire::Running => ServerState::Running,
            Wire::Unreachable => ServerState::Unreachable,
            Wire::Unlinked => ServerState::Unlinked,
            Wire::Stopping => ServerState::Stopping,
            Wire::Restarting => ServerState::Restarting,
            Wire::Exited => ServerState::Exited,
            Wire::Crashloop => ServerState::CrashLoop,
            Wire::Removed => ServerState::Removed,
            Wire::External => ServerState::External,
            Wire::Down => ServerState::Down,
            Wire::Unknown => ServerState::Unknown,
        }
    }
}

impl fmt::Display for ServerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// A name that is no [`ServerState`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown server state {0:?}")]
pub struct UnknownState(pub String);

impl FromStr for ServerState {
    type Err = UnknownState;

    fn from_str(s: &str) -> Result<ServerState, UnknownState> {
        ServerState::ALL
            .into_iter()
            .chain([ServerState::Unknown])
            .find(|v| v.as_str() == s)
            .ok_or_else(|| UnknownState(s.to_owned()))
    }
}

impl serde::Serialize for ServerState {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// The `ServerStatus` of server `id` of type `server_type` in `state` (a frontend when the type
/// is `connector`, as in chat-demo), every other field default: the fixture of the tests that
/// render lists (table, metrics).
#[cfg(test)]
pub(crate) fn status_fixture(
    id: &str,
    server_type: &str,
    state: ServerState,
) -> kennel_proto::msg::ServerStatus {
    kennel_proto::msg::ServerStatus {
        info: Some(kennel_proto::msg::ServerInfo {
            id: id.into(),
            server_type: server_type.into(),
            frontend: server_type == "connector",
            ..Default::default()
        }),
        state: state.to_wire(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every() -> impl Iterator<Item = ServerState> {
        ServerState::ALL.into_iter().chain([ServerState::Unknown])
    }

    /// The names `kennel list` (and `--json`) printed when the state was a string: scripts
    /// and the integration tests parse them.
    #[test]
    fn names_are_the_ones_list_always_printed() {
        let names: Vec<&str> = ServerState::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(
            names,
            [
                "starting",
                "running",
                "unreachable",
                "unlinked",
                "stopping",
                "restarting",
                "exited",
                "crashloop",
                "removed",
                "external",
                "down"
            ]
        );
    }

    #[test]
    fn every_state_round_trips_through_its_name_json_and_the_wire() {
        for s in every() {
            assert_eq!(s.as_str().parse::<ServerState>(), Ok(s));
            assert_eq!(s.to_string(), s.as_str());
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
            assert_eq!(ServerState::from_wire(s.to_wire()), s, "{s}");
        }
        assert_eq!(
            "Running".parse::<ServerState>(),
            Err(UnknownState("Running".to_owned()))
        );
    }

    /// Each state maps to the proto value of the same name (a swapped pair would round-trip
    /// and still be wrong on the wire), every proto value maps to a distinct state, and a
    /// value this build does not know reads as `unknown`.
    #[test]
    fn the_proto_mapping_pairs_equal_names_and_covers_every_value() {
        for s in every() {
            let wire = Wire::try_from(s.to_wire()).unwrap();
            assert_eq!(
                wire.as_str_name(),
                format!("SERVER_STATE_{}", s.as_str().to_uppercase()),
                "{s}"
            );
        }
        let mut seen = std::collections::HashSet::new();
        for v in 0.. {
            let Ok(wire) = Wire::try_from(v) else { break };
            let s = ServerState::from_wire(v);
            assert_eq!(s.to_wire(), wire as i32);
            assert!(seen.insert(s), "{v} and another value both map to {s}");
        }
        assert_eq!(seen.len(), every().count());
        assert_eq!(ServerState::from_wire(99), ServerState::Unknown);
        assert_eq!(ServerState::from_wire(-1), ServerState::Unknown);
    }

    /// A `ServerStatus` from a build where the state was a string does not decode as some
    /// state: the reader gets an error (see docs/reliability.md, "Decisions").
    #[test]
    fn a_string_state_from_an_older_build_is_a_decode_error() {
        use prost::Message;
        let mut old = vec![0x12, 7]; // field 2, length-delimited, 7 bytes
        old.extend_from_slice(b"running");
        let e = kennel_proto::msg::ServerStatus::decode(&old[..]).unwrap_err();
        assert!(e.to_string().contains("invalid wire type"), "{e}");
    }

    /// The one derivation: every process state under every link state.
    #[test]
    fn the_state_of_every_process_and_link() {
        use LinkState::{Down, Live, Silent};
        use ServerState as S;
        let running = |registered, signalled| Proc::Running {
            pid: 7,
            since: Instant::now(),
            registered,
            signalled,
            adopted: false,
        };
        let cases = [
            (
                running(false, false),
                [S::Starting, S::Running, S::Unreachable],
            ),
            (
                running(true, false),
                [S::Unlinked, S::Running, S::Unreachable],
            ),
            (running(true, true), [S::Stopping, S::Stopping, S::Stopping]),
            (
                running(false, true),
                [S::Stopping, S::Stopping, S::Stopping],
            ),
            (Proc::Restarting, [S::Restarting; 3]),
            (Proc::Exited, [S::Exited; 3]),
            (Proc::CrashLoop, [S::CrashLoop; 3]),
            (Proc::Removed, [S::Removed; 3]),
            (Proc::Unmanaged, [S::Down, S::External, S::Unreachable]),
        ];
        for (proc, want) in cases {
            for (link, want) in [Down, Live, Silent].into_iter().zip(want) {
                assert_eq!(ServerState::of(proc, link), want, "{proc:?} {link:?}");
            }
        }
    }
}
