//! `kennel list` output: [`ServerRow`] (one per server, also the `--json` shape) and the plain
//! aligned text table.

use kennel_proto::msg::{ListReply, ServerStatus};
use serde::Serialize;

/// One server as `kennel list` shows it; `--json` prints an array of these.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerRow {
    /// Server id.
    pub id: String,
    /// Server type.
    #[serde(rename = "type")]
    pub server_type: String,
    /// `starting`, `running`, `unlinked`, `restarting`, `stopping`, `exited`, `external` or `down`.
    pub state: String,
    /// Process id, when running.
    pub pid: Option<u32>,
    /// Milliseconds since the process started (or registered, for external servers).
    pub uptime_ms: Option<u64>,
    /// How many times the master restarted it.
    pub restarts: u32,
    /// RPC host.
    pub host: String,
    /// RPC port.
    pub port: u32,
    /// Whether clients connect to it.
    pub frontend: bool,
    /// Client port (frontends).
    pub client_port: Option<u32>,
}

impl From<&ServerStatus> for ServerRow {
    fn from(s: &ServerStatus) -> ServerRow {
        let info = s.info.clone().unwrap_or_default();
        let running = s.pid != 0;
        ServerRow {
            id: info.id,
            server_type: info.server_type,
            state: s.state.clone(),
            pid: running.then_some(s.pid),
            uptime_ms: running.then_some(s.uptime_ms),
            restarts: s.restarts,
            host: info.host,
            port: info.port,
            frontend: info.frontend,
            client_port: (info.client_port != 0).then_some(info.client_port),
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

/// The rows as an aligned text table with a header: id, type, state, pid, uptime, restarts.
pub fn render_table(rows: &[ServerRow]) -> String {
    let header = ["ID", "TYPE", "STATE", "PID", "UPTIME", "RESTARTS"];
    let cells: Vec<[String; 6]> = rows
        .iter()
        .map(|r| {
            [
                r.id.clone(),
                r.server_type.clone(),
                r.state.clone(),
                r.pid.map_or_else(|| "-".to_owned(), |p| p.to_string()),
                r.uptime_ms.map_or_else(|| "-".to_owned(), format_uptime),
                r.restarts.to_string(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cols: &[&str]| {
        let mut text = String::new();
        for (i, (c, w)) in cols.iter().zip(widths).enumerate() {
            if i + 1 == cols.len() {
                text.push_str(c);
            } else {
                text.push_str(&format!("{c:<w$}  "));
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&header);
    for row in &cells {
        line(&row.each_ref().map(String::as_str));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
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
    fn table_is_aligned() {
        let reply = ListReply {
            servers: vec![
                ServerStatus {
                    info: Some(ServerInfo {
                        id: "connector-server-1".into(),
                        server_type: "connector".into(),
                        frontend: true,
                        client_port: 4001,
                        ..Default::default()
                    }),
                    state: "running".into(),
                    pid: 4242,
                    uptime_ms: 65_000,
                    restarts: 1,
                },
                ServerStatus {
                    info: Some(ServerInfo {
                        id: "chat-server-1".into(),
                        server_type: "chat".into(),
                        ..Default::default()
                    }),
                    state: "restarting".into(),
                    pid: 0,
                    uptime_ms: 0,
                    restarts: 3,
                },
            ],
        };
        let rows = rows(&reply);
        assert_eq!(rows[0].client_port, Some(4001));
        assert_eq!(rows[1].pid, None);
        let table = render_table(&rows);
        let expected = "\
ID                  TYPE       STATE       PID   UPTIME  RESTARTS
connector-server-1  connector  running     4242  1m05s   1
chat-server-1       chat       restarting  -     -       3
";
        assert_eq!(table, expected);
        let json = serde_json::to_value(&rows).unwrap();
        assert_eq!(json[0]["type"], "connector");
        assert_eq!(json[0]["uptimeMs"], 65_000);
        assert_eq!(json[1]["pid"], serde_json::Value::Null);
    }
}
