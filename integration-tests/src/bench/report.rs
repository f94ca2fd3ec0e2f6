//! Results: every run's figure per (scenario, metric, system), medians, the printed table
//! (scenario, metric, kennel, mydog, kennel/mydog, raw tokio, kennel/raw) and a JSON dump.

use std::collections::BTreeMap;

use comfy_table::{Table, presets};

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
        }
    }

    fn higher_is_better(self) -> bool {
        matches!(self, Metric::ReqPerSec | Metric::MsgPerSec)
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

/// All figures of a bench run, in the order they were first recorded.
#[derive(Debug, Default, serde::Serialize)]
pub struct Results {
    /// The figures.
    pub rows: Vec<Row>,
    /// Runs that did not account for every reply.
    pub problems: Vec<String>,
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
        t.set_header(vec![
            "scenario",
            "metric",
            "kennel",
            "mydog",
            "kennel/mydog",
            "raw tokio",
            "kennel/raw",
        ]);
        for r in &self.rows {
            let (k, m, raw) = (
                r.median(System::Kennel),
                r.median(System::Mydog),
                r.median(System::Raw),
            );
            let ratio = |a: f64, b: f64| {
                if a.is_nan() || b.is_nan() || b == 0.0 {
                    "-".to_string()
                } else {
                    let x = a / b;
                    let verdict = match (r.metric.higher_is_better(), x) {
                        (_, x) if (0.95..=1.05).contains(&x) => "",
                        (true, x) if x > 1.0 => " better",
                        (false, x) if x < 1.0 => " better",
                        _ => " worse",
                    };
                    format!("{x:.2}x{verdict}")
                }
            };
            t.add_row(vec![
                r.scenario.clone(),
                r.metric.label().to_string(),
                r.metric.format(k),
                r.metric.format(m),
                ratio(k, m),
                r.metric.format(raw),
                if raw.is_nan() {
                    String::new()
                } else {
                    ratio(k, raw)
                },
            ]);
        }
        t.to_string()
    }
}
