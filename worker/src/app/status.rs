//! What a server says about itself every second while registered ([`App::report`]): its
//! client count, the app's own `kennel list` columns ([`App::set_status`],
//! [`App::status_fn`]), and the counters of [`crate::stats`]. The master shows the columns in
//! `kennel list` and exports the counters as Prometheus metrics.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use kennel_proto::msg::Report;

use crate::App;

/// Computes status columns when a report is sent.
type StatusFn = Arc<dyn Fn(&App) -> Vec<(String, String)> + Send + Sync>;

/// The app's columns: values set, and functions computing more.
#[derive(Default)]
pub(crate) struct Status {
    values: Mutex<BTreeMap<String, String>>,
    fns: Mutex<Vec<StatusFn>>,
}

impl App {
    /// Sets one of this server's own `kennel list` columns (`key` is the column, shown for
    /// every server; `-` where a server has no value). Sent to the master with the next
    /// per-second report; `list --json` has them in `status`.
    pub fn set_status(&self, key: impl Into<String>, value: impl ToString) -> &Self {
        self.inner
            .status
            .values
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.into(), value.to_string());
        self
    }

    /// Registers a function computing some of this server's `kennel list` columns, called
    /// before each per-second report (e.g. `vec![("rooms".into(), n.to_string())]`). Keep it
    /// quick: it runs on the master link's task.
    pub fn status_fn<F>(&self, f: F) -> &Self
    where
        F: Fn(&App) -> Vec<(String, String)> + Send + Sync + 'static,
    {
        self.inner
            .status
            .fns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Arc::new(f));
        self
    }

    /// The app's columns now: the values set with `set_status`, then those of the status
    /// functions (which win on a shared key; each behind a panic boundary).
    fn status_columns(&self) -> HashMap<String, String> {
        let status = &self.inner.status;
        let mut out: HashMap<String, String> = status
            .values
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .into_iter()
            .collect();
        let fns = status.fns.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for f in fns {
            if let Ok(columns) = self.guard("status_fn", "status_fn", None, || f(self)) {
                out.extend(columns);
            }
        }
        out
    }

    /// This server's per-second report: client count, the app's status columns, RPC, panic
    /// and drop counters.
    pub(crate) fn report(&self) -> Report {
        let stats = self.stats();
        Report {
            clients: u32::try_from(self.client_count()).unwrap_or(u32::MAX),
            status: self.status_columns(),
            rpc: Some(stats.rpc()),
            panics: stats.panics(),
            dropped: stats.drops.snapshot(),
        }
    }
}
