//! Prometheus metrics: the opt-in HTTP listener (`"metrics": {"port": N, "host": "127.0.0.1"}`
//! in the env's entry of master.json; absent, nothing listens) and the text exposition of the
//! cluster.
//!
//! A scrape asks the event loop for the same [`ListReply`] `kennel list` gets and renders it:
//! servers by state, restarts, rss, cpu, uptime, clients of frontends, and each server's RPC
//! counters and call latency histogram, and the panics caught in its game code by route
//! (`kennel_panics_total`), as the server last reported them (cumulative since that server
//! process started).
//!
//! Decisions: the text is rendered by hand from the reply (a few dozen lines) rather than
//! through a global `metrics` recorder, because every value is a snapshot the master already
//! holds (the servers send cumulative counters), so there is nothing to record between
//! scrapes; `axum` (already in the workspace for chat-demo) serves `GET /metrics`.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use kennel_config::MasterConfig;
use kennel_proto::msg::{ListReply, ServerStatus};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::MasterError;
use crate::event::Event;
use crate::state::ServerState;

/// How long a scrape waits for the event loop.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the metrics listener binds (`"metrics"` in master.json).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MetricsConfig {
    /// Host or IP to bind.
    pub(crate) host: String,
    /// Port (0: any free port, printed at start).
    pub(crate) port: u16,
}

impl MetricsConfig {
    /// The `"metrics"` setting of the master entry; `None` when absent.
    pub(crate) fn of(master: &MasterConfig) -> Option<MetricsConfig> {
        let m = master.settings.metrics.as_ref()?;
        Some(MetricsConfig {
            host: m.host.clone(),
            port: m.port,
        })
    }

    /// Binds the listener.
    pub(crate) async fn bind(&self) -> Result<TcpListener, MasterError> {
        TcpListener::bind((self.host.as_str(), self.port))
            .await
            .map_err(|e| MasterError::Setting {
                what: format!(
                    "master.json metrics: cannot listen on {}:{}: {e}",
                    self.host, self.port
                ),
            })
    }
}

/// Serves `GET /metrics` on `listener` until `stop` is cancelled.
pub(crate) async fn serve(
    listener: TcpListener,
    events: mpsc::Sender<Event>,
    stop: CancellationToken,
) {
    let app = Router::new()
        .route("/metrics", get(scrape))
        .with_state(events);
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
    {
        warn!("metrics listener failed: {e}");
    }
}

async fn scrape(State(events): State<mpsc::Sender<Event>>) -> Response {
    let (reply, rx) = oneshot::channel();
    let asked = events.send(Event::List { reply }).await.is_ok();
    match tokio::time::timeout(SCRAPE_TIMEOUT, rx).await {
        Ok(Ok(list)) if asked => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            render(&list),
        )
            .into_response(),
        _ => (
            StatusCode::SERVICE_UNAVAILABLE,
            "the master is not answering (stopping?)\n",
        )
            .into_response(),
    }
}

/// A label value with `\`, `"` and newlines escaped.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Writes `# HELP` and `# TYPE` of one metric family.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A server's label set (`server="..",type=".."`), whether it is a frontend, and its status.
type Labelled<'a> = (String, bool, &'a ServerStatus);

/// A family with one sample per server that has a value: `name{server="..",type=".."} value`.
fn per_server<V: std::fmt::Display>(
    out: &mut String,
    (name, kind, help): (&str, &str, &str),
    servers: &[Labelled<'_>],
    value: impl Fn(bool, &ServerStatus) -> Option<V>,
) {
    family(out, name, kind, help);
    for (l, frontend, s) in servers {
        if let Some(v) = value(*frontend, s) {
            let _ = writeln!(out, "{name}{{{l}}} {v}");
        }
    }
}

/// A family with one sample per server and key of its `counts` (in key order):
/// `name{server="..",type="..",<label>="key"} n`.
fn per_server_by(
    out: &mut String,
    (name, kind, help): (&str, &str, &str),
    label: &str,
    servers: &[Labelled<'_>],
    counts: impl Fn(&ServerStatus) -> Option<&HashMap<String, u64>>,
) {
    family(out, name, kind, help);
    for (l, _, s) in servers {
        let Some(counts) = counts(s) else { continue };
        let sorted: BTreeMap<_, _> = counts.iter().collect();
        for (key, n) in sorted {
            let _ = writeln!(out, "{name}{{{l},{label}=\"{}\"}} {n}", escape(key));
        }
    }
}

/// The cluster in the Prometheus text format (version 0.0.4).
pub(crate) fn render(list: &ListReply) -> String {
    let mut out = String::new();
    // (server label set, status) for each server with its info.
    let servers: Vec<Labelled<'_>> = list
        .servers
        .iter()
        .map(|s| {
            let info = s.info.clone().unwrap_or_default();
            let labels = format!(
                "server=\"{}\",type=\"{}\"",
                escape(&info.id),
                escape(&info.server_type)
            );
            (labels, info.frontend, s)
        })
        .collect();

    family(
        &mut out,
        "kennel_cluster_ready",
        "gauge",
        "1 when every server the master starts has registered at least once.",
    );
    let _ = writeln!(out, "kennel_cluster_ready {}", u8::from(list.ready));

    family(
        &mut out,
        "kennel_servers",
        "gauge",
        "Configured servers by state.",
    );
    // Every state a master reports has a sample (0 when no server is in it), in the order of
    // `ServerState::ALL`.
    let mut by_state: BTreeMap<ServerState, u64> =
        ServerState::ALL.iter().map(|s| (*s, 0)).collect();
    for s in &list.servers {
        *by_state.entry(ServerState::from_wire(s.state)).or_default() += 1;
    }
    for (state, n) in &by_state {
        let _ = writeln!(out, "kennel_servers{{state=\"{state}\"}} {n}");
    }

    family(
        &mut out,
        "kennel_server_state",
        "gauge",
        "1 for each server, labelled with its current state.",
    );
    for (l, _, s) in &servers {
        let _ = writeln!(
            out,
            "kennel_server_state{{{l},state=\"{}\"}} 1",
            ServerState::from_wire(s.state)
        );
    }

    per_server(
        &mut out,
        (
            "kennel_server_restarts_total",
            "counter",
            "Restarts of the server by this master.",
        ),
        &servers,
        |_, s| Some(s.restarts),
    );
    per_server(
        &mut out,
        (
            "kennel_server_uptime_seconds",
            "gauge",
            "Seconds since the server process started (running servers).",
        ),
        &servers,
        |_, s| (s.pid != 0).then(|| s.uptime_ms as f64 / 1000.0),
    );
    per_server(
        &mut out,
        (
            "kennel_server_rss_bytes",
            "gauge",
            "Resident memory of the server process (local servers, sampled every second).",
        ),
        &servers,
        |_, s| s.rss_bytes,
    );
    per_server(
        &mut out,
        (
            "kennel_server_cpu_percent",
            "gauge",
            "CPU use of the server process over the last second (100 = one core).",
        ),
        &servers,
        |_, s| s.cpu_percent,
    );
    per_server(
        &mut out,
        (
            "kennel_frontend_clients",
            "gauge",
            "Connected clients of a frontend, as it last reported.",
        ),
        &servers,
        |frontend, s| s.clients.filter(|_| frontend),
    );

    let rpc: Vec<_> = servers
        .iter()
        .filter_map(|(l, _, s)| s.rpc.as_ref().map(|r| (l, r)))
        .collect();
    per_server(
        &mut out,
        (
            "kennel_rpc_calls_total",
            "counter",
            "RPC calls made by the server (Rpc::call), ok or not.",
        ),
        &servers,
        |_, s| s.rpc.as_ref().map(|r| r.calls),
    );
    per_server(
        &mut out,
        (
            "kennel_rpc_notifies_total",
            "counter",
            "RPC notifies sent by the server (Rpc::notify, once per target).",
        ),
        &servers,
        |_, s| s.rpc.as_ref().map(|r| r.notifies),
    );
    per_server_by(
        &mut out,
        (
            "kennel_rpc_errors_total",
            "counter",
            "Failed RPC calls and notifies of the server, by kind.",
        ),
        "kind",
        &servers,
        |s| s.rpc.as_ref().map(|r| &r.errors),
    );
    per_server_by(
        &mut out,
        (
            "kennel_panics_total",
            "counter",
            "Panics caught in the server's game code, by route (or callback name, e.g. on_client_off); each failed only its own request or call.",
        ),
        "route",
        &servers,
        |s| Some(&s.panics),
    );
    family(
        &mut out,
        "kennel_rpc_call_duration_seconds",
        "histogram",
        "Latency of the server's RPC calls.",
    );
    for (l, r) in &rpc {
        for (bound, n) in r.latency_bounds.iter().zip(&r.latency_counts) {
            let _ = writeln!(
                out,
                "kennel_rpc_call_duration_seconds_bucket{{{l},le=\"{bound}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "kennel_rpc_call_duration_seconds_bucket{{{l},le=\"+Inf\"}} {}",
            r.latency_count
        );
        let _ = writeln!(
            out,
            "kennel_rpc_call_duration_seconds_sum{{{l}}} {}",
            r.latency_sum
        );
        let _ = writeln!(
            out,
            "kennel_rpc_call_duration_seconds_count{{{l}}} {}",
            r.latency_count
        );
    }
    per_server_by(
        &mut out,
        (
            "kennel_dropped_total",
            "counter",
            "Client messages dropped and clients closed by a limit, by reason (forward: a message \
             the frontend could not forward, its backend's link full, congested or gone; \
             peer_message: a reply or push to a congested or gone link; rate_limited; \
             rate_limit_close; send_queue_close).",
        ),
        "reason",
        &servers,
        |s| Some(&s.dropped),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::status_fixture;
    use kennel_proto::msg::RpcStats;

    #[test]
    fn renders_states_resources_and_histogram() {
        let list = ListReply {
            ready: true,
            servers: vec![
                ServerStatus {
                    pid: 10,
                    uptime_ms: 1500,
                    restarts: 2,
                    rss_bytes: Some(4096),
                    cpu_percent: Some(1.5),
                    clients: Some(3),
                    rpc: Some(RpcStats {
                        calls: 5,
                        notifies: 1,
                        errors: [("timeout".to_owned(), 2)].into(),
                        latency_bounds: vec![0.001, 0.01],
                        latency_counts: vec![1, 3],
                        latency_count: 5,
                        latency_sum: 0.25,
                    }),
                    panics: [("connector.main.boom".to_owned(), 3)].into(),
                    dropped: [("rate_limited".to_owned(), 4)].into(),
                    ..status_fixture("connector-server-1", "connector", ServerState::Running)
                },
                status_fixture("chat\"1", "chat", ServerState::CrashLoop),
            ],
        };
        let text = render(&list);
        let c = "server=\"connector-server-1\",type=\"connector\"";
        for line in [
            "kennel_cluster_ready 1".to_owned(),
            "kennel_servers{state=\"running\"} 1".to_owned(),
            "kennel_servers{state=\"crashloop\"} 1".to_owned(),
            "kennel_servers{state=\"removed\"} 0".to_owned(),
            format!("kennel_server_restarts_total{{{c}}} 2"),
            format!("kennel_server_rss_bytes{{{c}}} 4096"),
            format!("kennel_server_cpu_percent{{{c}}} 1.5"),
            format!("kennel_server_uptime_seconds{{{c}}} 1.5"),
            format!("kennel_frontend_clients{{{c}}} 3"),
            format!("kennel_rpc_calls_total{{{c}}} 5"),
            format!("kennel_rpc_notifies_total{{{c}}} 1"),
            format!("kennel_dropped_total{{{c},reason=\"rate_limited\"}} 4"),
            format!("kennel_rpc_errors_total{{{c},kind=\"timeout\"}} 2"),
            format!("kennel_panics_total{{{c},route=\"connector.main.boom\"}} 3"),
            format!("kennel_rpc_call_duration_seconds_bucket{{{c},le=\"0.01\"}} 3"),
            format!("kennel_rpc_call_duration_seconds_bucket{{{c},le=\"+Inf\"}} 5"),
            format!("kennel_rpc_call_duration_seconds_sum{{{c}}} 0.25"),
            "kennel_server_state{server=\"chat\\\"1\",type=\"chat\",state=\"crashloop\"} 1"
                .to_owned(),
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        // A server that is not running has no uptime, rss or rpc sample.
        assert!(!text.contains("kennel_server_uptime_seconds{server=\"chat"));
        assert!(!text.contains("kennel_rpc_calls_total{server=\"chat"));
    }
}
