//! Ordered dispatch behind panic boundaries, and the report of a panic in game code.
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
//! runs behind one of the boundaries: [`App::guard`] (synchronous code, reported), the inline
//! poll of [`poll_now`], the spawned remainder of [`spawn_rest`] and [`crate::panic::guarded`]
//! for work awaited in place. A panic fails that one piece of work ([`App::panicked`] logs it
//! and counts it by route); the connection task or link reader it ran in goes on.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use crate::edge::Uid;
use crate::panic::{Panic, catch, guarded};
use crate::{App, Session};

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

impl App {
    /// Runs game code `f` behind a panic boundary: a panic is reported ([`App::panicked`]) and
    /// returned. `what` names the code in the log; `route` (a route, or a callback's name) is
    /// the counter's label; the uid is read from `session` only when `f` panics.
    pub(crate) fn guard<R>(
        &self,
        what: &'static str,
        route: &str,
        session: Option<&Session>,
        f: impl FnOnce() -> R,
    ) -> Result<R, Panic> {
        catch(f).inspect_err(|p| self.panicked(what, route, session.and_then(Session::uid), p))
    }

    /// Awaits game code `fut` behind a panic boundary; a panic is reported like
    /// [`App::guard`]'s (`what` is also the counter's label).
    pub(crate) async fn guard_async<F: Future>(
        &self,
        what: &'static str,
        session: Option<&Session>,
        fut: F,
    ) -> Result<F::Output, Panic> {
        guarded(fut)
            .await
            .inspect_err(|p| self.panicked(what, what, session.and_then(Session::uid), p))
    }

    /// Reports a panic caught in game code: an error line with this server's id, the route
    /// (or callback), the uid (`-` when there is none) and the panic's message (Rust's panic
    /// hook has printed where it happened just before), and one more in
    /// `kennel_panics_total{route}`.
    pub(crate) fn panicked(&self, what: &str, route: &str, uid: Option<u64>, p: &Panic) {
        tracing::error!(
            server = self.id(),
            route,
            uid = %Uid(uid),
            "{what} panicked: {}; only that call failed, the server goes on",
            p.message()
        );
        self.stats().panic(route);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// What routing does with a message's work: poll in place, spawn the rest.
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
    }
}
