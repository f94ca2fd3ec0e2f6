//! What flows into the master's single writer ([`crate::core::Core`]): one bounded mpsc of
//! [`Event`]s fed by the process watchers and timers of [`crate::supervisor`], the link tasks
//! of [`crate::listener`] (registrations, reports, CLI requests) and the scrapes of
//! [`crate::metrics`]. Requests carry a oneshot for the answer.
//!
//! Layering: this module imports nothing of the master's own, so every producer depends on
//! it and not on the core (no import cycles): `event` <- `supervisor`, `listener`, `metrics`,
//! `registry` <- `core` <- `master` (run, stop sequence) <- `cli`.

use std::io;

use kennel_proto::msg::{FromMaster, ListReply, Report, ServerInfo};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// What the event loop hears about.
#[derive(Debug)]
pub(crate) enum Event {
    /// A server's process ended (a child was reaped, or an adopted one's pidfd fired).
    Exited {
        index: usize,
        generation: u64,
        exit: Exit,
    },
    /// The SIGKILL delay after a `restart`/`remove` SIGTERM passed.
    KillDue { index: usize, generation: u64 },
    /// A restart delay passed.
    RestartDue { index: usize, generation: u64 },
    /// An authenticated server sent `Register`; the reply is its link id or the refusal.
    Register {
        /// The id the link authenticated as.
        authenticated: String,
        info: ServerInfo,
        tx: mpsc::Sender<FromMaster>,
        close: CancellationToken,
        reply: oneshot::Sender<Result<u64, String>>,
    },
    /// A registered link ended.
    LinkClosed { id: String, link_id: u64 },
    /// The CLI (or a metrics scrape) asks for the server table.
    List { reply: oneshot::Sender<ListReply> },
    /// The CLI asks to restart one server.
    Restart {
        id: String,
        reply: oneshot::Sender<Result<String, String>>,
    },
    /// The CLI asks to remove servers (by id and by type).
    Remove {
        ids: Vec<String>,
        types: Vec<String>,
        reply: oneshot::Sender<Result<String, String>>,
    },
    /// The CLI asks to start servers (removed ones, or ids new in the config file).
    Start {
        ids: Vec<String>,
        reply: oneshot::Sender<Result<String, String>>,
    },
    /// A server reported its client count, status columns and RPC counters.
    Report {
        id: String,
        link_id: u64,
        report: Report,
    },
    /// A server answered a `kennel send` command.
    CommandReply {
        id: String,
        link_id: u64,
        seq: u64,
        result: Result<String, String>,
    },
    /// The CLI asks to send a command to servers (by id and type; neither: every server).
    /// The reply lists each target with what to wait on, or why there is nothing to wait on.
    Send {
        ids: Vec<String>,
        types: Vec<String>,
        args: Vec<String>,
        reply: oneshot::Sender<Result<SendTargets, String>>,
    },
}

/// What a `kennel send` waits on for one server: its reply, or an `Err` receive when its
/// link closed first.
pub(crate) type Answer = oneshot::Receiver<Result<String, String>>;

/// Each target of a `kennel send`: its answer to wait for, or why it gets none.
pub(crate) type SendTargets = Vec<(String, Result<Answer, String>)>;

/// How a server's process ended.
#[derive(Debug)]
pub(crate) struct Exit {
    /// For the logs, e.g. `exit status: 1`.
    pub(crate) text: String,
    /// Whether it exited with status 0 (`None`: unknown, e.g. for an adopted server).
    pub(crate) success: Option<bool>,
}

impl Exit {
    /// The exit of a child the master reaped.
    pub(crate) fn of_child(status: io::Result<std::process::ExitStatus>) -> Exit {
        match status {
            Ok(s) => Exit {
                text: s.to_string(),
                success: Some(s.success()),
            },
            Err(e) => Exit {
                text: format!("unknown status ({e})"),
                success: None,
            },
        }
    }

    /// The exit of an adopted server, seen through its pidfd.
    pub(crate) fn of_adopted(watched: io::Result<()>) -> Exit {
        Exit {
            text: match watched {
                Ok(()) => "exited (status unknown: adopted, not our child)".to_owned(),
                Err(e) => format!("lost track of it ({e})"),
            },
            success: None,
        }
    }
}
