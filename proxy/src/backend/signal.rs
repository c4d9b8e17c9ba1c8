//! A one-way condition one task waits for, woken through an
//! [`AtomicWaker`]: cheaper than a `Notify` for a task that waits on it at
//! every wake (a `Notify` takes a mutex to register the waiter and again
//! to drop it), as a client's task does for its eviction and the shutdown.

use std::future::poll_fn;
use std::task::Poll;

use atomic_waker::AtomicWaker;

/// Resolves once `done()` holds. Whoever makes it hold calls
/// `waker.wake()` afterwards; only the last task to wait is woken, so one
/// task waits at a time. Cancel-safe.
pub async fn until(waker: &AtomicWaker, done: impl Fn() -> bool) {
    poll_fn(|cx| {
        if done() {
            return Poll::Ready(());
        }
        waker.register(cx.waker());
        // Made to hold between the check and the registration: its wake
        // may have gone to the waker registered before.
        match done() {
            true => Poll::Ready(()),
            false => Poll::Pending,
        }
    })
    .await
}
