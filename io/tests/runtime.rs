//! The per-core runtime and the cross-thread mailbox.

mod common;

use tarn_io::{CoreIndex, CoreMailbox, IoError, MailboxSendError, run_per_core};

#[test]
fn run_per_core_returns_outputs_in_core_order() {
    let out = run_per_core(2, "order", |core| async move {
        // !Send state is fine inside the per-core future.
        let rc = std::rc::Rc::new(core.0 * 10);
        *rc
    })
    .expect("runtime");
    assert_eq!(out, vec![0, 10]);
    assert!(matches!(
        run_per_core(0, "none", |_| async {}),
        Err(IoError::Runtime { .. })
    ));
}

#[test]
fn a_panicking_core_is_an_error() {
    let err = run_per_core(1, "panics", |_| async {
        if std::env::var_os("NEVER_SET_TARN_IO").is_none() {
            panic!("deliberate test panic");
        }
    })
    .expect_err("panic must surface");
    assert!(matches!(err, IoError::CorePanicked { core: 0, .. }));
}

#[test]
fn mailbox_delivers_from_a_plain_thread_to_an_executor() {
    const MESSAGES: u64 = 1000;
    // Room for every message, so the producer never sees `Full` and needs no retry.
    let (mailbox, sender) = CoreMailbox::<u64>::new(1, MESSAGES as usize).expect("mailbox");
    let producer = std::thread::spawn(move || {
        for i in 0..MESSAGES {
            if let Err(e) = sender.send(CoreIndex(0), i) {
                panic!("send {i} failed: {e}");
            }
        }
        // Dropping the last sender ends the receiver's stream.
    });
    let out = run_per_core(1, "mailbox", move |core| {
        let mailbox = mailbox.clone();
        async move {
            let mut rx = mailbox.take_receiver(core).expect("receiver");
            let mut got = Vec::new();
            while let Some(m) = rx.recv().await {
                got.push(m);
            }
            got
        }
    })
    .expect("runtime");
    producer.join().expect("producer");
    assert_eq!(out[0], (0..MESSAGES).collect::<Vec<_>>());
}

#[test]
fn mailbox_between_executors_and_errors() {
    let (mailbox, sender) = CoreMailbox::<String>::new(2, 4).expect("mailbox");
    assert!(matches!(
        sender.send(CoreIndex(2), "x".into()),
        Err(MailboxSendError::NoSuchCore(_))
    ));
    let out = run_per_core(2, "mesh", move |core| {
        let mailbox = mailbox.clone();
        let sender = sender.clone();
        async move {
            let mut rx = mailbox.take_receiver(core).expect("receiver");
            assert!(mailbox.take_receiver(core).is_err(), "taken once");
            let other = CoreIndex(1 - core.0);
            // Ping-pong: core 0 starts; each forwards once. Bounded: 2 hops each.
            if core.0 == 0 {
                sender.send(other, "ping".into()).expect("send");
            }
            let first = rx.recv().await.expect("message");
            if core.0 == 1 {
                sender.send(other, format!("{first}-pong")).expect("send");
            }
            drop(sender);
            first
        }
    })
    .expect("runtime");
    assert_eq!(out, vec!["ping-pong".to_string(), "ping".to_string()]);
}

#[test]
fn dropped_receiver_closes_its_mailbox() {
    let (mailbox, sender) = CoreMailbox::<u8>::new(1, 1).expect("mailbox");
    let rx = mailbox.take_receiver(CoreIndex(0)).expect("receiver");
    sender.send(CoreIndex(0), 1).expect("send");
    assert!(matches!(
        sender.send(CoreIndex(0), 2),
        Err(MailboxSendError::Full(2))
    ));
    drop(rx);
    assert!(matches!(
        sender.send(CoreIndex(0), 3),
        Err(MailboxSendError::Closed(3))
    ));
}
