//! Ordered dispatch behind panic boundaries.
//!
//! A message's work runs inline until its first `.await` that is not ready, then continues as
//! its own task. Messages of one connection or link therefore start in arrival order (as in
//! mydog, where a handler runs synchronously until it awaits), while a handler that waits (an
//! RPC, a timer) does not hold up the messages behind it.
//!
//! [`poll_now`] is the first step: the caller polls the (already boxed) work in place and
//! spawns only what is left ([`spawn_rest`]), so work that finishes at once costs no task and
//! no extra box.
//!
//! Every piece of game code (handlers, remotes, filters, route functions, codecs, callbacks)
//! runs behind one of the boundaries here: [`catch`] for synchronous code, [`poll_now`] for the
//! inline poll, [`spawn_rest`] for the spawned remainder and [`guarded`] for work awaited in
//! place. A panic becomes a [`Panic`] value for the caller to report and fail that one piece of
//! work with; the connection task or link reader it ran in goes on. The boundaries cost no
//! allocation (unwinding is zero-cost until something panics); Rust's panic hook still prints
//! the panic's location to stderr (the server log) first.

use std::any::Any;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

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

/// Polls `fut` once, right now, behind a panic boundary: `Ready(Ok(output))`,
/// `Ready(Err(panic))` (then `fut` must not be polled again) or `Pending` (the caller spawns
/// the rest with [`spawn_rest`]). The poll uses a no-op waker: what `fut` waits for is
/// registered again by the spawned task's first poll, which sees anything that happened in
/// between (every future checks its condition when polled). So dispatching needs no `.await`,
/// and the caller's own future holds no state for it.
pub(crate) fn poll_now<T, F: Future<Output = T> + ?Sized>(
    fut: &mut Pin<Box<F>>,
) -> Poll<Result<T, Panic>> {
    match catch(|| fut.as_mut().poll(&mut Context::from_waker(Waker::noop()))) {
        Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
        Ok(Poll::Pending) => Poll::Pending,
        Err(p) => Poll::Ready(Err(p)),
    }
}

/// Spawns the rest of work [`poll_now`] left pending, behind a panic boundary; `done` gets its
/// output or its panic, in the same task.
pub(crate) fn spawn_rest<F, D>(fut: F, done: D)
where
    F: Future + Send + 'static,
    F::Output: Send,
    D: FnOnce(Result<F::Output, Panic>) + Send + 'static,
{
    tokio::spawn(async move { done(guarded(fut).await) });
}

/// `fut` behind a panic boundary (work awaited in place: client on/off callbacks, local
/// remotes, before-exit hooks, a whole connection's loop).
pub(crate) fn guarded<F: Future>(fut: F) -> impl Future<Output = Result<F::Output, Panic>> {
    AssertUnwindSafe(fut)
        .catch_unwind()
        .map(|r| r.map_err(Panic))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// What the app does with a message's work: poll in place, spawn the rest.
    fn in_order<F: Future<Output = ()> + Send + 'static>(fut: F) {
        let mut fut = Box::pin(fut);
        if poll_now(&mut fut).is_pending() {
            spawn_rest(fut, |r| r.unwrap());
        }
    }

    #[tokio::test]
    async fn ready_work_runs_inline_in_order() {
        let log = Arc::new(Mutex::new(Vec::new()));
        for i in 0..5 {
            let log = log.clone();
            in_order(async move { log.lock().unwrap().push(i) });
        }
        assert_eq!(*log.lock().unwrap(), vec![0, 1, 2, 3, 4]);
    }

    #[tokio::test]
    async fn poll_now_gives_the_output_of_ready_work_only() {
        let mut ready = Box::pin(async { 7 });
        assert!(matches!(poll_now(&mut ready), Poll::Ready(Ok(7))));
        let (tx, rx) = tokio::sync::oneshot::channel::<u32>();
        let mut waiting = Box::pin(async move { rx.await.unwrap() });
        assert!(poll_now(&mut waiting).is_pending());
        tx.send(9).unwrap();
        let out = tokio::time::timeout(std::time::Duration::from_secs(5), waiting).await;
        assert_eq!(out.unwrap(), 9);
    }

    #[tokio::test]
    async fn waiting_work_does_not_block_the_next() {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let log = Arc::new(Mutex::new(Vec::new()));
        let l1 = log.clone();
        in_order(async move {
            l1.lock().unwrap().push("first starts");
            rx.await.unwrap();
            l1.lock().unwrap().push("first ends");
        });
        let l2 = log.clone();
        in_order(async move { l2.lock().unwrap().push("second") });
        tx.send(()).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(5), async {
            while log.lock().unwrap().len() < 3 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .unwrap();
        assert_eq!(
            *log.lock().unwrap(),
            vec!["first starts", "second", "first ends"]
        );
    }

    #[tokio::test]
    async fn panics_are_caught_inline_and_in_the_spawned_rest() {
        let mut inline = Box::pin(async { panic!("inline {}", 1) });
        match poll_now::<(), _>(&mut inline) {
            Poll::Ready(Err(p)) => assert_eq!(p.message(), "inline 1"),
            other => panic!(
                "expected a caught panic, got {:?}",
                other.map(|r| r.is_ok())
            ),
        }
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let mut later = Box::pin(async move {
            rx.await.unwrap();
            panic!("later");
        });
        assert!(poll_now::<(), _>(&mut later).is_pending());
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        spawn_rest(later, move |r: Result<(), Panic>| {
            let _ = done_tx.send(r.unwrap_err().message().to_owned());
        });
        tx.send(()).unwrap();
        let msg = tokio::time::timeout(std::time::Duration::from_secs(5), done_rx).await;
        assert_eq!(msg.unwrap().unwrap(), "later");
        assert_eq!(catch(|| 5).unwrap(), 5);
        let p = catch(|| std::panic::panic_any(7u8)).unwrap_err();
        assert_eq!(p.message(), "(a panic payload that is not a string)");
        let p = guarded(async { panic!("static") }).await.unwrap_err();
        assert_eq!(p.message(), "static");
    }
}
