//! Results: every run's figure per (scenario, metric, system), medians, the printed table
//! (scenario, metric, kennel, mydog, kennel/mydog, then each other system that ran with its
//! ratio: raw tokio, raw 1-thread, kennel TLS / encrypted, kennel on io_uring against mydog,
//! raw io_uring against kennel on io_uring) and a JSON dump.

use std::collections::BTreeMap;

use comfy_table::{Table, presets};

use super::players::StepResult;
use super::targets::System;

/// What a figure measures, and which way is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Metric {
    /// Requests per second (higher is better).
    ReqPerSec,
    /// Delivered messages per second (higher is better).
    MsgPerSec,
    /// Median latency, ms.
    P50Ms,
    /// 99th percentile latency, ms.
    P99Ms,
    /// Server CPU time per request or delivered message, µs.
    CpuPerOpUs,
    /// Server processes' CPU, % of one core.
    ServerCpuPct,
    /// Load generator CPU, % of one core.
    LoadgenCpuPct,
    /// Start to every server registered, ms.
    RegisteredMs,
    /// Start to every server linked to every other, ms.
    MeshedMs,
    /// RSS of every process of the cluster, MiB.
    TotalRssMib,
    /// PSS of every process of the cluster, MiB: shared pages (the binary, libc) are divided
    /// among the processes that map them, so the sum is the memory the cluster really uses.
    TotalPssMib,
    /// Anonymous (private, allocated) RSS of every process of the cluster, MiB: `RssAnon`,
    /// the memory the processes allocated themselves, without the mapped binaries.
    TotalAnonMib,
    /// Connector RSS per idle handshaken connection, bytes.
    RssPerConnBytes,
    /// Players: messages per second offered (open loop: players x rate).
    OfferedPerSec,
    /// Players: replies per second that arrived (chat: messages sent per second).
    AchievedPerSec,
    /// Players: server CPU per client message, µs.
    CpuPerMsgUs,
    /// Players (chat): server CPU per delivery, µs.
    CpuPerDeliveryUs,
    /// Players: cores the servers used (CPU seconds per second).
    CoresUsed,
    /// Players: load generator CPU per client message, µs.
    LoadgenCpuPerMsgUs,
    /// Players (open loop): 99th percentile of how late the generator sent, ms.
    SendLagP99Ms,
    /// Players: replies or deliveries that never arrived.
    LostMsgs,
    /// Players per core: players of the largest step with p99 under the limit / the cores the
    /// servers used there.
    PlayersPerCore,
    /// Players: the step that gave players per core (players).
    PlayersAtLimit,
}

impl Metric {
    /// The label printed in the table.
    pub fn label(self) -> &'static str {
        match self {
            Metric::ReqPerSec => "req/s",
            Metric::MsgPerSec => "delivered msg/s",
            Metric::P50Ms => "p50 ms",
            Metric::P99Ms => "p99 ms",
            Metric::CpuPerOpUs => "server CPU µs/op",
            Metric::ServerCpuPct => "server CPU %",
            Metric::LoadgenCpuPct => "load gen CPU %",
            Metric::RegisteredMs => "all registered ms",
            Metric::MeshedMs => "all meshed ms",
            Metric::TotalRssMib => "total RSS MiB",
            Metric::TotalPssMib => "total PSS MiB",
            Metric::TotalAnonMib => "total anon RSS MiB",
            Metric::RssPerConnBytes => "RSS bytes/conn",
            Metric::OfferedPerSec => "offered msg/s",
            Metric::AchievedPerSec => "achieved msg/s",
            Metric::CpuPerMsgUs => "server CPU µs/msg",
            Metric::CpuPerDeliveryUs => "server CPU µs/delivery",
            Metric::CoresUsed => "server cores used",
            Metric::LoadgenCpuPerMsgUs => "load gen CPU µs/msg",
            Metric::SendLagP99Ms => "send lag p99 ms",
            Metric::LostMsgs => "lost msgs",
            Metric::PlayersPerCore => "players per core",
            Metric::PlayersAtLimit => "players at p99 limit",
        }
    }

    /// `Some(true)` when higher is better, `Some(false)` when lower is, `None` for inputs.
    fn direction(self) -> Option<bool> {
        match self {
            Metric::ReqPerSec
            | Metric::MsgPerSec
            | Metric::AchievedPerSec
            | Metric::PlayersPerCore
            | Metric::PlayersAtLimit => Some(true),
            Metric::OfferedPerSec => None,
            _ => Some(false),
        }
    }

    fn format(self, v: f64) -> String {
        if v.is_nan() {
            return "-".into();
        }
        match self {
            Metric::ReqPerSec | Metric::MsgPerSec | Metric::RssPerConnBytes => {
                format!("{:.0}", v)
            }
            Metric::P50Ms | Metric::P99Ms => format!("{v:.2}"),
            Metric::CpuPerOpUs => format!("{v:.2}"),
            Metric::ServerCpuPct | Metric::LoadgenCpuPct => format!("{v:.0}"),
            Metric::RegisteredMs | Metric::MeshedMs => format!("{v:.0}"),
            Metric::TotalRssMib | Metric::TotalPssMib | Metric::TotalAnonMib => {
                format!("{v:.1}")
            }
            Metric::OfferedPerSec
            | Metric::AchievedPerSec
            | Metric::LostMsgs
            | Metric::PlayersPerCore
            | Metric::PlayersAtLimit => format!("{v:.0}"),
            Metric::CpuPerMsgUs | Metric::CpuPerDeliveryUs | Metric::LoadgenCpuPerMsgUs => {
                format!("{v:.2}")
            }
            Metric::CoresUsed => format!("{v:.2}"),
            Metric::SendLagP99Ms => format!("{v:.2}"),
        }
    }
}

/// Every run's value of one figure.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Row {
    /// Scenario name, e.g. `frontend echo 100x16`.
    pub scenario: String,
    /// What is measured.
    pub metric: Metric,
    /// Values per system, one per run.
    pub runs: BTreeMap<&'static str, Vec<f64>>,
}

impl Row {
    /// The median over runs of `system`'s values (NaN without any).
    pub fn median(&self, system: System) -> f64 {
        let Some(v) = self.runs.get(system.name()) else {
            return f64::NAN;
        };
        let mut v: Vec<f64> = v.iter().copied().filter(|x| !x.is_nan()).collect();
        if v.is_empty() {
            return f64::NAN;
        }
        v.sort_by(|a, b| a.total_cmp(b));
        let n = v.len();
        if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        }
    }
}

/// What one players step sent and got back, for checking (JSON only): the step's figures
/// under its scenario and system.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Accounting {
    /// Scenario (row label).
    pub scenario: String,
    /// System name.
    pub system: &'static str,
    /// The step's figures (`offered` is null for the closed loop).
    #[serde(flatten)]
    pub step: StepResult,
}

/// What a run sent and got back: the figures every run (load run or players step) is checked
/// against.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Counts {
    /// Requests (or chat messages) sent over the whole run.
    pub sent: u64,
    /// Replies (or deliveries) those messages make.
    pub expected: u64,
    /// Replies (or deliveries) received over the whole run (after the drain).
    pub received: u64,
    /// Replies (or deliveries) that arrived inside the measured window.
    pub completed: u64,
    /// Replies whose payload differed from the request (chat: unparsable deliveries).
    pub mismatched: u64,
    /// Frames on another cmd, replies nobody waited for, deliveries from another room.
    pub unexpected: u64,
    /// Connection errors and timeouts (the first few).
    pub errors: Vec<String>,
}

impl Counts {
    /// Replies or deliveries that never arrived.
    pub fn lost(&self) -> u64 {
        self.expected.saturating_sub(self.received)
    }

    /// Why the run does not account for every message it sent, if it does not: an error, a
    /// reply (or delivery) missing or unexpected, a wrong payload, or nothing completed in
    /// the window.
    pub fn problem(&self) -> Option<String> {
        if self.errors.is_empty()
            && self.received == self.expected
            && self.mismatched == 0
            && self.unexpected == 0
            && self.completed > 0
        {
            return None;
        }
        Some(format!(
            "sent {} expected {} received {} completed-in-window {} mismatched {} unexpected {} errors {:?}",
            self.sent,
            self.expected,
            self.received,
            self.completed,
            self.mismatched,
            self.unexpected,
            self.errors
        ))
    }
}

/// All figures of a bench run, in the order they were first recorded.
#[derive(Debug, Default, serde::Serialize)]
pub struct Results {
    /// The figures.
    pub rows: Vec<Row>,
    /// Runs that did not account for every reply.
    pub problems: Vec<String>,
    /// Remarks printed under the table (pinning, steps past capacity).
    pub notes: Vec<String>,
    /// Per players step: what was sent and received.
    pub accounting: Vec<Accounting>,
}

impl Results {
    /// Records one run's `value` of (`scenario`, `metric`) for `system`.
    pub fn add(&mut self, scenario: &str, metric: Metric, system: System, value: f64) {
        let i = match self
            .rows
            .iter()
            .position(|r| r.scenario == scenario && r.metric == metric)
        {
            Some(i) => i,
            None => {
                self.rows.push(Row {
                    scenario: scenario.to_string(),
                    metric,
                    runs: BTreeMap::new(),
                });
                self.rows.len() - 1
            }
        };
        self.rows[i]
            .runs
            .entry(system.name())
            .or_default()
            .push(value);
    }

    /// The table of medians; `markdown` for a Markdown table.
    pub fn table(&self, markdown: bool) -> String {
        let mut t = Table::new();
        t.load_style(if markdown {
            presets::ASCII_MARKDOWN
        } else {
            presets::ASCII_BORDERS_ONLY_CONDENSED
        });
        // The extra columns appear when their system ran (the multi-threaded raw server for
        // the classic scenarios, the single-threaded and io_uring ones for the players'; kennel
        // TLS, encrypted and on io_uring when they ran), each with a ratio (numerator /
        // denominator system).
        let raws: Vec<(System, &str, &str, System, System)> = [
            (
                System::Raw,
                "raw tokio",
                "kennel/raw",
                System::Kennel,
                System::Raw,
            ),
            (
                System::RawSt,
                "raw 1-thread",
                "kennel/raw1t",
                System::Kennel,
                System::RawSt,
            ),
            (
                System::KennelTls,
                "kennel TLS",
                "plain/TLS",
                System::Kennel,
                System::KennelTls,
            ),
            (
                System::KennelEncrypted,
                "kennel encrypted",
                "plain/encrypted",
                System::Kennel,
                System::KennelEncrypted,
            ),
            (
                System::KennelUring,
                "kennel uring",
                "uring/mydog",
                System::KennelUring,
                System::Mydog,
            ),
            (
                System::RawUring,
                "raw uring",
                "kuring/rawuring",
                System::KennelUring,
                System::RawUring,
            ),
        ]
        .into_iter()
        .filter(|(s, ..)| self.rows.iter().any(|r| r.runs.contains_key(s.name())))
        .collect();
        let mut header = vec!["scenario", "metric", "kennel", "mydog", "kennel/mydog"];
        for (_, name, ratio, ..) in &raws {
            header.extend([*name, *ratio]);
        }
        t.set_header(header);
        for r in &self.rows {
            let (k, m) = (r.median(System::Kennel), r.median(System::Mydog));
            let ratio = |a: f64, b: f64| {
                if a.is_nan() || b.is_nan() || b == 0.0 {
                    "-".to_string()
                } else {
                    let x = a / b;
                    let verdict = match (r.metric.direction(), x) {
                        (None, _) => "",
                        (_, x) if (0.95..=1.05).contains(&x) => "",
                        (Some(true), x) if x > 1.0 => " better",
                        (Some(false), x) if x < 1.0 => " better",
                        _ => " worse",
                    };
                    format!("{x:.2}x{verdict}")
                }
            };
            let mut row = vec![
                r.scenario.clone(),
                r.metric.label().to_string(),
                r.metric.format(k),
                r.metric.format(m),
                ratio(k, m),
            ];
            for (s, _, _, num, den) in &raws {
                let (raw, a, b) = (r.median(*s), r.median(*num), r.median(*den));
                row.push(r.metric.format(raw));
                row.push(if raw.is_nan() {
                    String::new()
                } else {
                    ratio(a, b)
                });
            }
            t.add_row(row);
        }
        t.to_string()
    }
}
