//! What the master reads from `/proc` and keeps on disk about its servers' processes:
//!
//! - pid files `.kennel/run/<id>.pid` (`<pid> <start time>`, the start time being field 22 of
//!   `/proc/<pid>/stat`, so a recycled pid is never mistaken for the server);
//! - the checks that decide whether a process named by a pid file is still that server
//!   (same start time, not a zombie, `--id <id>` in its `/proc/<pid>/cmdline`);
//! - [`watch_exit`]: an event-driven wait for the exit of a process that is not our child
//!   (a pidfd turns readable when the process exits);
//! - resource samples (`/proc/<pid>/stat` CPU ticks and `/proc/<pid>/statm` resident pages);
//! - [`signal_group`]: a signal to a server's process group.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tracing::warn;

/// Sends `sig` to the process group led by `pid`. A group that no longer exists is not an error.
pub(crate) fn signal_group(pid: u32, sig: Signal) {
    let Ok(raw) = i32::try_from(pid) else { return };
    if raw <= 1 {
        return; // never signal "every process" or init by mistake
    }
    match killpg(Pid::from_raw(raw), sig) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
        Err(e) => warn!(pid, signal = %sig, cause = %e, "cannot signal process group"),
    }
}

/// Where pid files live, relative to the project directory.
pub(crate) const RUN_DIR: &str = ".kennel/run";

/// The pid file of server `id`.
pub(crate) fn pid_file(run_dir: &Path, id: &str) -> PathBuf {
    run_dir.join(format!("{id}.pid"))
}

/// The fields of `/proc/<pid>/stat` after the command name: index 0 is field 3 (state).
fn stat_fields(pid: u32) -> io::Result<Vec<String>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) is in parentheses and may hold spaces or parentheses.
    let rest = text
        .rfind(')')
        .map(|at| &text[at + 1..])
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "malformed stat"))?;
    Ok(rest.split_whitespace().map(str::to_owned).collect())
}

/// Field `n` (1-based, as in proc(5), `n >= 3`) of `/proc/<pid>/stat`.
fn stat_field(fields: &[String], n: usize) -> Option<u64> {
    fields.get(n - 3)?.parse().ok()
}

/// The start time of `pid` (clock ticks after boot), if it exists and is not a zombie.
pub(crate) fn start_time(pid: u32) -> Option<u64> {
    let fields = stat_fields(pid).ok()?;
    if fields.first().is_some_and(|s| s == "Z" || s == "X") {
        return None;
    }
    stat_field(&fields, 22)
}

/// The process group of `pid` (field 5 of `/proc/<pid>/stat`).
pub(crate) fn process_group(pid: u32) -> Option<u32> {
    let fields = stat_fields(pid).ok()?;
    u32::try_from(stat_field(&fields, 5)?).ok()
}

/// Writes the pid file of a just-spawned server. Best effort: a failure is returned for the
/// caller to log.
pub(crate) fn write_pid_file(path: &Path, pid: u32) -> io::Result<()> {
    let start =
        start_time(pid).ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no /proc entry"))?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("pid.tmp");
    std::fs::write(&tmp, format!("{pid} {start}\n"))?;
    std::fs::rename(&tmp, path)
}

/// Removes a pid file; a missing one is fine.
pub(crate) fn remove_pid_file(path: &Path) {
    let _ = std::fs::remove_file(path);
}

/// `(pid, start time)` from a pid file.
fn read_pid_file(path: &Path) -> Option<(u32, u64)> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut it = text.split_whitespace();
    let pid = it.next()?.parse().ok()?;
    let start = it.next()?.parse().ok()?;
    Some((pid, start))
}

/// Whether `/proc/<pid>/cmdline` holds `--id <id>` as two consecutive arguments, or, for a
/// launcher (`ssh host "cd dir && bin --id <id> ..."`), inside one argument.
pub(crate) fn runs_as(pid: u32, id: &str) -> bool {
    let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = raw.split(|b| *b == 0).collect();
    let quoted = shlex::try_quote(id)
        .map(|q| q.into_owned())
        .unwrap_or_default();
    let inline = format!("--id {quoted}");
    args.windows(2)
        .any(|w| w[0] == b"--id" && w[1] == id.as_bytes())
        || args.iter().any(|a| {
            let a = String::from_utf8_lossy(a);
            a.match_indices(&inline).any(|(at, m)| {
                a[at + m.len()..]
                    .chars()
                    .next()
                    .is_none_or(char::is_whitespace)
            })
        })
}

/// A live server process found through its pid file.
#[derive(Debug)]
pub(crate) struct Adoptable {
    pub(crate) pid: u32,
    /// How long it has been running.
    pub(crate) age: Duration,
    /// A pidfd on it, opened before the checks (so the checks are about this very process).
    pub(crate) pidfd: OwnedFd,
}

/// The process the pid file of server `id` names, if it is still that server.
pub(crate) fn find_adoptable(pid_file: &Path, id: &str) -> Option<Adoptable> {
    let (pid, start) = read_pid_file(pid_file)?;
    if pid <= 1 {
        return None;
    }
    let pidfd = pidfd_open(pid).ok()?;
    if start_time(pid)? != start || !runs_as(pid, id) {
        return None;
    }
    Some(Adoptable {
        pid,
        age: age(start).unwrap_or_default(),
        pidfd,
    })
}

/// How long ago a process with start time `start` (ticks after boot) started.
fn age(start: u64) -> Option<Duration> {
    let uptime: f64 = std::fs::read_to_string("/proc/uptime")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let started = start as f64 / clock_ticks() as f64;
    Some(Duration::from_secs_f64((uptime - started).max(0.0)))
}

/// `sysconf(_SC_CLK_TCK)` (100 when unknown).
fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let v = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(v).ok().filter(|&v| v > 0).unwrap_or(100)
}

/// `sysconf(_SC_PAGESIZE)` (4096 when unknown).
fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let v = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(v).ok().filter(|&v| v > 0).unwrap_or(4096)
}

fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    let pid =
        libc::pid_t::try_from(pid).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, libc::PIDFD_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = i32::try_from(fd).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
    // SAFETY: the descriptor was just returned to us and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Resolves when the process behind `pidfd` has exited (its pidfd turns readable).
pub(crate) async fn watch_exit(pidfd: OwnedFd) -> io::Result<()> {
    // SAFETY: the `OwnedFd` is moved into the `AsyncFd`, stays open and always returns the
    // same descriptor until the `AsyncFd` is dropped.
    let fd = unsafe { AsyncFd::register_with_interest(pidfd, Interest::READABLE) }
        .map_err(io::Error::from)?;
    let _guard = fd.readable().await?;
    Ok(())
}

/// One reading of a process's resource use.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Reading {
    /// utime + stime, in clock ticks.
    ticks: u64,
    /// Resident set size in bytes.
    pub(crate) rss: u64,
}

/// Reads the CPU ticks and resident memory of `pid`.
pub(crate) fn read_usage(pid: u32) -> Option<Reading> {
    let fields = stat_fields(pid).ok()?;
    let ticks = stat_field(&fields, 14)? + stat_field(&fields, 15)?;
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(Reading {
        ticks,
        rss: pages * page_size(),
    })
}

/// CPU use in percent of one core between two readings `elapsed` apart.
pub(crate) fn cpu_percent(before: Reading, after: Reading, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs <= 0.0 {
        return 0.0;
    }
    let used = after.ticks.saturating_sub(before.ticks) as f64 / clock_ticks() as f64;
    used / secs * 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_found_and_checked() {
        let pid = std::process::id();
        let start = start_time(pid).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let file = pid_file(dir.path(), "x");
        write_pid_file(&file, pid).unwrap();
        assert_eq!(read_pid_file(&file), Some((pid, start)));
        // Our cmdline has no `--id x`: not adoptable.
        assert!(find_adoptable(&file, "x").is_none());
        // A stale start time is refused too.
        std::fs::write(&file, format!("{pid} {}\n", start + 1)).unwrap();
        assert!(find_adoptable(&file, "x").is_none());
        assert!(read_usage(pid).unwrap().rss > 0);
        assert!(age(start).is_some());
    }

    #[tokio::test]
    async fn pidfd_turns_readable_on_exit() {
        let mut child = std::process::Command::new("sh")
            .args(["-c", "read x"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let fd = pidfd_open(child.id()).unwrap();
        let watch = tokio::spawn(watch_exit(fd));
        drop(child.stdin.take());
        tokio::time::timeout(Duration::from_secs(10), watch)
            .await
            .expect("no exit seen")
            .unwrap()
            .unwrap();
        child.wait().unwrap();
    }
}
