//! Server log files (`<project>/logs/<id>.log`) and their echo on the master's stdout.
//!
//! A server's stdout and stderr are the log file itself (opened `O_APPEND | O_CREAT`), never a
//! pipe to the master, so a server never dies on a dead pipe when the master is gone. In the
//! foreground the master *tails* each file: a task per server reads the bytes appended since
//! the last look every [`TAIL_INTERVAL`] and prints each complete line as `[<id>] <line>`.

use std::fs::{File, OpenOptions};
use std::io::{self, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::sync::CancellationToken;

use crate::console::say;

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

/// Opens (creating it, mode 0644) a log file for appending.
pub(crate) fn open_log(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o644)
        .open(path)
}

/// The current length of a file (0 when it does not exist).
pub(crate) fn current_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
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
            // Truncated (or replaced): start over.
            self.pos = 0;
            self.partial.clear();
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
        say(format_args!(
            "{}{}",
            self.prefix,
            String::from_utf8_lossy(line)
        ));
        self.partial.clear();
    }
}
