//! The benchmark harness (issue 5): boots kennel's chat-demo (2 TCP connectors + 2 chat
//! servers, the mydog peer's `bench` topology), the mydog 2.3.0 peer with the same topology,
//! and a raw tokio echo server; drives them with one load generator built on kennel-client;
//! and reports medians over runs side by side. `integration-tests/src/bin/bench.rs` is the
//! command line; `docs/benchmarks.md` explains every figure.

pub mod load;
pub mod players;
pub mod procfs;
pub mod raw_echo;
pub mod raw_uring;
pub mod report;
pub mod targets;

use std::time::Duration;

use anyhow::Result;

use load::{LoadResult, Window};
use report::{Metric, Results};
use targets::{System, Target};

/// The scenarios, by their command-line names.
pub const SCENARIOS: [&str; 8] = [
    "frontend-echo",
    "frontend-echo-tls",
    "backend-echo",
    "broadcast",
    "rpc",
    "rpc-encrypted",
    "boot",
    "idle",
];

/// The players scenarios (issue 17), by their command-line names; `players` runs them all.
/// Not part of `all` (a full players run takes about as long as `all`).
pub const PLAYER_SCENARIOS: [&str; 4] = [
    "players-frontend-echo",
    "players-backend-echo",
    "players-rpc",
    "players-chat",
];

/// What to run and how long.
#[derive(Debug, Clone)]
pub struct Config {
    /// Scenario names (a subset of [`SCENARIOS`]).
    pub scenarios: Vec<String>,
    /// Warm-up and measurement per run.
    pub window: Window,
    /// Runs per scenario (the table shows the median).
    pub runs: usize,
    /// Drive the mydog peer too.
    pub mydog: bool,
    /// Run release server binaries (`None`: the bench's own profile).
    pub release: Option<bool>,
    /// Chat servers (beside 1 connector) for the boot scenario.
    pub boot_sizes: Vec<u16>,
    /// Idle connection counts.
    pub idle_sizes: Vec<usize>,
    /// Connections of the "many" shapes.
    pub conns: usize,
    /// Requests in flight per connection of the "many" shapes.
    pub inflight: usize,
    /// Connections of the broadcast scenario.
    pub broadcast_conns: usize,
    /// Own messages in flight per broadcast sender.
    pub broadcast_window: usize,
    /// The players scenarios' settings (which of them run: `scenarios`).
    pub players: players::ramp::PlayersConfig,
}

impl Config {
    /// The full run: 2 s warm-up + 10 s measure, 3 runs, every size of the issue.
    pub fn full() -> Config {
        Config {
            scenarios: SCENARIOS.iter().map(|s| s.to_string()).collect(),
            window: Window {
                warmup: Duration::from_secs(2),
                measure: Duration::from_secs(10),
            },
            runs: 3,
            mydog: true,
            release: None,
            boot_sizes: vec![2, 10, 50],
            idle_sizes: vec![1_000, 10_000],
            conns: 100,
            inflight: 16,
            broadcast_conns: 100,
            broadcast_window: 4,
            players: players::ramp::PlayersConfig::full(),
        }
    }

    /// A smoke run: every scenario once, briefly, small sizes.
    pub fn quick() -> Config {
        Config {
            window: Window {
                warmup: Duration::from_millis(200),
                measure: Duration::from_millis(600),
            },
            runs: 1,
            boot_sizes: vec![2],
            idle_sizes: vec![200],
            players: players::ramp::PlayersConfig::quick(),
            ..Config::full()
        }
    }

    fn wants(&self, name: &str) -> bool {
        self.scenarios.iter().any(|s| s == name)
    }

    /// The clusters each boot-per-run scenario starts: kennel, and mydog unless left out.
    fn clusters(&self) -> Vec<System> {
        let mut v = vec![System::Kennel];
        if self.mydog {
            v.push(System::Mydog);
        }
        v
    }
}

/// Logs a line of progress to stderr.
fn say(line: impl AsRef<str>) {
    eprintln!("bench: {}", line.as_ref());
}

/// Runs the configured scenarios and returns every figure.
pub fn run(cfg: &Config) -> Result<Results> {
    let rt = tokio::runtime::Runtime::new()?;
    let nofile = procfs::raise_nofile();
    say(format!("open-file limit {nofile}"));
    let mut results = Results::default();

    let load_scenarios = [
        "frontend-echo",
        "frontend-echo-tls",
        "backend-echo",
        "broadcast",
        "rpc",
        "rpc-encrypted",
    ];
    if load_scenarios.iter().any(|s| cfg.wants(s)) {
        say("booting kennel (2 connectors + 2 chat servers)");
        let (kennel, _) = Target::kennel(2, 2, cfg.release)?;
        let mydog = if cfg.mydog {
            say("booting the mydog peer (2 connectors + 2 chat servers)");
            Some(Target::mydog(2, 2)?.0)
        } else {
            None
        };
        let raw = if cfg.wants("frontend-echo") {
            Some(Target::raw()?)
        } else {
            None
        };
        // frontend-echo-tls: the same echo on a kennel whose frontends speak TLS, each run
        // right after the plain kennel's (the kennel column is plain, kennel TLS beside it).
        let tls = if cfg.wants("frontend-echo-tls") {
            say("booting kennel with TLS frontends (2 connectors + 2 chat servers)");
            Some(Target::kennel_with(2, 2, cfg.release, System::KennelTls)?.0)
        } else {
            None
        };
        // rpc-encrypted: the same rpc echo on a kennel whose internal links are encrypted
        // (`encryptLinks`), each run right after the plain kennel's.
        let encrypted = if cfg.wants("rpc-encrypted") {
            say("booting kennel with encrypted links (2 connectors + 2 chat servers)");
            Some(Target::kennel_with(2, 2, cfg.release, System::KennelEncrypted)?.0)
        } else {
            None
        };
        let mut systems: Vec<&Target> = vec![&kennel];
        systems.extend(mydog.as_ref());
        let many = (cfg.conns, cfg.inflight);
        let shapes = [(1usize, 1usize), many];
        for (name, route, login, with_raw) in [
            ("frontend-echo", "connector.main.echo", false, true),
            ("frontend-echo-tls", "connector.main.echo", false, false),
            ("backend-echo", "chat.main.echo", true, false),
            ("rpc", "chat.main.rpcEcho", true, false),
            ("rpc-encrypted", "chat.main.rpcEcho", true, false),
        ] {
            if !cfg.wants(name) {
                continue;
            }
            for (conns, inflight) in shapes {
                if name.starts_with("rpc") && (conns, inflight) != many {
                    continue;
                }
                let label = format!("{} {conns}x{inflight}", name.replace('-', " "));
                let mut these = systems.clone();
                if with_raw {
                    these.extend(raw.as_ref());
                }
                if name == "frontend-echo-tls" {
                    these = vec![&kennel];
                    these.extend(tls.as_ref());
                }
                if name == "rpc-encrypted" {
                    these = vec![&kennel];
                    these.extend(encrypted.as_ref());
                }
                load_runs(
                    &mut results,
                    &label,
                    &these,
                    cfg.runs,
                    Metric::ReqPerSec,
                    |t| {
                        rt.block_on(load::request_load(
                            t, route, conns, inflight, login, cfg.window,
                        ))
                    },
                )?;
            }
        }
        if cfg.wants("broadcast") {
            for room in [10usize, 100] {
                let label = format!("broadcast rooms of {room}");
                load_runs(
                    &mut results,
                    &label,
                    &systems,
                    cfg.runs,
                    Metric::MsgPerSec,
                    |t| {
                        rt.block_on(load::broadcast_load(
                            &t.addrs,
                            cfg.broadcast_conns,
                            room,
                            cfg.broadcast_window,
                            cfg.window,
                            &t.pids,
                        ))
                    },
                )?;
            }
        }
    }

    if cfg.wants("boot") {
        for &n in &cfg.boot_sizes {
            let label = format!("boot 1+{n}");
            for run in 1..=cfg.runs {
                for system in cfg.clusters() {
                    let (t, times) = match system {
                        System::Kennel => Target::kennel(1, n, cfg.release)?,
                        _ => Target::mydog(1, n)?,
                    };
                    let rss = procfs::total_rss(&t.pids) as f64 / 1048576.0;
                    let pss = procfs::total_pss(&t.pids) as f64 / 1048576.0;
                    let anon = procfs::total_anon(&t.pids) as f64 / 1048576.0;
                    say(format!(
                        "{label} run {run}/{}: {:<6} registered {:>6.0} ms, meshed {:>6.0} ms, {} processes, RSS {rss:.1} MiB, PSS {pss:.1} MiB, anon {anon:.1} MiB",
                        cfg.runs,
                        system.name(),
                        times.registered.as_secs_f64() * 1e3,
                        times.meshed.as_secs_f64() * 1e3,
                        t.pids.len()
                    ));
                    results.add(
                        &label,
                        Metric::RegisteredMs,
                        system,
                        times.registered.as_secs_f64() * 1e3,
                    );
                    results.add(
                        &label,
                        Metric::MeshedMs,
                        system,
                        times.meshed.as_secs_f64() * 1e3,
                    );
                    results.add(&label, Metric::TotalRssMib, system, rss);
                    results.add(&label, Metric::TotalPssMib, system, pss);
                    results.add(&label, Metric::TotalAnonMib, system, anon);
                    drop(t);
                }
            }
        }
    }

    if cfg.wants("idle") {
        for &n in &cfg.idle_sizes {
            let label = format!("idle connections {n}");
            // With frontend-echo-tls, idle TLS connections too.
            let mut systems = cfg.clusters();
            if cfg.wants("frontend-echo-tls") {
                systems.push(System::KennelTls);
            }
            for run in 1..=cfg.runs {
                for &system in &systems {
                    // A fresh cluster per run: a connector that served connections before
                    // keeps freed memory and would hide the cost of new ones.
                    let t = match system {
                        System::Kennel => Target::kennel(1, 1, cfg.release)?.0,
                        System::KennelTls => {
                            Target::kennel_with(1, 1, cfg.release, System::KennelTls)?.0
                        }
                        _ => Target::mydog(1, 1)?.0,
                    };
                    let per_conn = rt.block_on(idle_rss(&t, n))?;
                    say(format!(
                        "{label} run {run}/{}: {:<6} {per_conn:.0} bytes RSS per connection",
                        cfg.runs,
                        system.name()
                    ));
                    results.add(&label, Metric::RssPerConnBytes, system, per_conn);
                }
            }
        }
    }

    let kinds: Vec<players::Kind> = players::Kind::ALL
        .into_iter()
        .filter(|k| cfg.wants(k.cli_name()))
        .collect();
    if !kinds.is_empty() {
        let pcfg = players::ramp::PlayersConfig {
            kinds,
            mydog: cfg.mydog,
            release: cfg.release,
            ..cfg.players.clone()
        };
        players::ramp::run(&pcfg, &mut results)?;
    }
    Ok(results)
}

/// Opens `n` handshaken connections to the first connector of `t` and returns its RSS growth
/// per connection (bytes), measured 500 ms after the last handshake.
async fn idle_rss(t: &Target, n: usize) -> Result<f64> {
    let pid = t
        .server_pid("connector-server-1")
        .ok_or_else(|| anyhow::anyhow!("no connector-server-1 process"))?;
    let before = procfs::rss_bytes(pid).unwrap_or(0);
    let conns = load::connect_many(&t.addrs[..1], n, t.tls.as_ref()).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = procfs::rss_bytes(pid).unwrap_or(0);
    drop(conns);
    Ok((after as f64 - before as f64) / n as f64)
}

/// Runs `load` on each of `targets`, `runs` times over (run 1 on every target, then run 2,
/// ...), recording each run's figures under `label` with `rate` as its throughput metric.
fn load_runs(
    results: &mut Results,
    label: &str,
    targets: &[&Target],
    runs: usize,
    rate: Metric,
    mut load: impl FnMut(&Target) -> Result<LoadResult>,
) -> Result<()> {
    for run in 1..=runs {
        for t in targets {
            let r = load(t)?;
            record(results, label, t.system, run, runs, &r, rate);
        }
    }
    Ok(())
}

/// Records one load run's figures and says them.
fn record(
    results: &mut Results,
    label: &str,
    system: System,
    run: usize,
    runs: usize,
    r: &LoadResult,
    rate: Metric,
) {
    say(format!(
        "{label} run {run}/{runs}: {:<6} {:>9.0} {}  p50 {:>7.2} ms  p99 {:>7.2} ms  server {:>6.2} µs/op ({:>3.0}% CPU)  load gen {:>3.0}% CPU",
        system.name(),
        r.rate(),
        rate.label(),
        r.quantile_us(0.5) / 1e3,
        r.quantile_us(0.99) / 1e3,
        r.server_cpu_per_op_us(),
        r.server_cpu_pct(),
        r.loadgen_cpu_pct(),
    ));
    if let Some(p) = r.accounting_problem() {
        say(format!(
            "{label} run {run}: {} DID NOT ACCOUNT FOR EVERY REPLY: {p}",
            system.name()
        ));
        results
            .problems
            .push(format!("{label} run {run} {}: {p}", system.name()));
    }
    results.add(label, rate, system, r.rate());
    results.add(label, Metric::P50Ms, system, r.quantile_us(0.5) / 1e3);
    results.add(label, Metric::P99Ms, system, r.quantile_us(0.99) / 1e3);
    results.add(label, Metric::CpuPerOpUs, system, r.server_cpu_per_op_us());
    results.add(label, Metric::ServerCpuPct, system, r.server_cpu_pct());
    results.add(label, Metric::LoadgenCpuPct, system, r.loadgen_cpu_pct());
}
