//! Tests of the reconcile lanes, driven as kube's controller drives them: every object is
//! reconciled once, and again whenever the lanes wake it.

use super::*;
use crate::controller::Error;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use std::collections::HashSet;

/// What the reconciles under test saw: the order they started in, and how many ran at once.
#[derive(Default)]
struct Seen {
    started: Vec<u32>,
    running: usize,
    most_at_once: usize,
}

/// Objects numbered from this one take the outcomes' lane.
const URGENT: u32 = 100;
/// An object deleted while it waited in line.
const GONE: u32 = 99;

/// A reconcile under the lanes, as the controller calls it.
type Run = Box<dyn FnMut(Arc<u32>, Arc<()>) -> Reconciled<Error> + Send>;

/// A world of reconciles of 10 ms each under `limit`: `exists` is false for [`GONE`], and the
/// woken objects in `never_reconciled` are not reconciled (deleted between their wake and their
/// reconcile).
struct World {
    seen: Arc<Mutex<Seen>>,
    run: Run,
    woken: mpsc::UnboundedReceiver<u32>,
}

impl World {
    fn new(limit: u16) -> Self {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let record = seen.clone();
        let (lanes, woken) = Lanes::of(limit, |object: &u32| *object != GONE);
        let run = Lanes::around(
            lanes,
            |object: &u32| *object,
            |object: &u32, _: &()| *object >= URGENT,
            move |object: Arc<u32>, _ctx: Arc<()>| {
                let seen = record.clone();
                async move {
                    {
                        let mut s = seen.lock().expect("lock");
                        s.started.push(*object);
                        s.running += 1;
                        s.most_at_once = s.most_at_once.max(s.running);
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    seen.lock().expect("lock").running -= 1;
                    Ok::<_, Error>(Action::await_change())
                }
            },
        );
        Self {
            seen,
            run: Box::new(run),
            woken,
        }
    }

    /// Calls the reconcile of each of `objects` in order, then of every object woken, until
    /// nothing runs and nothing is woken for `quiet`; what the reconciles saw.
    async fn drive(mut self, objects: &[u32], never_reconciled: &[u32], quiet: Duration) -> Seen {
        let mut running: FuturesUnordered<_> = objects
            .iter()
            .map(|&o| tokio::spawn((self.run)(Arc::new(o), Arc::new(()))))
            .collect();
        let skip: HashSet<u32> = never_reconciled.iter().copied().collect();
        loop {
            tokio::select! {
                Some(outcome) = running.next() => {
                    assert!(outcome.expect("reconcile task").is_ok());
                }
                Some(woken) = self.woken.next() => {
                    if !skip.contains(&woken) {
                        running.push(tokio::spawn((self.run)(Arc::new(woken), Arc::new(()))));
                    }
                }
                () = tokio::time::sleep(quiet), if running.is_empty() => break,
            }
        }
        std::mem::take(&mut *self.seen.lock().expect("lock"))
    }
}

#[tokio::test]
async fn reconciles_run_at_most_the_limit_at_once_in_the_order_they_came() {
    let seen = World::new(2)
        .drive(&[0, 1, 2, GONE, 3, 4, 5], &[], Duration::from_millis(50))
        .await;
    assert_eq!(seen.most_at_once, 2, "never more than the limit at once");
    assert_eq!(
        seen.started,
        (0..6).collect::<Vec<_>>(),
        "first come, first run; and not what was deleted while it waited"
    );
}

#[tokio::test]
async fn without_a_limit_every_reconcile_runs_at_once() {
    let seen = World::new(0)
        .drive(&[0, 1, 2, 3, 4, 5], &[], Duration::from_millis(50))
        .await;
    assert_eq!(seen.most_at_once, 6);
}

#[tokio::test]
async fn a_call_that_finds_no_permit_returns_at_once_and_its_object_runs_later() {
    let mut world = World::new(1);
    let first = tokio::spawn((world.run)(Arc::new(0), Arc::new(())));
    let waiting = (world.run)(Arc::new(1), Arc::new(()));
    // kube polls every reconcile it runs each time any of them wakes: one that waited inside
    // its call for a permit cost the controller a poll per wake for as long as it waited.
    let returned = tokio::time::timeout(Duration::from_millis(5), waiting).await;
    assert!(
        returned.is_ok_and(|outcome| outcome.is_ok()),
        "the second call returns without waiting for the first"
    );
    assert!(first.await.is_ok_and(|outcome| outcome.is_ok()));
    assert_eq!(world.woken.next().await, Some(1), "it is woken once the first is done");
}

#[tokio::test]
async fn an_urgent_reconcile_does_not_wait_behind_the_queue() {
    let objects: Vec<u32> = (0..6).chain([URGENT, URGENT + 1]).collect();
    let started = World::new(2)
        .drive(&objects, &[], Duration::from_millis(50))
        .await
        .started;
    assert_eq!(
        started[..3].iter().filter(|&&o| o == URGENT).count(),
        1,
        "the first urgent reconcile runs beside the first two of the queue: {started:?}"
    );
    let second = started.iter().position(|&o| o == URGENT + 1);
    assert!(
        second.is_some_and(|i| i < 6),
        "and the next one waits only for it, not for the queue: {started:?}"
    );
    let queue: Vec<u32> = started.iter().copied().filter(|&o| o < URGENT).collect();
    assert_eq!(queue, (0..6).collect::<Vec<_>>(), "the queue keeps its order");
}

#[tokio::test(start_paused = true)]
async fn a_permit_kept_for_an_object_never_reconciled_goes_to_the_next_in_time() {
    // Object 1 is woken for its turn but deleted before its reconcile: after a while, its
    // permit goes to 2, and nothing waits for good.
    let seen = World::new(1)
        .drive(&[0, 1, 2, 3], &[1], GRANT_EXPIRES + Duration::from_secs(1))
        .await;
    assert_eq!(seen.started, vec![0, 2, 3]);
}
