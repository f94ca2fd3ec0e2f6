//! The master's stdout: status lines (`kennel: ...`) and echoed server output (`[id] ...`).
//! Each line is written whole under the stdout lock and flushed, so lines from concurrent
//! tasks never interleave; write errors (a closed pipe) are ignored, never fatal.

use std::fmt::Display;
use std::io::Write;

/// Writes one line to stdout and flushes it.
pub(crate) fn say(line: impl Display) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}
