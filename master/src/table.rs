//! `kennel list` output: [`ServerRow`] (one per server, also the `--json` shape) and the plain
//! aligned text table.

use std::collections::{BTreeMap, BTreeSet};

use kennel_proto::msg::{ListReply, ServerStatus};
use serde::Serialize;

use crate::state::ServerState;

/// One server as `kennel list` shows it; `--json` prints an array of these.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerRow {
    /// Server id.
    pub id: String,
    /// Server type.
    #[serde(rename = "type")]
    pub server_type: String,
    /// Its state; `--json` prints the lowercase name: `starting`, `running`, `unreachable`
    /// (registered, but no report for 5 s: hung, stopped or cut off), `unlinked`,
    /// `restarting`, `stopping`, `exited`, `crashloop`, `removed`, `external` or `down`
    /// (external, not registered).
    pub state: ServerState,
    /// Process id, when running (on its own host for remote servers: see `remote`).
    pub pid: Option<u32>,
    /// Started by an earlier master and adopted by this one.
    pub adopted: bool,
    /// Resident memory in bytes (sampled every second).
    pub rss_bytes: Option<u64>,
    /// CPU use in percent of one core over the last second.
    pub cpu_percent: Option<f64>,
    /// Milliseconds since the process started (or registered, for external servers).
    pub uptime_ms: Option<u64>,
    /// How many times the master restarted it.
    pub restarts: u32,
    /// Connected clients, as the server last reported (frontends; backends report 0).
    pub clients: Option<u32>,
    /// Started on another host through the launcher.
    pub remote: bool,
    /// Started by hand or by another supervisor, never by the master.
    pub external: bool,
    /// RPC host.
    pub host: String,
    /// RPC port.
    pub port: u32,
    /// Whether clients connect to it.
    pub frontend: bool,
    /// Client port (frontends).
    pub client_port: Option<u32>,
    /// The app's own columns (`App::set_status` / `App::status_fn`), as last reported.
    pub status: BTreeMap<String, String>,
}

impl From<&ServerStatus> for ServerRow {
    fn from(s: &ServerStatus) -> ServerRow {
        let info = s.info.clone().unwrap_or_default();
        let running = s.pid != 0;
        ServerRow {
            id: info.id,
            server_type: info.server_type,
            state: ServerState::from_wire(s.state),
            pid: running.then_some(s.pid),
            adopted: s.adopted,
            rss_bytes: s.rss_bytes,
            cpu_percent: s.cpu_percent,
            uptime_ms: running.then_some(s.uptime_ms),
            restarts: s.restarts,
            clients: s.clients,
            remote: s.remote,
            external: s.external,
            host: info.host,
            port: info.port,
            frontend: info.frontend,
            client_port: (info.client_port != 0).then_some(info.client_port),
            status: s
                .status
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }
    }
}

/// The rows of a `list` reply, in the master's (config) order.
pub fn rows(reply: &ListReply) -> Vec<ServerRow> {
    reply.servers.iter().map(ServerRow::from).collect()
}

/// `1d02h`, `3h04m`, `5m06s`, `7s`.
pub fn format_uptime(ms: u64) -> String {
    let s = ms / 1000;
    let (d, h, m, s) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    if d > 0 {
        format!("{d}d{h:02}h")
    } else if h > 0 {
        format!("{h}h{m:02}m")
    } else if m > 0 {
        format!("{m}m{s:02}s")
    } else {
        format!("{s}s")
    }
}

/// `512K`, `12.3M`, `1.50G`.
pub fn format_bytes(bytes: u64) -> String {
    const K: f64 = 1024.0;
    let b = bytes as f64;
    if b < K * K {
        format!("{:.0}K", b / K)
    } else if b < K * K * K {
        format!("{:.1}M", b / K / K)
    } else {
        format!("{:.2}G", b / K / K / K)
    }
}

/// The rows as an aligned text table with a header: id, type, state, pid (`pid@host` for a
/// remote server), rss, cpu%, uptime, restarts, clients (frontends), then the app's own
/// columns (the union of every server's status keys, sorted; `-` where a server has none).
pub fn render_table(rows: &[ServerRow]) -> String {
    let extra: BTreeSet<&str> = rows
        .iter()
        .flat_map(|r| r.status.keys().map(String::as_str))
        .collect();
    let extra_headers: Vec<String> = extra.iter().map(|k| k.to_uppercase()).collect();
    let mut header = vec![
        "ID", "TYPE", "STATE", "PID", "RSS", "CPU%", "UPTIME", "RESTARTS", "CLIENTS",
    ];
    header.extend(extra_headers.iter().map(String::as_str));
    let cells: Vec<[String; 9]> = rows
        .iter()
        .map(|r| {
            [
                r.id.clone(),
                r.server_type.clone(),
                if r.adopted {
                    format!("{}*", r.state)
                } else {
                    r.state.to_string()
                },
                match r.pid {
                    None => "-".to_owned(),
                    Some(p) if r.remote => format!("{p}@{}", r.host),
                    Some(p) => p.to_string(),
                },
                r.rss_bytes.map_or_else(|| "-".to_owned(), format_bytes),
                r.cpu_percent
                    .map_or_else(|| "-".to_owned(), |c| format!("{c:.1}")),
                r.uptime_ms.map_or_else(|| "-".to_owned(), format_uptime),
                r.restarts.to_string(),
                match r.clients {
                    Some(n) if r.frontend => n.to_string(),
                    _ => "-".to_owned(),
                },
            ]
        })
        .collect();
    let cells: Vec<Vec<String>> = cells
        .into_iter()
        .zip(rows)
        .map(|(fixed, r)| {
            let mut row = Vec::from(fixed);
            row.extend(extra.iter().map(|k| {
                r.status
                    .get(*k)
                    .filter(|v| !v.is_empty())
                    .map_or_else(|| "-".to_owned(), |v| v.replace(['\n', '\t'], " "))
            }));
            row
        })
        .collect();
    let mut out = align(&header, &cells);
    if rows.iter().any(|r| r.adopted) {
        out.push_str("* adopted: started by an earlier master\n");
    }
    out
}

/// `header` and `cells` as left-aligned columns two spaces apart, no trailing blanks.
pub(crate) fn align(header: &[&str], cells: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cols: &[&str]| {
        let mut text = String::new();
        for (i, (c, w)) in cols.iter().zip(&widths).enumerate() {
            if i + 1 == cols.len() {
                text.push_str(c);
            } else {
                text.push_str(&format!("{c:<w$}  "));
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(header);
    for row in cells {
        line(&row.iter().map(String::as_str).collect::<Vec<_>>());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::status_fixture;
    use kennel_proto::msg::ServerInfo;

    #[test]
    fn uptime_units() {
        assert_eq!(format_uptime(999), "0s");
        assert_eq!(format_uptime(7_000), "7s");
        assert_eq!(format_uptime(306_000), "5m06s");
        assert_eq!(format_uptime(3 * 3_600_000 + 4 * 60_000), "3h04m");
        assert_eq!(format_uptime(26 * 3_600_000), "1d02h");
    }

    #[test]
    fn app_columns_are_the_union_of_keys() {
        let server = |id: &str, status: &[(&str, &str)]| ServerStatus {
            status: status
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            ..status_fixture(id, "chat", ServerState::Running)
        };
        let reply = ListReply {
            servers: vec![
                server("a", &[("rooms", "3"), ("zone", "eu")]),
                server("b", &[("players", "12")]),
            ],
            ready: true,
        };
        let rows = rows(&reply);
        let table = render_table(&rows);
        let lines: Vec<&str> = table.lines().collect();
        assert!(
            lines[0].ends_with("CLIENTS  PLAYERS  ROOMS  ZONE"),
            "{table}"
        );
        assert!(lines[1].ends_with("-        -        3      eu"), "{table}");
        assert!(lines[2].ends_with("-        12       -      -"), "{table}");
        let json = serde_json::to_value(&rows).unwrap();
        assert_eq!(json[0]["status"]["rooms"], "3");
        assert_eq!(json[1]["status"], serde_json::json!({"players": "12"}));
    }

    #[test]
    fn table_is_aligned() {
        let mut connector = status_fixture("connector-server-1", "connector", ServerState::Running);
        connector.info.as_mut().unwrap().client_port = 4001;
        let reply = ListReply {
            servers: vec![
                ServerStatus {
                    pid: 4242,
                    uptime_ms: 65_000,
                    restarts: 1,
                    adopted: false,
                    rss_bytes: Some(12_900_000),
                    cpu_percent: Some(1.25),
                    clients: Some(17),
                    ..connector
                },
                ServerStatus {
                    pid: 0,
                    uptime_ms: 0,
                    restarts: 3,
                    ..status_fixture("chat-server-1", "chat", ServerState::Restarting)
                },
                ServerStatus {
                    info: Some(ServerInfo {
                        id: "chat-server-2".into(),
                        server_type: "chat".into(),
                        host: "10.0.0.2".into(),
                        ..Default::default()
                    }),
                    state: ServerState::Running.to_wire(),
                    pid: 77,
                    uptime_ms: 1_000,
                    remote: true,
                    clients: Some(0),
                    ..Default::default()
                },
            ],
            ready: false,
        };
        let rows = rows(&reply);
        assert_eq!(rows[0].client_port, Some(4001));
        assert_eq!(rows[1].pid, None);
        let table = render_table(&rows);
        let expected = "\
ID                  TYPE       STATE       PID          RSS    CPU%  UPTIME  RESTARTS  CLIENTS
connector-server-1  connector  running     4242         12.3M  1.2   1m05s   1         17
chat-server-1       chat       restarting  -            -      -     -       3         -
chat-server-2       chat       running     77@10.0.0.2  -      -     1s      0         -
";
        assert_eq!(table, expected);
        let json = serde_json::to_value(&rows).unwrap();
        assert_eq!(json[0]["type"], "connector");
        assert_eq!(json[0]["state"], "running");
        assert_eq!(json[1]["state"], "restarting");
        assert_eq!(json[0]["uptimeMs"], 65_000);
        assert_eq!(json[1]["pid"], serde_json::Value::Null);
        assert_eq!(json[0]["rssBytes"], 12_900_000);
        assert_eq!(json[0]["cpuPercent"], 1.25);
        assert_eq!(json[0]["adopted"], false);
        assert_eq!(json[0]["clients"], 17);
        assert_eq!(json[2]["remote"], true);
        assert_eq!(json[2]["pid"], 77);
    }
}
