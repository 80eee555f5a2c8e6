//! How many ImageBuild reconciles run at once, and in which order: a FIFO queue with a limit,
//! and a lane of its own for builds whose outcome is waiting to be written ([`limited`]).

use std::sync::Arc;

use futures::FutureExt;
use futures::future::BoxFuture;
use kube::runtime::controller::Action;

/// `reconcile`, run only while it holds one of `limit` permits (0: no limit), in the order the
/// controller started them, on the object as `latest` reads it once it has the permit.
/// Reconciles that `urgent` picks (a build with an outcome its status does not show yet) have a
/// lane of their own, of a quarter of `limit` more permits: they take nothing from the queue
/// and make its API calls free a slot, so they need not wait behind builds that cannot start.
/// In one lane, the scale run's waves wrote Ready ~18 s after the solve had started, and builds
/// lived long enough for an in-progress status to be written.
///
/// Every reconcile awaits API calls: a thousand builds created at once otherwise make a thousand
/// requests, on as many connections, at once, which held the controller's memory at 204–228 MiB
/// in the scale run (169 MiB with a limit). The limit is a FIFO semaphore, not kube's
/// `Config::concurrency`: kube keeps what is over its limit in a hash set and takes from it in
/// hash order, and with it the slowest builds waited twice as long to start (p99) as without a
/// limit. A waiting reconcile holds only its object, and what changed while it waited is read
/// from the cache when it starts; an object gone from the cache meanwhile was deleted, and is
/// not reconciled (as kube does for an object deleted while queued).
pub(super) fn limited<K, C, E, F>(
    limit: u16,
    latest: impl Fn(&K) -> Option<Arc<K>> + Clone + Send + 'static,
    urgent: impl Fn(&K, &C) -> bool + Clone + Send + 'static,
    reconcile: impl Fn(Arc<K>, Arc<C>) -> F + Clone + Send + 'static,
) -> impl FnMut(Arc<K>, Arc<C>) -> BoxFuture<'static, Result<Action, E>>
where
    K: Send + Sync + 'static,
    C: Send + Sync + 'static,
    F: Future<Output = Result<Action, E>> + Send + 'static,
{
    let lane = |permits: usize| Arc::new(tokio::sync::Semaphore::new(permits));
    let lanes = (limit > 0).then(|| {
        let limit = usize::from(limit);
        (lane(limit), lane(limit.div_ceil(4)))
    });
    move |object, ctx| {
        let (latest, reconcile) = (latest.clone(), reconcile.clone());
        let permits = lanes
            .as_ref()
            .map(|(queue, outcomes)| if urgent(&object, &ctx) { outcomes } else { queue }.clone());
        async move {
            // Never closed, so a permit always comes.
            let _permit = match &permits {
                Some(permits) => permits.acquire().await.ok(),
                None => None,
            };
            match latest(&object) {
                Some(object) => reconcile(object, ctx).await,
                None => Ok(Action::await_change()),
            }
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::Error;
    use std::sync::Mutex;
    use std::time::Duration;

    /// What the reconciles under test saw: the order they started in, and how many ran at once.
    #[derive(Default)]
    struct Seen {
        started: Vec<u32>,
        running: usize,
        most_at_once: usize,
    }

    /// An object deleted while its reconcile waited for a permit.
    const GONE: u32 = 99;

    /// Starts six reconciles of 10 ms each, in order, under `limit`, then one of an object gone
    /// from the cache, and waits for them all.
    async fn six_reconciles(limit: u16) -> Seen {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let record = seen.clone();
        let latest = |object: &u32| (*object != GONE).then(|| Arc::new(*object));
        let mut reconcile = limited(
            limit,
            latest,
            |_: &u32, _: &()| false,
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
        let reconciles: Vec<_> = (0..6)
            .chain([GONE])
            .map(|i| reconcile(Arc::new(i), Arc::new(())))
            .collect();
        for outcome in futures::future::join_all(reconciles).await {
            assert!(outcome.is_ok());
        }
        std::mem::take(&mut *seen.lock().expect("lock"))
    }

    #[tokio::test]
    async fn limited_reconciles_run_at_most_the_limit_at_once_in_the_order_they_came() {
        let seen = six_reconciles(2).await;
        assert_eq!(seen.most_at_once, 2, "never more than the limit at once");
        assert_eq!(
            seen.started,
            (0..6).collect::<Vec<_>>(),
            "first come, first run; and not what was deleted while it waited"
        );
    }

    #[tokio::test]
    async fn without_a_limit_every_reconcile_runs_at_once() {
        assert_eq!(six_reconciles(0).await.most_at_once, 6);
    }

    #[tokio::test]
    async fn an_urgent_reconcile_does_not_wait_behind_the_queue() {
        const URGENT: u32 = 100;
        let started = Arc::new(Mutex::new(Vec::new()));
        let record = started.clone();
        let mut reconcile = limited(
            2,
            |object: &u32| Some(Arc::new(*object)),
            |object: &u32, _: &()| *object >= URGENT,
            move |object: Arc<u32>, _ctx: Arc<()>| {
                let started = record.clone();
                async move {
                    started.lock().expect("lock").push(*object);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    Ok::<_, Error>(Action::await_change())
                }
            },
        );
        let reconciles: Vec<_> = (0..6)
            .chain([URGENT, URGENT + 1])
            .map(|i| reconcile(Arc::new(i), Arc::new(())))
            .collect();
        futures::future::join_all(reconciles).await;
        let started = std::mem::take(&mut *started.lock().expect("lock"));
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
}
