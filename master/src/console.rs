//! The master's output: status lines (`kennel: ...`) and echoed server output (`[id] ...`) on
//! stdout, its tracing log on stderr, and, in the foreground, a copy of the status lines and
//! the log in `logs/master.log` (see [`log_to`]).
//!
//! Nothing here fails or panics on a write error: a closed pipe (`kennel start | tee`, whose
//! `tee` a Ctrl-C kills first) or a hung-up terminal must never take the master down with its
//! servers left running. (Rust ignores SIGPIPE, so such a write returns `EPIPE`, which
//! `println!` and tracing-subscriber's own error report would turn into a panic.) After a
//! failed write a stream is given up for good; the master log copy goes on.
//!
//! Each line is written whole under the stream's lock, so lines from concurrent tasks never
//! interleave.

use std::fmt::Display;
use std::fs::File;
use std::io::{self, Write};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

/// The foreground master's own log file, once [`log_to`] set it.
static MASTER_LOG: OnceLock<File> = OnceLock::new();
/// Set after a write to stdout failed.
static STDOUT_GONE: AtomicBool = AtomicBool::new(false);
/// Set after a write to stderr failed.
static STDERR_GONE: AtomicBool = AtomicBool::new(false);

/// From now on, status lines and the log are also appended to `file` (`logs/master.log` of a
/// foreground master; a detached one has its stdout and stderr there already). Set once.
pub(crate) fn log_to(file: File) {
    let _ = MASTER_LOG.set(file);
}

/// Writes `bytes` to `out` unless `gone`; a failure sets `gone`.
fn write_or_give_up(mut out: impl Write, gone: &AtomicBool, bytes: &[u8]) {
    if gone.load(Ordering::Relaxed) {
        return;
    }
    if out.write_all(bytes).and_then(|()| out.flush()).is_err() {
        gone.store(true, Ordering::Relaxed);
    }
}

/// Appends `bytes` to the master log, if there is one (errors ignored: a full disk must not
/// stop the cluster either).
fn to_master_log(bytes: &[u8]) {
    if let Some(mut f) = MASTER_LOG.get() {
        let _ = f.write_all(bytes);
    }
}

/// Writes one status line to stdout (and the master log).
pub(crate) fn say(line: impl Display) {
    let line = format!("{line}\n");
    write_or_give_up(io::stdout().lock(), &STDOUT_GONE, line.as_bytes());
    to_master_log(line.as_bytes());
}

/// Writes one line of a server's output to stdout only (the server's own log file has it).
pub(crate) fn server_line(line: impl Display) {
    if STDOUT_GONE.load(Ordering::Relaxed) {
        return;
    }
    let line = format!("{line}\n");
    write_or_give_up(io::stdout().lock(), &STDOUT_GONE, line.as_bytes());
}

/// Writes `text` to stdout as is (a CLI command's output).
pub(crate) fn out(text: &str) {
    write_or_give_up(io::stdout().lock(), &STDOUT_GONE, text.as_bytes());
}

/// Writes `text` to stderr as is (a CLI error or prompt).
pub(crate) fn err(text: &str) {
    write_or_give_up(io::stderr().lock(), &STDERR_GONE, text.as_bytes());
}

/// The tracing writer for stderr: never fails.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Stderr;

impl Write for Stderr {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        write_or_give_up(io::stderr().lock(), &STDERR_GONE, buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The tracing writer for the master log: a no-op until [`log_to`]; never fails.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MasterLog;

impl MasterLog {
    /// Whether there is a master log to write to.
    pub(crate) fn active() -> bool {
        MASTER_LOG.get().is_some()
    }
}

impl Write for MasterLog {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        to_master_log(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_stream_is_given_up_without_an_error() {
        struct Broken(usize);
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                self.0 += 1;
                Err(io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let gone = AtomicBool::new(false);
        let mut b = Broken(0);
        write_or_give_up(&mut b, &gone, b"one\n");
        write_or_give_up(&mut b, &gone, b"two\n");
        assert!(gone.load(Ordering::Relaxed));
        assert_eq!(b.0, 1, "a broken stream is not written again");
    }
}
