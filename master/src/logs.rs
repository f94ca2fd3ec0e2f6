//! Server log files (`<project>/logs/<id>.log`), their size-capped rotation, and their echo
//! on the master's stdout.
//!
//! A server's stdout and stderr are the log file itself (opened `O_APPEND | O_CREAT`), never a
//! pipe to the master, so a server never blocks or dies on a dead pipe when the master is
//! gone, and keeps logging while no master runs. In the foreground the master *tails* each
//! file: a task per server reads the bytes appended since the last look every
//! [`TAIL_INTERVAL`] and prints each complete line as `[<id>] <line>`.
//!
//! Rotation is *copy-truncate* (logrotate's `copytruncate`), because the server's descriptor
//! cannot be swapped from outside: every [`ROTATE_INTERVAL`] the master looks at each
//! `logs/*.log`; one that reached `maxBytes` is copied to `<id>.log.1` (older copies shift to
//! `.2` .. `.<keep>`, the oldest is dropped) and truncated to 0. `O_APPEND` writers continue at
//! the new end, so the file never has a hole. The copy is repeated until it has caught up with
//! the file, then the file is truncated at once: only bytes written in that instant can be
//! lost. While no master runs, nothing rotates (the file grows until a master starts).

use std::fs::{File, OpenOptions};
use std::io::{self, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::sync::CancellationToken;

use crate::console::server_line;

/// How often the master looks at the log files' sizes.
pub(crate) const ROTATE_INTERVAL: Duration = Duration::from_secs(1);
/// How log files are rotated (`"logs"` of master.json, checked when the project loads).
pub(crate) type Rotation = kennel_config::settings::LogRotation;

/// The `n`-th rotated copy of `path` (`<path>.<n>`).
pub(crate) fn rotated(path: &Path, n: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

/// Rotates `path` if it holds at least `rotation.max_bytes`; returns whether it did.
pub(crate) fn rotate_if_full(path: &Path, rotation: Rotation) -> io::Result<bool> {
    if rotation.max_bytes == 0 || current_len(path) < rotation.max_bytes {
        return Ok(false);
    }
    for n in (1..rotation.keep).rev() {
        match std::fs::rename(rotated(path, n), rotated(path, n + 1)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    copy_truncate(path, &rotated(path, 1))?;
    Ok(true)
}

/// Copies `path` to `to` until the copy has caught up with writers, then truncates `path`.
fn copy_truncate(path: &Path, to: &Path) -> io::Result<()> {
    use std::io::Seek;
    let mut src = OpenOptions::new().read(true).write(true).open(path)?;
    let mut dst = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(LOG_MODE)
        .open(to)?;
    let mut copied = 0u64;
    loop {
        src.seek(SeekFrom::Start(copied))?;
        let n = io::copy(&mut src, &mut dst)?;
        copied += n;
        if n == 0 || src.metadata()?.len() <= copied {
            break;
        }
    }
    src.set_len(0)?;
    Ok(())
}

/// Rotates every full `*.log` file in `logs_dir` every [`ROTATE_INTERVAL`] until `stop`.
pub(crate) async fn rotate_loop(logs_dir: PathBuf, rotation: Rotation, stop: CancellationToken) {
    if rotation.max_bytes == 0 {
        return;
    }
    let mut tick = tokio::time::interval(ROTATE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let dir = logs_dir.clone();
        let _ = tokio::task::spawn_blocking(move || rotate_dir(&dir, rotation)).await;
    }
}

/// One pass of [`rotate_loop`].
pub(crate) fn rotate_dir(dir: &Path, rotation: Rotation) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        if path.extension().is_none_or(|x| x != "log") {
            continue;
        }
        match rotate_if_full(&path, rotation) {
            Ok(true) => tracing::info!(file = %path.display(), "log file rotated"),
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(file = %path.display(), cause = %e, "cannot rotate the log file")
            }
        }
    }
}

/// How often a tail looks for new bytes.
pub(crate) const TAIL_INTERVAL: Duration = Duration::from_millis(100);
/// At most this many bytes are read per look (the rest waits for the next one).
const MAX_READ: u64 = 1024 * 1024;
/// A line longer than this is printed in pieces.
const MAX_LINE: usize = 64 * 1024;

/// The log file of server `id` in `logs_dir`.
pub(crate) fn log_path(logs_dir: &Path, id: &str) -> PathBuf {
    logs_dir.join(format!("{id}.log"))
}

/// The mode of log files and their rotated copies: logs may hold player ids, addresses and
/// whatever a game logs, so others cannot read them (the group can, e.g. `adm`).
pub(crate) const LOG_MODE: u32 = 0o640;

/// Opens (creating it, mode [`LOG_MODE`]) a log file for appending.
pub(crate) fn open_log(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(LOG_MODE)
        .open(path)
}

/// The current length of a file (0 when it does not exist).
pub(crate) fn current_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// The last `n` lines of a log file, continuing into its newest rotated copy (`.1`) when the
/// file itself holds fewer.
pub(crate) fn last_log_lines(path: &Path, n: usize) -> io::Result<Vec<String>> {
    let mut lines = last_lines(path, n)?;
    if lines.len() < n
        && let Ok(mut older) = last_lines(&rotated(path, 1), n - lines.len())
    {
        older.append(&mut lines);
        lines = older;
    }
    Ok(lines)
}

/// The last `n` lines of a file (looking at most at its last 256 KiB).
pub(crate) fn last_lines(path: &Path, n: usize) -> io::Result<Vec<String>> {
    use std::io::{Read, Seek};
    const LOOK: u64 = 256 * 1024;
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    let from = len.saturating_sub(LOOK);
    file.seek(SeekFrom::Start(from))?;
    let mut buf = Vec::new();
    file.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    let mut lines: Vec<&str> = text.lines().collect();
    if from > 0 && !lines.is_empty() {
        lines.remove(0); // most likely cut in the middle
    }
    let skip = lines.len().saturating_sub(n);
    Ok(lines[skip..].iter().map(|l| (*l).to_owned()).collect())
}

/// Prints what is appended to `path` from byte `from` on, line by line, forever (`logs -f`).
pub(crate) async fn follow(path: PathBuf, from: u64) {
    echo(String::new(), path, from, CancellationToken::new()).await;
}

/// Echoes what is appended to `path` from byte `from` on, as `[id] line`, until `stop` is
/// cancelled; then reads once more and prints any unterminated last line.
pub(crate) async fn tail(id: String, path: PathBuf, from: u64, stop: CancellationToken) {
    echo(format!("[{id}] "), path, from, stop).await;
}

/// Prints each line appended to `path` from `from` on, behind `prefix`, until `stop`.
async fn echo(prefix: String, path: PathBuf, from: u64, stop: CancellationToken) {
    let mut tail = Tail {
        prefix,
        path,
        pos: from,
        partial: Vec::new(),
    };
    let mut tick = tokio::time::interval(TAIL_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let last = tokio::select! {
            _ = tick.tick() => false,
            _ = stop.cancelled() => true,
        };
        // Drain everything there is (on the last look too), not just one MAX_READ.
        while tail.read_new().await > 0 {}
        if last {
            tail.flush_partial();
            return;
        }
    }
}

struct Tail {
    prefix: String,
    path: PathBuf,
    pos: u64,
    partial: Vec<u8>,
}

impl Tail {
    /// Reads and prints what was appended since the last call; returns the bytes read.
    async fn read_new(&mut self) -> u64 {
        let Ok(mut file) = tokio::fs::File::open(&self.path).await else {
            return 0;
        };
        let Ok(len) = file.metadata().await.map(|m| m.len()) else {
            return 0;
        };
        if len < self.pos {
            // Rotated (copied to `.1`, then truncated): print what was appended before the
            // rotation from the copy, then start over on the file.
            self.finish_rotated().await;
            self.pos = 0;
        }
        if len == self.pos || file.seek(SeekFrom::Start(self.pos)).await.is_err() {
            return 0;
        }
        let want = (len - self.pos).min(MAX_READ);
        let mut buf = Vec::with_capacity(want as usize);
        let Ok(n) = (&mut file).take(want).read_to_end(&mut buf).await else {
            return 0;
        };
        self.pos += n as u64;
        self.feed(&buf);
        n as u64
    }

    /// Prints the bytes of the rotated copy `.1` beyond `pos` (those the file held when it
    /// was rotated and this tail had not read yet), and any unterminated line.
    async fn finish_rotated(&mut self) {
        if let Ok(mut old) = tokio::fs::File::open(rotated(&self.path, 1)).await
            && old.metadata().await.is_ok_and(|m| m.len() >= self.pos)
            && old.seek(SeekFrom::Start(self.pos)).await.is_ok()
        {
            let mut buf = Vec::new();
            if (&mut old)
                .take(MAX_READ)
                .read_to_end(&mut buf)
                .await
                .is_ok()
            {
                self.feed(&buf);
            }
        }
        self.flush_partial();
    }

    fn feed(&mut self, bytes: &[u8]) {
        for chunk in bytes.split_inclusive(|b| *b == b'\n') {
            self.partial.extend_from_slice(chunk);
            if chunk.ends_with(b"\n") || self.partial.len() >= MAX_LINE {
                self.print_partial();
            }
        }
    }

    fn flush_partial(&mut self) {
        if !self.partial.is_empty() {
            self.print_partial();
        }
    }

    fn print_partial(&mut self) {
        let mut line = &self.partial[..];
        while let Some(rest) = line.strip_suffix(b"\n") {
            line = rest.strip_suffix(b"\r").unwrap_or(rest);
        }
        server_line(format_args!(
            "{}{}",
            self.prefix,
            String::from_utf8_lossy(line)
        ));
        self.partial.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn copy_truncate_keeps_the_writer_appending() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.log");
        // The "server": one O_APPEND descriptor kept open across rotations.
        let mut w = open_log(&path).unwrap();
        let rot = Rotation {
            max_bytes: 10,
            keep: 2,
        };
        for round in 0..4 {
            writeln!(w, "round {round} line").unwrap();
            assert!(rotate_if_full(&path, rot).unwrap());
            assert_eq!(current_len(&path), 0);
        }
        writeln!(w, "after").unwrap();
        // Appends land at the start of the truncated file, not after a hole.
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "after\n");
        assert_eq!(
            std::fs::read_to_string(rotated(&path, 1)).unwrap(),
            "round 3 line\n"
        );
        assert_eq!(
            std::fs::read_to_string(rotated(&path, 2)).unwrap(),
            "round 2 line\n"
        );
        assert!(!rotated(&path, 3).exists(), "keep 2 keeps two copies");
        // Under the cap: untouched.
        assert!(!rotate_if_full(&path, rot).unwrap());
        // The last lines continue into the rotated copy.
        assert_eq!(last_log_lines(&path, 2).unwrap(), ["round 3 line", "after"]);
        // Off.
        writeln!(w, "0123456789").unwrap();
        let off = Rotation {
            max_bytes: 0,
            keep: 2,
        };
        assert!(!rotate_if_full(&path, off).unwrap());
    }

    #[test]
    fn log_files_and_their_copies_are_not_world_readable() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chat-server-1.log");
        let mut w = open_log(&path).unwrap();
        writeln!(w, "a line").unwrap();
        let rot = Rotation {
            max_bytes: 1,
            keep: 2,
        };
        assert!(rotate_if_full(&path, rot).unwrap());
        for p in [path.clone(), rotated(&path, 1)] {
            let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
            // 0640, less whatever the umask takes away.
            assert_eq!(mode & !LOG_MODE, 0, "{} has mode {mode:04o}", p.display());
            assert_eq!(mode & 0o600, 0o600, "{} has mode {mode:04o}", p.display());
        }
    }
}
