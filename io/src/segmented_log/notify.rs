//! [`LocalNotify`]: wake every task waiting for "something finished" on one executor
//! (a group-commit round, a background preallocation). Single-threaded: the log is
//! owned by one executor, so a `Cell` epoch and a `RefCell` of wakers suffice.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::task::{Poll, Waker};

/// Upper bound on parked waiters: one per task waiting on a round. A core serves at
/// most a few thousand connections/timelines; more waiters than this means tasks are
/// leaking, and the waiter gets an error instead of the list growing without bound.
pub(crate) const MAX_WAITERS: usize = 1 << 16;

#[derive(Default)]
pub(crate) struct LocalNotify {
    epoch: Cell<u64>,
    wakers: RefCell<Vec<Waker>>,
}

impl LocalNotify {
    /// The current epoch; a waiter passes it to [`LocalNotify::wait_past`].
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.get()
    }

    /// Advances the epoch and wakes every waiter.
    pub(crate) fn notify_all(&self) {
        self.epoch.set(self.epoch.get().wrapping_add(1));
        let wakers = std::mem::take(&mut *self.wakers.borrow_mut());
        for waker in wakers {
            waker.wake();
        }
    }

    /// Resolves once the epoch differs from `seen`. `Err(waiters)` if
    /// [`MAX_WAITERS`] are already parked.
    pub(crate) async fn wait_past(&self, seen: u64) -> Result<(), usize> {
        poll_fn(|cx| {
            if self.epoch.get() != seen {
                return Poll::Ready(Ok(()));
            }
            let mut wakers = self.wakers.borrow_mut();
            if wakers.len() >= MAX_WAITERS {
                return Poll::Ready(Err(wakers.len()));
            }
            wakers.push(cx.waker().clone());
            Poll::Pending
        })
        .await
    }
}
