//! Ordered dispatch: a message's work runs inline until its first `.await` that is not ready,
//! then continues as its own task. Messages of one connection or link therefore start in
//! arrival order (as in mydog, where a handler runs synchronously until it awaits), while a
//! handler that waits (an RPC, a timer) does not hold up the messages behind it.
//!
//! [`poll_now`] is the first step: the caller polls the (already boxed) work in place and
//! spawns only what is left, so work that finishes at once costs no task and no extra box.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

/// Polls `fut` once, right now: its output if it finished, `None` if it waits (the caller then
/// spawns the rest). The poll uses a no-op waker: what `fut` waits for is registered again
/// by the spawned task's first poll, which sees anything that happened in between (every
/// future checks its condition when polled). So dispatching needs no `.await`, and the
/// caller's own future holds no state for it.
pub(crate) fn poll_now<T, F: Future<Output = T> + ?Sized>(fut: &mut Pin<Box<F>>) -> Option<T> {
    match fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => Some(v),
        Poll::Pending => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// What the app does with a message's work: poll in place, spawn the rest.
    fn in_order<F: Future<Output = ()> + Send + 'static>(fut: F) {
        let mut fut = Box::pin(fut);
        if poll_now(&mut fut).is_none() {
            tokio::spawn(fut);
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
        assert_eq!(poll_now(&mut ready), Some(7));
        let (tx, rx) = tokio::sync::oneshot::channel::<u32>();
        let mut waiting = Box::pin(async move { rx.await.unwrap() });
        assert_eq!(poll_now(&mut waiting), None);
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
}
