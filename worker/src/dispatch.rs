//! Ordered dispatch: a message's work runs inline until its first `.await` that is not ready,
//! then continues as its own task. Messages of one connection or link therefore start in
//! arrival order (as in mydog, where a handler runs synchronously until it awaits), while a
//! handler that waits (an RPC, a timer) does not hold up the messages behind it.

use std::future::Future;
use std::task::Poll;

/// Runs `fut` until it first yields; if it is not finished, spawns the rest.
pub(crate) async fn in_order<F: Future<Output = ()> + Send + 'static>(fut: F) {
    let mut fut = Box::pin(fut);
    let done = std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx).is_ready())).await;
    if !done {
        tokio::spawn(fut);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[tokio::test]
    async fn ready_work_runs_inline_in_order() {
        let log = Arc::new(Mutex::new(Vec::new()));
        for i in 0..5 {
            let log = log.clone();
            in_order(async move { log.lock().unwrap().push(i) }).await;
        }
        assert_eq!(*log.lock().unwrap(), vec![0, 1, 2, 3, 4]);
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
        })
        .await;
        let l2 = log.clone();
        in_order(async move { l2.lock().unwrap().push("second") }).await;
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
