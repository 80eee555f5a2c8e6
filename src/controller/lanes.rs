//! How many ImageBuild reconciles run at once, and in which order: a FIFO queue with a limit,
//! and a lane of its own for builds whose outcome is waiting to be written ([`Lanes`]).

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use futures::channel::mpsc;
use futures::future::BoxFuture;
use kube::runtime::controller::Action;

/// How long a permit kept for a woken object waits for its reconcile before it goes to the next
/// in line. The object was in the cache when it was woken; it is not reconciled only if it was
/// deleted in the moment between, or if the controller is stopping.
const GRANT_EXPIRES: Duration = Duration::from_secs(30);

/// Reconciles run only while they hold one of `limit` permits, in the order they came: a
/// reconcile that finds no permit free is not run but queued, its call returning at once, and is
/// woken (its [`Turns`], which the controller reconciles on) when a permit is kept for it
/// ([`Lanes::of`], [`Lanes::around`]). Reconciles
/// that `urgent` picks (a build with an outcome its status does not show yet) have a lane of
/// their own, of a quarter of `limit` more permits: they take nothing from the queue and make its
/// API calls free a slot, so they need not wait behind builds that cannot start. In one lane, the
/// scale run's waves wrote Ready ~18 s after the solve had started.
///
/// Every reconcile awaits API calls: a thousand builds created at once otherwise make a thousand
/// requests, on as many connections, at once, which held the controller's memory at 204–228 MiB
/// in the scale run (169 MiB with a limit). Not kube's `Config::concurrency`: kube keeps what is
/// over its limit in a hash set and takes from it in hash order, and with it the slowest builds
/// waited twice as long to start (p99) as without a limit. Nor reconciles that wait for a permit
/// inside their call, as this did first: kube polls every running reconcile and scans every
/// object held behind one each time any of them wakes, and with thousands waiting that was ~40 %
/// of the controller's CPU in the scale run's waves.
pub(super) struct Lanes<Q> {
    state: Arc<Mutex<State<Q>>>,
    wake: mpsc::UnboundedSender<Q>,
}

/// The two lanes: the queue, and the outcomes' lane.
struct State<Q> {
    lanes: [Lane<Q>; 2],
    /// Whether a woken object is still there to be reconciled (in the cache).
    exists: Box<dyn Fn(&Q) -> bool + Send>,
}

/// One lane's permits and line.
struct Lane<Q> {
    free: usize,
    /// Objects in line, each with its ticket; an object whose ticket in `tickets` differs (or
    /// that has none) has left the line (it ran another way) and is skipped.
    line: VecDeque<(u64, Q)>,
    tickets: HashMap<Q, u64>,
    next_ticket: u64,
    /// Permits kept for woken objects, with the grant's number (for its expiry).
    granted: HashMap<Q, u64>,
}

impl<Q: Hash + Eq + Clone> Lane<Q> {
    fn new(permits: usize) -> Self {
        Self {
            free: permits,
            line: VecDeque::new(),
            tickets: HashMap::new(),
            next_ticket: 0,
            granted: HashMap::new(),
        }
    }

    /// Puts `key` in line, unless it is already.
    fn queue(&mut self, key: Q) {
        if self.tickets.contains_key(&key) {
            return;
        }
        self.next_ticket += 1;
        self.tickets.insert(key.clone(), self.next_ticket);
        self.line.push_back((self.next_ticket, key));
    }

    /// The first object in line that is still in line and still exists.
    fn next_in_line(&mut self, exists: &dyn Fn(&Q) -> bool) -> Option<Q> {
        while let Some((ticket, key)) = self.line.pop_front() {
            if self.tickets.get(&key) == Some(&ticket) {
                self.tickets.remove(&key);
                if exists(&key) {
                    return Some(key);
                }
            }
        }
        None
    }
}

/// How the lanes let one call through ([`Lanes::admit`]).
enum Admission {
    /// It runs now, holding a permit of this lane.
    Run(usize),
    /// It waits in line; it is woken when a permit is kept for it.
    Wait,
}

impl<Q: Hash + Eq + Clone + Send + 'static> Lanes<Q> {
    /// The lanes' state. A reconcile that panicked while the lock was held left it whole (every
    /// change under the lock is one step), so it is used as it is.
    fn state(&self) -> std::sync::MutexGuard<'_, State<Q>> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Lets `key`'s call through in `lane` (0: the queue, 1: the outcomes) if a permit is kept for
    /// it or one is free; otherwise puts it in line.
    fn admit(&self, key: &Q, lane: usize) -> Admission {
        let mut state = self.state();
        // Woken for its turn, or by an event first: either way, it has its permit.
        let kept = (0..2).find(|&l| state.lanes[l].granted.remove(key).is_some());
        let run = kept.or_else(|| {
            let free = &mut state.lanes[lane].free;
            (*free > 0).then(|| *free -= 1).map(|()| lane)
        });
        let Some(run) = run else {
            state.lanes[lane].queue(key.clone());
            return Admission::Wait;
        };
        // What runs leaves the line, of both lanes: what changes while it runs wakes it again.
        for lane in &mut state.lanes {
            lane.tickets.remove(key);
        }
        Admission::Run(run)
    }

    /// Gives back a permit of `lane`: to the next in line, kept for it while it is woken, or free.
    fn release(&self, lane: usize) {
        let mut guard = self.state();
        let State { lanes, exists } = &mut *guard;
        let lane_state = &mut lanes[lane];
        let Some(next) = lane_state.next_in_line(exists.as_ref()) else {
            lane_state.free += 1;
            return;
        };
        lane_state.next_ticket += 1;
        let grant = lane_state.next_ticket;
        lane_state.granted.insert(next.clone(), grant);
        drop(guard);
        if self.wake.unbounded_send(next.clone()).is_err() {
            // The controller is stopping: nothing will claim it.
            return self.expire(lane, &next, grant);
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let lanes = self.clone();
        runtime.spawn(async move {
            tokio::time::sleep(GRANT_EXPIRES).await;
            lanes.expire(lane, &next, grant);
        });
    }

    /// Takes back the permit kept for `key` under `grant`, if it is still unclaimed.
    fn expire(&self, lane: usize, key: &Q, grant: u64) {
        let unclaimed = {
            let mut state = self.state();
            let kept = &mut state.lanes[lane].granted;
            let ours = kept.get(key) == Some(&grant);
            if ours {
                kept.remove(key);
            }
            ours
        };
        if unclaimed && !self.wake.is_closed() {
            self.release(lane);
        }
    }
}

impl<Q> Clone for Lanes<Q> {
    fn clone(&self) -> Self {
        Self {
            state: self.state.clone(),
            wake: self.wake.clone(),
        }
    }
}

/// A permit held by a running reconcile; given back when it ends, however it ends.
struct Permit<Q: Hash + Eq + Clone + Send + 'static> {
    lanes: Lanes<Q>,
    lane: usize,
}

impl<Q: Hash + Eq + Clone + Send + 'static> Drop for Permit<Q> {
    fn drop(&mut self) {
        self.lanes.release(self.lane);
    }
}

/// A reconcile's future, as the controller runs it.
pub(super) type Reconciled<E> = BoxFuture<'static, Result<Action, E>>;
/// The objects woken for their turn, in the order of their turns.
pub(super) type Turns<Q> = mpsc::UnboundedReceiver<Q>;

impl<Q: Hash + Eq + Clone + Send + 'static> Lanes<Q> {
    /// Lanes of `limit` permits (0: no limit), and the turns the controller must reconcile on;
    /// `exists` tells whether an object is still in the cache.
    pub(super) fn of(limit: u16, exists: impl Fn(&Q) -> bool + Send + 'static) -> (Option<Self>, Turns<Q>) {
        let (wake, turns) = mpsc::unbounded();
        let limit = usize::from(limit);
        let lanes = (limit > 0).then(|| Self {
            state: Arc::new(Mutex::new(State {
                lanes: [Lane::new(limit), Lane::new(limit.div_ceil(4))],
                exists: Box::new(exists),
            })),
            wake,
        });
        (lanes, turns)
    }

    /// `reconcile` under these lanes: `key` names an object, `urgent` picks the outcomes' lane.
    pub(super) fn around<K, C, E, F>(
        lanes: Option<Self>,
        key: impl Fn(&K) -> Q + Send + 'static,
        urgent: impl Fn(&K, &C) -> bool + Send + 'static,
        reconcile: impl Fn(Arc<K>, Arc<C>) -> F + Send + 'static,
    ) -> impl FnMut(Arc<K>, Arc<C>) -> Reconciled<E>
    where
        K: Send + Sync + 'static,
        C: Send + Sync + 'static,
        E: Send + 'static,
        F: Future<Output = Result<Action, E>> + Send + 'static,
    {
        move |object: Arc<K>, ctx: Arc<C>| {
            let Some(lanes) = &lanes else {
                return reconcile(object, ctx).boxed();
            };
            let lane = usize::from(urgent(&object, &ctx));
            match lanes.admit(&key(&object), lane) {
                Admission::Wait => futures::future::ready(Ok(Action::await_change())).boxed(),
                Admission::Run(lane) => {
                    let permit = Permit {
                        lanes: lanes.clone(),
                        lane,
                    };
                    let reconciled = reconcile(object, ctx);
                    async move {
                        let outcome = reconciled.await;
                        drop(permit);
                        outcome
                    }
                    .boxed()
                }
            }
        }
    }
}

#[cfg(test)]
#[path = "lanes_tests.rs"]
mod tests;
