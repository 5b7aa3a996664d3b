//! [`CoreMailbox`]: a bounded, multi-producer mailbox per core. Any thread (a plain
//! acceptor thread or another executor) sends a `T` to a chosen core; the task on
//! that core's executor awaits it with [`MailboxReceiver::recv`]. The safekeeper uses
//! it to route accepted connections to the core that owns a timeline.
//!
//! Why not glommio's `shared_channel`: it is single-producer and its sender must be
//! connected from inside an executor, while our senders include non-executor threads
//! and several cores at once. A mutex-protected queue plus the receiving task's
//! `Waker` is enough: glommio wakers are thread-safe (a foreign wake is queued to the
//! owning executor and its eventfd is kicked), so an idle receiver sleeps in the
//! kernel and nothing busy-spins.

use std::collections::VecDeque;
use std::fmt;
use std::future::poll_fn;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Poll, Waker};

use super::{CoreIndex, MAX_CORES};
use crate::error::IoError;

/// Upper bound on one core's queue: a mailbox carries hand-offs (connections,
/// commands), each of which the receiver handles quickly; tens of thousands queued
/// means the receiver is stuck, and senders should see `Full` rather than grow memory.
pub const MAX_MAILBOX_CAPACITY: usize = 1 << 16;

struct Slot<T> {
    queue: VecDeque<T>,
    /// The receiving task, parked in `recv`.
    waker: Option<Waker>,
    receiver_taken: bool,
    receiver_dropped: bool,
}

struct Shared<T> {
    slots: Box<[Mutex<Slot<T>>]>,
    capacity_per_core: usize,
    /// Live `MailboxSender`s; when it reaches 0, receivers drain and then get `None`.
    senders: AtomicUsize,
}

impl<T> Shared<T> {
    fn slot(&self, core: usize) -> Option<MutexGuard<'_, Slot<T>>> {
        // Critical sections below never panic, so a poisoned lock still holds a
        // consistent queue.
        self.slots
            .get(core)
            .map(|m| m.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// The set of per-core mailboxes; hands out each core's receiver once. `Clone`,
/// `Send` and `Sync`, so it can travel into [`super::run_per_core`]'s closure.
pub struct CoreMailbox<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Clone for CoreMailbox<T> {
    fn clone(&self) -> Self {
        CoreMailbox {
            shared: self.shared.clone(),
        }
    }
}

/// Sends to any core of the mailbox; clone it freely. When every sender is dropped,
/// receivers return `None` after draining.
pub struct MailboxSender<T> {
    shared: Arc<Shared<T>>,
}

/// One core's receiving end. Dropping it closes that core's mailbox: later sends fail
/// with `Closed` and queued messages are dropped.
pub struct MailboxReceiver<T> {
    shared: Arc<Shared<T>>,
    core: usize,
}

/// Why a send failed; the message is handed back.
pub enum MailboxSendError<T> {
    /// The core's queue holds `capacity_per_core` messages already.
    Full(T),
    /// The core's receiver was dropped.
    Closed(T),
    /// No such core in this mailbox.
    NoSuchCore(T),
}

impl<T> MailboxSendError<T> {
    pub fn into_inner(self) -> T {
        match self {
            Self::Full(m) | Self::Closed(m) | Self::NoSuchCore(m) => m,
        }
    }
}

impl<T> fmt::Debug for MailboxSendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl<T> fmt::Display for MailboxSendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Full(_) => write!(f, "core mailbox is full"),
            Self::Closed(_) => write!(f, "core mailbox is closed (receiver dropped)"),
            Self::NoSuchCore(_) => write!(f, "no such core in this mailbox"),
        }
    }
}

impl<T> std::error::Error for MailboxSendError<T> {}

impl<T: Send> CoreMailbox<T> {
    /// Mailboxes for `cores` cores, each holding at most `capacity_per_core` messages.
    /// Returns the mailbox (to take receivers from) and the first sender.
    pub fn new(
        cores: usize,
        capacity_per_core: usize,
    ) -> Result<(CoreMailbox<T>, MailboxSender<T>), IoError> {
        if cores == 0 || cores > MAX_CORES {
            return Err(IoError::Runtime {
                what: format!("CoreMailbox: cores must be in 1..={MAX_CORES}, got {cores}"),
                source: None,
            });
        }
        if capacity_per_core == 0 || capacity_per_core > MAX_MAILBOX_CAPACITY {
            return Err(IoError::Runtime {
                what: format!(
                    "CoreMailbox: capacity_per_core must be in 1..={MAX_MAILBOX_CAPACITY}, got {capacity_per_core}"
                ),
                source: None,
            });
        }
        let slots = (0..cores)
            .map(|_| {
                Mutex::new(Slot {
                    queue: VecDeque::new(),
                    waker: None,
                    receiver_taken: false,
                    receiver_dropped: false,
                })
            })
            .collect();
        let shared = Arc::new(Shared {
            slots,
            capacity_per_core,
            senders: AtomicUsize::new(1),
        });
        Ok((
            CoreMailbox {
                shared: shared.clone(),
            },
            MailboxSender { shared },
        ))
    }

    pub fn cores(&self) -> usize {
        self.shared.slots.len()
    }

    /// The receiver of `core`; each core's receiver can be taken once.
    pub fn take_receiver(&self, core: CoreIndex) -> Result<MailboxReceiver<T>, IoError> {
        let Some(mut slot) = self.shared.slot(core.0) else {
            return Err(IoError::Runtime {
                what: format!(
                    "CoreMailbox: no {core} (mailbox has {} cores)",
                    self.cores()
                ),
                source: None,
            });
        };
        if slot.receiver_taken {
            return Err(IoError::Runtime {
                what: format!("CoreMailbox: the receiver of {core} was already taken"),
                source: None,
            });
        }
        slot.receiver_taken = true;
        Ok(MailboxReceiver {
            shared: self.shared.clone(),
            core: core.0,
        })
    }
}

impl<T: Send> MailboxSender<T> {
    /// Queues `msg` for `core` without blocking and wakes its receiver.
    pub fn send(&self, core: CoreIndex, msg: T) -> Result<(), MailboxSendError<T>> {
        let Some(mut slot) = self.shared.slot(core.0) else {
            return Err(MailboxSendError::NoSuchCore(msg));
        };
        if slot.receiver_dropped {
            return Err(MailboxSendError::Closed(msg));
        }
        if slot.queue.len() >= self.shared.capacity_per_core {
            return Err(MailboxSendError::Full(msg));
        }
        slot.queue.push_back(msg);
        let waker = slot.waker.take();
        drop(slot);
        // Wake outside the lock: a foreign wake may take glommio's own locks.
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(())
    }

    pub fn cores(&self) -> usize {
        self.shared.slots.len()
    }
}

impl<T> Clone for MailboxSender<T> {
    fn clone(&self) -> Self {
        self.shared.senders.fetch_add(1, Ordering::AcqRel);
        MailboxSender {
            shared: self.shared.clone(),
        }
    }
}

impl<T> Drop for MailboxSender<T> {
    fn drop(&mut self) {
        if self.shared.senders.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        // Last sender: wake every parked receiver so it can observe the close. The
        // count is re-read under each slot lock by `recv`, so no wake-up is lost.
        for core in 0..self.shared.slots.len() {
            let waker = self
                .shared
                .slot(core)
                .and_then(|mut slot| slot.waker.take());
            if let Some(waker) = waker {
                waker.wake();
            }
        }
    }
}

impl<T: Send> MailboxReceiver<T> {
    pub fn core(&self) -> CoreIndex {
        CoreIndex(self.core)
    }

    /// The next message without waiting.
    pub fn try_recv(&mut self) -> Option<T> {
        self.shared.slot(self.core)?.queue.pop_front()
    }

    /// Waits for the next message; `None` once every sender is gone and the queue is
    /// empty. `&mut self`: one task receives per core (a second parked task would
    /// replace the first one's waker).
    pub async fn recv(&mut self) -> Option<T> {
        poll_fn(|cx| {
            let Some(mut slot) = self.shared.slot(self.core) else {
                return Poll::Ready(None);
            };
            if let Some(msg) = slot.queue.pop_front() {
                return Poll::Ready(Some(msg));
            }
            if self.shared.senders.load(Ordering::Acquire) == 0 {
                return Poll::Ready(None);
            }
            match &slot.waker {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => slot.waker = Some(cx.waker().clone()),
            }
            Poll::Pending
        })
        .await
    }

    /// Messages queued right now.
    pub fn len(&self) -> usize {
        self.shared.slot(self.core).map_or(0, |s| s.queue.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<T> Drop for MailboxReceiver<T> {
    fn drop(&mut self) {
        let dropped_messages = self.shared.slots.get(self.core).map(|m| {
            let mut slot = m.lock().unwrap_or_else(PoisonError::into_inner);
            slot.receiver_dropped = true;
            slot.waker = None;
            std::mem::take(&mut slot.queue)
        });
        // Drop queued messages (e.g. connections, which close) outside the lock.
        drop(dropped_messages);
    }
}
