//! Panic boundaries, the primitives: [`catch`] for synchronous code and [`guarded`] for a
//! future awaited in place. A panic becomes a [`Panic`] value for the caller to report and fail
//! that one piece of work with.
//!
//! Every layer uses them: routing puts every piece of game code behind one
//! ([`crate::routing::dispatch`] adds the ordered dispatch and the reporting); the mesh and the
//! edge put their own loops behind one, so a bug there closes one link or one connection
//! instead of leaving it installed and dead. The boundaries cost no allocation (unwinding is
//! zero-cost until something panics); Rust's panic hook still prints the panic's location to
//! stderr (the server log) first.

use std::any::Any;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};

use futures_util::FutureExt;

/// A panic caught at a boundary: its payload.
pub(crate) struct Panic(Box<dyn Any + Send>);

impl Panic {
    /// The panic's message: the text of `panic!("...")`, or a placeholder for other payloads.
    pub(crate) fn message(&self) -> &str {
        if let Some(s) = self.0.downcast_ref::<&'static str>() {
            s
        } else if let Some(s) = self.0.downcast_ref::<String>() {
            s
        } else {
            "(a panic payload that is not a string)"
        }
    }
}

impl std::fmt::Debug for Panic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Panic({:?})", self.message())
    }
}

/// Runs `f` behind a panic boundary.
///
/// `AssertUnwindSafe`: what a panic leaves half-done is the game's own state (as in any
/// language with exceptions); kennel's state is never mid-update while game code runs.
pub(crate) fn catch<R>(f: impl FnOnce() -> R) -> Result<R, Panic> {
    catch_unwind(AssertUnwindSafe(f)).map_err(Panic)
}

/// `fut` behind a panic boundary (work awaited in place: client on/off callbacks, local
/// remotes, before-exit hooks, a whole connection's loop, a link's reader).
pub(crate) fn guarded<F: Future>(fut: F) -> impl Future<Output = Result<F::Output, Panic>> {
    AssertUnwindSafe(fut)
        .catch_unwind()
        .map(|r| r.map_err(Panic))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn panics_become_values_with_their_message() {
        assert_eq!(catch(|| 5).unwrap(), 5);
        let p = catch(|| std::panic::panic_any(7u8)).unwrap_err();
        assert_eq!(p.message(), "(a panic payload that is not a string)");
        let p = catch(|| panic!("with {}", "args")).unwrap_err();
        assert_eq!(p.message(), "with args");
        let p = guarded(async { panic!("static") }).await.unwrap_err();
        assert_eq!(p.message(), "static");
        assert_eq!(guarded(async { 3 }).await.unwrap(), 3);
    }
}
