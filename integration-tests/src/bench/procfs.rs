//! Process metrics from `/proc`: CPU time (utime + stime) and resident memory of a set of
//! processes, and the machine description printed above the results.

use std::time::Instant;

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`, 100 on Linux).
pub fn clock_ticks() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map(|t| t as f64)
        .unwrap_or(100.0)
}

/// utime + stime of `pid` in seconds (`None` once it is gone).
pub fn cpu_secs(pid: i32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at field 3 (state).
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks())
}

/// Resident set size of `pid` in bytes (`VmRSS`; `None` once it is gone).
pub fn rss_bytes(pid: i32) -> Option<u64> {
    status_kb(pid, "VmRSS:").map(|kb| kb * 1024)
}

/// Anonymous resident memory of `pid` in bytes (`RssAnon`: heap, stacks; not the mapped
/// binary and libraries; `None` once it is gone).
pub fn anon_bytes(pid: i32) -> Option<u64> {
    status_kb(pid, "RssAnon:").map(|kb| kb * 1024)
}

/// Sum of [`anon_bytes`] over `pids`.
pub fn total_anon(pids: &[i32]) -> u64 {
    pids.iter().filter_map(|p| anon_bytes(*p)).sum()
}

/// A `kB` field of `/proc/<pid>/status`.
fn status_kb(pid: i32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Proportional set size of `pid` in bytes (`Pss` of `smaps_rollup`: each shared page counts
/// as its share among the processes mapping it; `None` once it is gone).
pub fn pss_bytes(pid: i32) -> Option<u64> {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let line = rollup.lines().find(|l| l.starts_with("Pss:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Sum of [`pss_bytes`] over `pids`.
pub fn total_pss(pids: &[i32]) -> u64 {
    pids.iter().filter_map(|p| pss_bytes(*p)).sum()
}

/// Sum of [`rss_bytes`] over `pids`.
pub fn total_rss(pids: &[i32]) -> u64 {
    pids.iter().filter_map(|p| rss_bytes(*p)).sum()
}

/// CPU seconds of a set of processes and of this process at one instant.
#[derive(Debug, Clone)]
pub struct CpuSnapshot {
    at: Instant,
    servers: f64,
    own: f64,
}

impl CpuSnapshot {
    /// Reads the CPU time of `pids` (summed) and of this process now.
    pub fn take(pids: &[i32]) -> CpuSnapshot {
        CpuSnapshot {
            at: Instant::now(),
            servers: pids.iter().filter_map(|p| cpu_secs(*p)).sum(),
            own: cpu_secs(std::process::id() as i32).unwrap_or(0.0),
        }
    }

    /// (server CPU seconds, load generator CPU seconds, wall seconds) from `self` to `later`.
    pub fn delta(&self, later: &CpuSnapshot) -> (f64, f64, f64) {
        (
            (later.servers - self.servers).max(0.0),
            (later.own - self.own).max(0.0),
            later.at.duration_since(self.at).as_secs_f64(),
        )
    }
}

/// `nproc` and the CPU model, for the report header.
pub fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let n = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(String::new(), |kb| {
            format!(", {:.1} GiB RAM", kb as f64 / 1048576.0)
        });
    format!("{n} cores ({model}){mem}")
}

/// Raises this process's open-file soft limit to its hard limit (children inherit it).
/// Returns the new soft limit.
pub fn raise_nofile() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
                hard
            } else {
                soft
            }
        }
        Ok((soft, _)) => soft,
        Err(_) => 0,
    }
}
