//! Load that behaves like players (issue 17): N connections, each with one message in flight
//! (closed loop) or sending at a fixed rate whatever the replies do (open loop, latency from
//! the scheduled send time, so a slow server cannot slow the load down and hide its own
//! latency: no coordinated omission), for frontend echo, backend echo, RPC and room chat. Every
//! message is its own `write` (or io_uring `send`), like a client's; replies are matched per
//! connection and every one is accounted for.
//!
//! One run ("step") is [`run_step`]: a thread of its own (pinned by the caller's affinity)
//! with a current-thread runtime opens the connections ([`setup`]), then drives them with the
//! [`uring`] or the [`epoll`] back end over the shared state machine of [`core`]. The ramps
//! and the table are in [`ramp`].

pub mod core;
pub mod epoll;
pub mod ramp;
pub mod setup;
pub mod uring;

use std::cell::RefCell;
use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::load::Window;
use super::report::Counts;

/// What the players do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `connector.main.echo`, answered by the frontend.
    FrontendEcho,
    /// `chat.main.echo`, forwarded to a chat server (players log in first).
    BackendEcho,
    /// `chat.main.rpcEcho`: the chat server makes one RPC to the other chat server.
    Rpc,
    /// `chat.main.send` to a room; every member (the sender too) gets `chat.main.onChat`.
    Chat,
}

impl Kind {
    /// Every kind, in report order.
    pub const ALL: [Kind; 4] = [Kind::FrontendEcho, Kind::BackendEcho, Kind::Rpc, Kind::Chat];

    /// The command-line name (`players-frontend-echo`, ...).
    pub fn cli_name(self) -> &'static str {
        match self {
            Kind::FrontendEcho => "players-frontend-echo",
            Kind::BackendEcho => "players-backend-echo",
            Kind::Rpc => "players-rpc",
            Kind::Chat => "players-chat",
        }
    }

    /// The name in the table.
    pub fn label(self) -> &'static str {
        match self {
            Kind::FrontendEcho => "frontend echo",
            Kind::BackendEcho => "backend echo",
            Kind::Rpc => "rpc",
            Kind::Chat => "room chat",
        }
    }

    /// The route each message goes to.
    pub fn route(self) -> &'static str {
        match self {
            Kind::FrontendEcho => "connector.main.echo",
            Kind::BackendEcho => "chat.main.echo",
            Kind::Rpc => "chat.main.rpcEcho",
            Kind::Chat => "chat.main.send",
        }
    }

    /// Room chat (deliveries instead of replies).
    pub fn is_chat(self) -> bool {
        self == Kind::Chat
    }

    /// Whether players log in first (every route but the frontend's own).
    pub fn logs_in(self) -> bool {
        self != Kind::FrontendEcho
    }
}

/// Closed or open loop.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    /// One message in flight per player: the next leaves when the reply (chat: the player's
    /// own message, back from the room) arrived.
    Closed,
    /// Every player sends `rate` messages per second on a fixed schedule (players spread
    /// evenly over the interval), whatever the replies do.
    Open {
        /// Messages per second per player.
        rate: f64,
    },
}

/// Which I/O the load generator uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// io_uring: submissions of a loop turn batched across connections.
    Uring,
    /// epoll through a current-thread tokio runtime.
    Epoll,
}

impl Backend {
    /// Lowercase name.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Uring => "uring",
            Backend::Epoll => "epoll",
        }
    }
}

/// One step of load.
#[derive(Debug, Clone)]
pub struct Spec {
    /// What the players do.
    pub kind: Kind,
    /// Closed or open loop.
    pub mode: Mode,
    /// Connections.
    pub players: usize,
    /// Players per room (chat): player `i` is in room `i / room_size`.
    pub room_size: usize,
    /// Warm-up and measured span.
    pub window: Window,
    /// Open loop, io_uring back end: the generator wakes at most once per tick.
    pub tick: Duration,
}

/// What one step measured.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct StepResult {
    /// Connections.
    pub players: usize,
    /// Offered messages per second (open loop; NaN for the closed loop).
    pub offered: f64,
    /// Messages sent inside the measured window.
    pub sent_in_window: u64,
    /// Latency quantiles of `completed`, ms (open loop: from the scheduled send time).
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Largest.
    pub max_ms: f64,
    /// Open loop: 99th percentile of how late the generator sent (actual - scheduled), ms.
    pub lag_p99_ms: f64,
    /// Open-loop sends skipped because the player had its maximum in flight.
    pub overruns: u64,
    /// What the step sent and got back (`completed`: inside the measured window).
    #[serde(flatten)]
    pub counts: Counts,
    /// Server CPU seconds inside the window.
    pub server_cpu: f64,
    /// This process's CPU seconds inside the window.
    pub gen_cpu: f64,
    /// The window's wall seconds.
    #[serde(rename = "wall_s")]
    pub wall: f64,
    /// From the end of the window to the last reply (or giving up), seconds.
    pub drain_s: f64,
}

impl StepResult {
    /// Replies (or deliveries) per second inside the window.
    pub fn rate(&self) -> f64 {
        self.counts.completed as f64 / self.wall.max(1e-9)
    }

    /// Messages sent per second inside the window.
    pub fn sent_rate(&self) -> f64 {
        self.sent_in_window as f64 / self.wall.max(1e-9)
    }

    /// Client messages handled in the window: sends for chat (each makes many deliveries),
    /// replies for the echo kinds.
    fn messages(&self, chat: bool) -> f64 {
        (if chat {
            self.sent_in_window
        } else {
            self.counts.completed
        })
        .max(1) as f64
    }

    /// Server CPU µs per client message.
    pub fn server_us_per_msg(&self, chat: bool) -> f64 {
        self.server_cpu * 1e6 / self.messages(chat)
    }

    /// Server CPU µs per delivery (chat).
    pub fn server_us_per_delivery(&self) -> f64 {
        self.server_cpu * 1e6 / self.counts.completed.max(1) as f64
    }

    /// Load generator CPU µs per client message.
    pub fn gen_us_per_msg(&self, chat: bool) -> f64 {
        self.gen_cpu * 1e6 / self.messages(chat)
    }

    /// Cores the servers used (CPU seconds per wall second).
    pub fn cores_used(&self) -> f64 {
        self.server_cpu / self.wall.max(1e-9)
    }

    /// Replies or deliveries that never arrived.
    pub fn lost(&self) -> u64 {
        self.counts.lost()
    }

    /// Why this step does not account for every reply, if it does not.
    pub fn accounting_problem(&self) -> Option<String> {
        self.counts.problem()
    }
}

/// Consecutive uids for `n` players, never handed out twice in this process (a uid whose old
/// session is still closing would be refused).
fn next_uids(n: usize) -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(2_000_000);
    NEXT.fetch_add(n as u64, Ordering::Relaxed)
}

/// Runs one step against the frontends `addrs`, measuring the CPU of `pids`, on a thread of
/// its own (it inherits the caller's CPU affinity).
pub fn run_step(
    addrs: &[String],
    pids: &[i32],
    spec: &Spec,
    backend: Backend,
) -> Result<StepResult> {
    let nofile = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(0, |l| l.0);
    if (spec.players as u64) + 256 > nofile {
        bail!(
            "{} players need {} open files; the limit is {nofile} (raise the hard limit: ulimit -Hn)",
            spec.players,
            spec.players + 256
        );
    }
    let (addrs, pids, spec) = (addrs.to_vec(), pids.to_vec(), spec.clone());
    std::thread::Builder::new()
        .name("players".into())
        .spawn(move || step_thread(&addrs, &pids, &spec, backend))?
        .join()
        .map_err(|_| anyhow::anyhow!("the load generator thread panicked"))?
}

fn step_thread(
    addrs: &[String],
    pids: &[i32],
    spec: &Spec,
    backend: Backend,
) -> Result<StepResult> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async {
        let uid_base = next_uids(spec.players);
        let (ready, cmds) = setup::open(addrs, spec, uid_base).await?;
        let mut core = core::Core::new(spec, &cmds, uid_base, pids);
        for (i, r) in ready.iter().enumerate() {
            core.preload(i, &r.leftover);
        }
        match backend {
            Backend::Uring => {
                let socks = ready
                    .into_iter()
                    .map(|r| {
                        let s = r.stream.into_std()?;
                        s.set_nonblocking(false)?;
                        Ok(s)
                    })
                    .collect::<Result<Vec<std::net::TcpStream>>>()?;
                let fds: Vec<_> = socks.iter().map(|s| s.as_raw_fd()).collect();
                uring::run(&mut core, &fds)?;
                let r = core.finish();
                drop(socks);
                Ok(r)
            }
            Backend::Epoll => {
                let streams = ready.into_iter().map(|r| r.stream).collect();
                let core = Rc::new(RefCell::new(core));
                epoll::run(core.clone(), streams).await;
                let core = Rc::try_unwrap(core)
                    .map_err(|_| anyhow::anyhow!("a reader task outlived the run"))?
                    .into_inner();
                Ok(core.finish())
            }
        }
    })
}

/// CPU time of the servers (every thread of every process, from `schedstat`, ns) and of
/// this process (`getrusage`, µs), at one instant.
pub mod cpu {
    use super::*;

    /// One reading.
    #[derive(Debug, Clone)]
    pub struct Snapshot {
        at: Instant,
        tasks: HashMap<i32, u64>,
        servers_ticks: f64,
        own: f64,
    }

    /// Run time of every thread of `pid` (tid -> ns), from `/proc/<pid>/task/*/schedstat`.
    fn task_ns(pid: i32, out: &mut HashMap<i32, u64>) -> bool {
        let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            return false;
        };
        let mut any = false;
        for e in dir.flatten() {
            let Ok(tid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let Ok(s) = std::fs::read_to_string(e.path().join("schedstat")) else {
                continue;
            };
            if let Some(ns) = s.split_whitespace().next().and_then(|v| v.parse().ok()) {
                out.insert(tid, ns);
                any = true;
            }
        }
        any
    }

    fn own_cpu() -> f64 {
        use nix::sys::resource::{UsageWho, getrusage};
        getrusage(UsageWho::RUSAGE_SELF).map_or(0.0, |u| {
            let t = |v: nix::sys::time::TimeVal| v.tv_sec() as f64 + v.tv_usec() as f64 / 1e6;
            t(u.user_time()) + t(u.system_time())
        })
    }

    impl Snapshot {
        /// Reads the servers' and this process's CPU time now.
        pub fn take(pids: &[i32]) -> Snapshot {
            let mut tasks = HashMap::new();
            let mut servers_ticks = 0.0;
            for &p in pids {
                if !task_ns(p, &mut tasks) {
                    servers_ticks += crate::bench::procfs::cpu_secs(p).unwrap_or(0.0);
                }
            }
            Snapshot {
                at: Instant::now(),
                tasks,
                servers_ticks,
                own: own_cpu(),
            }
        }

        /// (server CPU s, own CPU s, wall s) from `self` to `later`. A thread that started in
        /// between counts whole; one that ended in between is lost (the servers keep theirs).
        pub fn delta(&self, later: &Snapshot) -> (f64, f64, f64) {
            let ns: u64 = later
                .tasks
                .iter()
                .map(|(tid, t)| t.saturating_sub(self.tasks.get(tid).copied().unwrap_or(0)))
                .sum();
            (
                ns as f64 / 1e9 + (later.servers_ticks - self.servers_ticks).max(0.0),
                (later.own - self.own).max(0.0),
                later.at.duration_since(self.at).as_secs_f64(),
            )
        }
    }

    /// Waits (up to `limit`) until `pids` use under 5 % of a core over 100 ms: what the last
    /// step left (closing thousands of sessions) is done before the next one starts.
    pub fn settle(pids: &[i32], limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let mut before = Snapshot::take(pids);
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
            let now = Snapshot::take(pids);
            let (cpu, _, wall) = before.delta(&now);
            if cpu / wall < 0.05 {
                return true;
            }
            before = now;
        }
        false
    }
}

/// CPU pinning of the servers and the load generator with `taskset`.
#[derive(Debug, Clone)]
pub struct Pinning {
    /// CPU list for the servers (`taskset -c`), when pinning is possible.
    pub servers: Option<String>,
    /// CPU list for the load generator.
    pub generator: Option<String>,
    /// What was done, or why not.
    pub note: String,
    /// This process's CPU list before pinning (restored at the end).
    original: Option<String>,
}

/// The CPUs this process may run on (`Cpus_allowed_list`), e.g. `0-1`.
fn allowed_cpus() -> Option<String> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let l = s.lines().find(|l| l.starts_with("Cpus_allowed_list:"))?;
    Some(l.split_once(':')?.1.trim().to_string())
}

/// The CPU numbers of a list like `0-3,6`.
fn parse_cpus(list: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<u32>(), b.parse::<u32>()) {
                    out.extend(a..=b);
                }
            }
            None => out.extend(part.parse::<u32>().ok()),
        }
    }
    out
}

impl Pinning {
    /// Servers on the second allowed CPU, the generator on the first, when `taskset` runs and
    /// this process may use two CPUs; otherwise nothing is pinned and `note` says why.
    pub fn detect() -> Pinning {
        let original = allowed_cpus();
        let cpus = original.as_deref().map(parse_cpus).unwrap_or_default();
        let none = |note: String| Pinning {
            servers: None,
            generator: None,
            note,
            original: None,
        };
        match Command::new("taskset")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
        {
            Ok(s) if s.success() => {}
            _ => return none("NOT PINNED: taskset is not available (util-linux)".into()),
        }
        if cpus.len() < 2 {
            return none(format!(
                "NOT PINNED: this process may use {} CPU(s) ({}); servers and load generator share it",
                cpus.len(),
                original.as_deref().unwrap_or("?")
            ));
        }
        Pinning {
            generator: Some(cpus[0].to_string()),
            servers: Some(cpus[1].to_string()),
            note: format!(
                "servers pinned to CPU {}, load generator (this process) to CPU {} (taskset)",
                cpus[1], cpus[0]
            ),
            original,
        }
    }

    /// Pins every thread of `pid` to `cpus`.
    pub fn pin(pid: i32, cpus: &str) -> Result<()> {
        let out = Command::new("taskset")
            .args(["-a", "-p", "-c", cpus, &pid.to_string()])
            .stdin(Stdio::null())
            .output()
            .context("run taskset")?;
        if !out.status.success() {
            bail!(
                "taskset -a -p -c {cpus} {pid} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// Pins this process (every thread; threads started later inherit it) to the generator's
    /// CPU.
    pub fn pin_self(&self) -> Result<()> {
        match &self.generator {
            Some(c) => Pinning::pin(std::process::id() as i32, c),
            None => Ok(()),
        }
    }

    /// Pins every process of a system under test to the servers' CPU.
    pub fn pin_servers(&self, pids: &[i32]) -> Result<()> {
        match &self.servers {
            Some(c) => pids.iter().try_for_each(|p| Pinning::pin(*p, c)),
            None => Ok(()),
        }
    }

    /// Gives this process its original CPUs back.
    pub fn restore_self(&self) {
        if let Some(c) = &self.original {
            let _ = Pinning::pin(std::process::id() as i32, c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpus("0-1"), vec![0, 1]);
        assert_eq!(parse_cpus("0,2-3"), vec![0, 2, 3]);
        assert_eq!(parse_cpus(""), Vec::<u32>::new());
    }
}
