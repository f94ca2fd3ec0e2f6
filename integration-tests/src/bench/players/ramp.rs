//! The players scenarios, side by side: kennel (2 connectors + 2 chat servers), the mydog
//! peer (same topology), kennel with its connectors on io_uring and, for frontend echo, the
//! single-threaded raw echo server and the raw io_uring echo, booted
//! once and pinned to one CPU; the load generator on another. Per scenario:
//!
//! - **closed loop** at each `closed` size (one message in flight per player);
//! - **open loop** ramp: each `open` size in turn at `rate` messages/s per player, a system
//!   leaving the ramp after its first step that misses the latency limit (p99 >= `p99_limit_ms`),
//!   skips sends (a player at its in-flight maximum) or loses a message.
//!
//! **Players per core** = players of the largest step that met the limit / the cores the
//! servers used in that step (their CPU seconds per second). Steps of one size run
//! interleaved over the systems (kennel, mydog, kennel on io_uring, the raw servers), each on fresh connections, after the
//! servers have gone quiet from the previous step.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Result;

use super::{Backend, Kind, Mode, Pinning, Spec, StepResult, cpu, run_step};
use crate::bench::load::Window;
use crate::bench::report::{Accounting, Metric, Results};
use crate::bench::targets::{System, Target};

/// What the players group runs.
#[derive(Debug, Clone)]
pub struct PlayersConfig {
    /// Scenarios.
    pub kinds: Vec<Kind>,
    /// Closed-loop sizes (players).
    pub closed: Vec<usize>,
    /// Open-loop ramp (players, ascending).
    pub open: Vec<usize>,
    /// Messages per second per player in the open loop.
    pub rate: f64,
    /// Players per chat room.
    pub room_size: usize,
    /// Warm-up and measure per step.
    pub window: Window,
    /// The load generator's I/O.
    pub backend: Backend,
    /// Drive the mydog peer too.
    pub mydog: bool,
    /// Server binaries' profile (`None`: the bench's own).
    pub release: Option<bool>,
    /// The latency limit of players per core.
    pub p99_limit_ms: f64,
    /// The open loop's wake-up tick (io_uring back end).
    pub tick: Duration,
    /// Also kennel with its frontends on the io_uring connector (`"io": "uring"`) and, for
    /// frontend echo, the raw io_uring echo (the io_uring floor).
    pub uring: bool,
}

impl PlayersConfig {
    /// The full run: closed loop at 1,000, 5,000 and 10,000 players; open loop ramp 500 ..
    /// 10,000 players at 10 messages/s; rooms of 20; 2 s warm-up + 5 s per step.
    pub fn full() -> PlayersConfig {
        PlayersConfig {
            kinds: Kind::ALL.to_vec(),
            closed: vec![1_000, 5_000, 10_000],
            open: vec![500, 1_000, 2_000, 5_000, 10_000],
            rate: 10.0,
            room_size: 20,
            window: Window {
                warmup: Duration::from_secs(2),
                measure: Duration::from_secs(5),
            },
            backend: Backend::Uring,
            mydog: true,
            release: None,
            p99_limit_ms: 50.0,
            tick: Duration::from_micros(100),
            uring: true,
        }
    }

    /// A smoke run: 100 players closed, 100 and 200 open, 0.3 s + 1 s per step.
    pub fn quick() -> PlayersConfig {
        PlayersConfig {
            closed: vec![100],
            open: vec![100, 200],
            window: Window {
                warmup: Duration::from_millis(300),
                measure: Duration::from_secs(1),
            },
            ..PlayersConfig::full()
        }
    }
}

fn say(line: impl AsRef<str>) {
    eprintln!("bench: {}", line.as_ref());
}

/// How long the servers may take to go quiet between steps.
const SETTLE_LIMIT: Duration = Duration::from_secs(10);

/// Runs the players scenarios of `cfg` into `results`.
pub fn run(cfg: &PlayersConfig, results: &mut Results) -> Result<()> {
    say("players: booting kennel (2 connectors + 2 chat servers)");
    let (kennel, _) = Target::kennel(2, 2, cfg.release)?;
    let mydog = if cfg.mydog {
        say("players: booting the mydog peer (2 connectors + 2 chat servers)");
        Some(Target::mydog(2, 2)?.0)
    } else {
        None
    };
    let echo = cfg.kinds.contains(&Kind::FrontendEcho);
    let raw = if echo {
        Some(Target::raw_single()?)
    } else {
        None
    };
    let kennel_uring = if cfg.uring {
        say("players: booting kennel with its connectors on io_uring");
        Some(Target::kennel_with(2, 2, cfg.release, System::KennelUring)?.0)
    } else {
        None
    };
    let raw_uring = if cfg.uring && echo {
        Some(Target::raw_uring()?)
    } else {
        None
    };
    let pin = Pinning::detect();
    say(format!("players: {}", pin.note));
    pin.pin_self()?;
    let mut all: Vec<&Target> = vec![&kennel];
    all.extend(mydog.as_ref());
    all.extend(raw.as_ref());
    all.extend(kennel_uring.as_ref());
    all.extend(raw_uring.as_ref());
    for t in &all {
        pin.pin_servers(&t.pids)?;
    }
    results.notes.push(format!(
        "players: {}; load generator: {} (one send per message); latency limit p99 < {} ms; open loop {} msg/s per player; rooms of {}",
        pin.note,
        cfg.backend.name(),
        cfg.p99_limit_ms,
        cfg.rate,
        cfg.room_size
    ));
    let others = Others {
        mydog: mydog.as_ref(),
        raw: raw.as_ref(),
        kennel_uring: kennel_uring.as_ref(),
        raw_uring: raw_uring.as_ref(),
    };
    let outcome = run_kinds(cfg, results, &kennel, &others);
    pin.restore_self();
    outcome
}

/// The systems beside kennel, those that run.
struct Others<'a> {
    mydog: Option<&'a Target>,
    raw: Option<&'a Target>,
    kennel_uring: Option<&'a Target>,
    raw_uring: Option<&'a Target>,
}

fn run_kinds(
    cfg: &PlayersConfig,
    results: &mut Results,
    kennel: &Target,
    others: &Others<'_>,
) -> Result<()> {
    for &kind in &cfg.kinds {
        let mut systems: Vec<&Target> = vec![kennel];
        systems.extend(others.mydog);
        systems.extend(others.kennel_uring);
        if kind == Kind::FrontendEcho {
            systems.extend(others.raw);
            systems.extend(others.raw_uring);
        }
        let spec = |mode, players| Spec {
            kind,
            mode,
            players,
            room_size: cfg.room_size,
            window: cfg.window,
            tick: cfg.tick,
        };

        let summary = format!("{} closed loop", kind.label());
        let mut best: HashMap<System, (usize, f64)> = HashMap::new();
        for (i, &n) in cfg.closed.iter().enumerate() {
            let label = format!("{} {n} x 1 in flight", kind.label());
            for t in rotated(&systems, i) {
                let r = step(t, &spec(Mode::Closed, n), cfg.backend, &label)?;
                let ok = within_limit(cfg, &r);
                if let Some(p) = r.accounting_problem() {
                    results
                        .problems
                        .push(format!("{label} {}: {p}", t.system.name()));
                }
                record(results, &label, t.system, kind, Mode::Closed, &r);
                if ok {
                    best.insert(t.system, (n, r.cores_used()));
                }
            }
        }
        record_best(results, &summary, &systems, &best, cfg);

        let summary = format!("{} open loop {}/s", kind.label(), cfg.rate);
        let mut best: HashMap<System, (usize, f64)> = HashMap::new();
        let mut alive = systems.clone();
        for (i, &n) in cfg.open.iter().enumerate() {
            let label = format!("{} {n} x {}/s", kind.label(), cfg.rate);
            let mode = Mode::Open { rate: cfg.rate };
            let mut out = Vec::new();
            for t in rotated(&alive, cfg.closed.len() + i) {
                let r = step(t, &spec(mode, n), cfg.backend, &label)?;
                let ok = within_limit(cfg, &r);
                let problem = r.accounting_problem();
                match (&problem, ok) {
                    // Below capacity every message must come back.
                    (Some(p), _) if r.p99_ms < cfg.p99_limit_ms && r.overruns == 0 => results
                        .problems
                        .push(format!("{label} {}: {p}", t.system.name())),
                    (Some(p), _) => results.notes.push(format!(
                        "{label} {}: past capacity (p99 {:.1} ms, {} sends skipped): {p}",
                        t.system.name(),
                        r.p99_ms,
                        r.overruns
                    )),
                    (None, false) => results.notes.push(format!(
                        "{label} {}: past capacity (p99 {:.1} ms, {} sends skipped); leaves the ramp",
                        t.system.name(),
                        r.p99_ms,
                        r.overruns
                    )),
                    (None, true) => {}
                }
                record(results, &label, t.system, kind, mode, &r);
                if ok {
                    best.insert(t.system, (n, r.cores_used()));
                } else {
                    out.push(t.system);
                }
            }
            alive.retain(|t| !out.contains(&t.system));
            if alive.is_empty() {
                break;
            }
        }
        for t in &alive {
            results.notes.push(format!(
                "{summary} {}: met the limit at the top of the ramp (players at the limit is a lower bound)",
                t.system.name()
            ));
        }
        record_best(results, &summary, &systems, &best, cfg);
    }
    Ok(())
}

/// `systems` from the `k`-th on, round (mod their number): the steps rotate which system
/// runs first, so that none always runs right after the same other one on the shared core.
fn rotated<T>(systems: &[T], k: usize) -> impl Iterator<Item = &T> {
    let n = systems.len().max(1);
    systems.iter().cycle().skip(k % n).take(systems.len())
}

/// What the servers of a failed step are doing, on stderr, before they are stopped: each
/// process's state, CPU use over one second, command line, and its threads' stacks (`gdb`,
/// when installed). A stuck step then says whether a server spins, waits or is blocked.
fn dump_state(pids: &[i32]) {
    for l in queued_sockets() {
        eprintln!("bench: stuck step: socket with bytes queued: {l}");
    }
    let ticks = |pid: i32| -> Option<u64> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let f: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
    };
    let before: Vec<Option<u64>> = pids.iter().map(|&p| ticks(p)).collect();
    std::thread::sleep(Duration::from_secs(1));
    for (&pid, b) in pids.iter().zip(before) {
        let cmd = std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
            .unwrap_or_default()
            .replace('\0', " ");
        let state = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("State:"))
                    .map(str::to_owned)
            })
            .unwrap_or_default();
        let cpu = match (b, ticks(pid)) {
            (Some(b), Some(a)) => format!("{} % of a core", a.saturating_sub(b)),
            _ => "gone".into(),
        };
        eprintln!("bench: stuck step: pid {pid} {cmd}: {state}, {cpu} over 1 s");
        for l in io_fdinfo(pid) {
            eprintln!("bench: stuck step: pid {pid}: {l}");
        }
        // `BENCH_DUMP_NO_GDB=1`: no stacks, so that a tracer (strace) can attach meanwhile.
        if std::env::var_os("BENCH_DUMP_NO_GDB").is_some() {
            continue;
        }
        if let Ok(out) = std::process::Command::new("gdb")
            .args([
                "-batch",
                "-p",
                &pid.to_string(),
                "-ex",
                "thread apply all bt 25",
            ])
            .output()
        {
            let text = String::from_utf8_lossy(&out.stdout);
            for l in text
                .lines()
                .filter(|l| l.starts_with('#') || l.starts_with("Thread"))
            {
                eprintln!("bench: stuck step: pid {pid}: {l}");
            }
        }
    }
}

/// The kernel's view of `pid`'s io_uring rings (`/proc/PID/fdinfo` of each: queue heads and
/// tails, armed polls, overflowed completions), when it has any, and of its epoll sets (the
/// descriptors each watches).
pub(super) fn io_fdinfo(pid: i32) -> Vec<String> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for fd in fds.flatten() {
        let target = std::fs::read_link(fd.path()).unwrap_or_default();
        let name = fd.file_name().to_string_lossy().into_owned();
        if target.to_string_lossy().contains("eventpoll") {
            // The epoll set tokio waits on: which descriptors are still in it.
            let info =
                std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{name}")).unwrap_or_default();
            let tfds: Vec<&str> = info
                .lines()
                .filter_map(|l| l.strip_prefix("tfd:"))
                .filter_map(|l| l.split_whitespace().next())
                .collect();
            out.push(format!(
                "epoll fd {name} watches {} fds: {}",
                tfds.len(),
                tfds.join(" ")
            ));
            continue;
        }
        if !target.to_string_lossy().contains("io_uring") {
            continue;
        }
        let info =
            std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{name}")).unwrap_or_default();
        out.push(format!("io_uring fd {name}:"));
        // The lists (one line per armed poll, per overflowed completion) as counts.
        let mut section = String::new();
        let mut counts = std::collections::BTreeMap::<String, usize>::new();
        for l in info.lines() {
            if l.starts_with("  ") {
                let key = l.trim().split(',').next().unwrap_or("").to_owned();
                *counts.entry(format!("{section} {key}")).or_default() += 1;
            } else {
                if l.ends_with(':') {
                    section = l.trim_end_matches(':').to_owned();
                }
                out.push(l.to_owned());
            }
        }
        out.extend(counts.into_iter().map(|(k, n)| format!("{k}: {n} entries")));
    }
    out
}

/// Sockets with bytes queued (unread or unacknowledged; a listener: its accept queue and backlog)
/// and their processes, as `ss` sees them.
pub(super) fn queued_sockets() -> Vec<String> {
    let Ok(o) = std::process::Command::new("ss").args(["-tanpH"]).output() else {
        return Vec::new();
    };
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter(|l| {
            // A listener's Send-Q is its backlog: only its accept queue (Recv-Q) counts.
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 2 && (f[1] != "0" || (f[2] != "0" && f[0] != "LISTEN"))
        })
        .take(200)
        .map(str::to_owned)
        .collect()
}

/// Whether a step meets the latency limit with every message sent and accounted for.
fn within_limit(cfg: &PlayersConfig, r: &StepResult) -> bool {
    r.p99_ms < cfg.p99_limit_ms && r.overruns == 0 && r.accounting_problem().is_none()
}

/// A step that went wrong (stuck, or replies unaccounted for): the servers' state, then, with
/// `BENCH_HOLD_STUCK_SECS`, the servers held that long for a look by hand (strace, gdb)
/// before they are stopped.
fn dump_and_hold(pids: &[i32]) {
    dump_state(pids);
    if let Some(secs) = std::env::var("BENCH_HOLD_STUCK_SECS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        say(format!("holding the stuck servers for {secs} s"));
        std::thread::sleep(Duration::from_secs(secs));
    }
}

/// Runs one step on fresh connections once `t`'s servers are quiet.
fn step(t: &Target, spec: &Spec, backend: Backend, label: &str) -> Result<StepResult> {
    if !cpu::settle(&t.pids, SETTLE_LIMIT) {
        say(format!(
            "{label}: {} still busy after {SETTLE_LIMIT:?}; starting anyway",
            t.system.name()
        ));
    }
    let r = match run_step(&t.addrs, &t.pids, spec, backend) {
        Ok(r) => r,
        Err(e) => {
            dump_and_hold(&t.pids);
            return Err(e.context(format!("{label} on {}", t.system.name())));
        }
    };
    if r.accounting_problem().is_some() {
        dump_and_hold(&t.pids);
    }
    let chat = spec.kind.is_chat();
    say(format!(
        "{label}: {:<6} {:>8.0} msg/s{}  p50 {:>7.2} ms  p99 {:>7.2} ms  server {:>6.2} µs/msg ({:.2} cores)  load gen {:>5.2} µs/msg ({:.0}% CPU){}{}",
        t.system.name(),
        if chat { r.sent_rate() } else { r.rate() },
        if r.offered.is_nan() {
            String::new()
        } else {
            format!(" of {:.0}", r.offered)
        },
        r.p50_ms,
        r.p99_ms,
        r.server_us_per_msg(chat),
        r.cores_used(),
        r.gen_us_per_msg(chat),
        r.gen_cpu * 100.0 / r.wall.max(1e-9),
        if chat {
            format!("  {:.0} deliveries/s", r.rate())
        } else {
            String::new()
        },
        match r.accounting_problem() {
            Some(p) => format!("  UNACCOUNTED: {p}"),
            None => String::new(),
        }
    ));
    Ok(r)
}

/// Records one step's figures.
fn record(
    results: &mut Results,
    label: &str,
    system: System,
    kind: Kind,
    mode: Mode,
    r: &StepResult,
) {
    let chat = kind.is_chat();
    let open = matches!(mode, Mode::Open { .. });
    if open {
        results.add(label, Metric::OfferedPerSec, system, r.offered);
    }
    results.add(
        label,
        Metric::AchievedPerSec,
        system,
        if chat { r.sent_rate() } else { r.rate() },
    );
    if chat {
        results.add(label, Metric::MsgPerSec, system, r.rate());
    }
    results.add(label, Metric::P50Ms, system, r.p50_ms);
    results.add(label, Metric::P99Ms, system, r.p99_ms);
    results.add(
        label,
        Metric::CpuPerMsgUs,
        system,
        r.server_us_per_msg(chat),
    );
    if chat {
        results.add(
            label,
            Metric::CpuPerDeliveryUs,
            system,
            r.server_us_per_delivery(),
        );
    }
    results.add(label, Metric::CoresUsed, system, r.cores_used());
    results.add(
        label,
        Metric::LoadgenCpuPerMsgUs,
        system,
        r.gen_us_per_msg(chat),
    );
    results.add(
        label,
        Metric::LoadgenCpuPct,
        system,
        r.gen_cpu * 100.0 / r.wall.max(1e-9),
    );
    if open {
        results.add(label, Metric::SendLagP99Ms, system, r.lag_p99_ms);
    }
    if r.lost() > 0 {
        results.add(label, Metric::LostMsgs, system, r.lost() as f64);
    }
    results.accounting.push(Accounting {
        scenario: label.to_string(),
        system: system.name(),
        step: r.clone(),
    });
}

/// Records players per core (and the step it came from) of each system.
fn record_best(
    results: &mut Results,
    label: &str,
    systems: &[&Target],
    best: &HashMap<System, (usize, f64)>,
    cfg: &PlayersConfig,
) {
    for t in systems {
        match best.get(&t.system) {
            Some(&(n, cores)) => {
                results.add(label, Metric::PlayersAtLimit, t.system, n as f64);
                results.add(
                    label,
                    Metric::PlayersPerCore,
                    t.system,
                    n as f64 / cores.max(1e-3),
                );
            }
            None => {
                results.add(label, Metric::PlayersAtLimit, t.system, f64::NAN);
                results.add(label, Metric::PlayersPerCore, t.system, f64::NAN);
                results.notes.push(format!(
                    "{label} {}: no step met p99 < {} ms",
                    t.system.name(),
                    cfg.p99_limit_ms
                ));
            }
        }
    }
}
