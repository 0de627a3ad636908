//! Which filter configuration a stream belongs to, and when a configuration is gone.
//!
//! One VM can serve several configurations: Envoy shares a VM between filters whose
//! `vm_config` is identical, and a policy update creates a new root context next to the old
//! one, which lives on until its connections drain. Each root context has its own table, and
//! a stream must be decided by its own root's table.
//!
//! The filter does not export `proxy_on_done`/`proxy_on_delete` (each would be one more VM
//! entry on every request), so it is never told that a root context is gone. Instead every
//! root ticks (it flushes its counters on a timer) and Envoy stops the timer with the root: a
//! root that stays silent while the others tick many times each is gone, and its table is
//! dropped. Liveness is counted in ticks, not wall time, so a worker that stalls (and then
//! fires every timer once) does not make the others look dead.

use std::collections::HashMap;
use std::rc::Rc;

/// Streams remembered: a stream's context is created right before its request headers arrive,
/// so a small ring is plenty.
const STREAM_SLOTS: usize = 256;
/// A root is gone once the tick clock has advanced this many ticks per live root without it
/// (about 10 s with 250 ms ticks).
const STALE_TICKS: u64 = 40;

#[derive(Debug)]
struct Root<T> {
    value: Rc<T>,
    last_tick: u64,
}

/// What a tick found.
#[derive(Debug)]
pub(crate) struct Tick<T> {
    /// The configuration of the root that ticked.
    pub(crate) ticked: Option<Rc<T>>,
    /// `(root, configuration)`s now considered gone, already removed.
    pub(crate) gone: Vec<(u32, Rc<T>)>,
}

#[derive(Debug)]
pub(crate) struct Roots<T> {
    roots: HashMap<u32, Root<T>>,
    /// `(stream context id, root context id)`, at stream id modulo the length.
    streams: Vec<(u32, u32)>,
    /// Every tick of every root advances it.
    clock: u64,
}

impl<T> Roots<T> {
    pub(crate) fn new() -> Roots<T> {
        Roots {
            roots: HashMap::new(),
            streams: vec![(0, 0); STREAM_SLOTS],
            clock: 0,
        }
    }

    /// Sets a root's configuration; returns the one it replaces.
    pub(crate) fn configure(&mut self, root: u32, value: Rc<T>) -> Option<Rc<T>> {
        let last_tick = self.clock;
        self.roots.insert(root, Root { value, last_tick }).map(|r| r.value)
    }

    pub(crate) fn stream_created(&mut self, stream: u32, root: u32) {
        if let Some(slot) = self.streams.get_mut(stream as usize % STREAM_SLOTS) {
            *slot = (stream, root);
        }
    }

    /// The configuration deciding `stream`; `None` (deny) if its root has none, or if the
    /// stream is not (or no longer) known: never another root's table, even when only one
    /// configuration exists (a second listener's configuration may just have failed to load).
    pub(crate) fn of_stream(&self, stream: u32) -> Option<Rc<T>> {
        match self.streams.get(stream as usize % STREAM_SLOTS) {
            Some(&(id, root)) if id == stream => self.roots.get(&root).map(|r| Rc::clone(&r.value)),
            _ => None,
        }
    }

    /// Records a tick of `root`.
    pub(crate) fn tick(&mut self, root: u32) -> Tick<T> {
        self.clock += 1;
        let clock = self.clock;
        let ticked = self.roots.get_mut(&root).map(|r| {
            r.last_tick = clock;
            Rc::clone(&r.value)
        });
        let stale_after = STALE_TICKS * self.roots.len() as u64;
        let gone: Vec<u32> = self
            .roots
            .iter()
            .filter(|(_, r)| clock - r.last_tick > stale_after)
            .map(|(&id, _)| id)
            .collect();
        let gone = gone
            .into_iter()
            .filter_map(|id| self.roots.remove(&id).map(|r| (id, r.value)))
            .collect();
        Tick { ticked, gone }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.roots.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_decided_by_their_own_root() {
        let mut roots = Roots::new();
        roots.configure(1, Rc::new("a"));
        roots.configure(2, Rc::new("b"));
        roots.stream_created(10, 1);
        roots.stream_created(11, 2);
        assert_eq!(roots.of_stream(10).as_deref(), Some(&"a"));
        assert_eq!(roots.of_stream(11).as_deref(), Some(&"b"));
        // A stream nobody announced is ambiguous with two roots: no configuration, so denied.
        assert_eq!(roots.of_stream(12), None);
        // A stream of a root without a (valid) configuration.
        roots.stream_created(13, 3);
        assert_eq!(roots.of_stream(13), None);
        // Ring reuse: the newer stream owns the slot.
        roots.stream_created(10 + STREAM_SLOTS as u32, 2);
        assert_eq!(roots.of_stream(10 + STREAM_SLOTS as u32).as_deref(), Some(&"b"));
        assert_eq!(roots.of_stream(10), None);
    }

    #[test]
    fn unannounced_streams_are_denied_even_with_a_single_root() {
        let mut roots = Roots::new();
        roots.configure(1, Rc::new("a"));
        assert_eq!(roots.of_stream(99), None);
        roots.stream_created(99, 1);
        assert_eq!(roots.configure(1, Rc::new("a2")).as_deref(), Some(&"a"));
        assert_eq!(roots.of_stream(99).as_deref(), Some(&"a2"));
        // A stream of a root whose configuration was refused, beside a configured one.
        roots.stream_created(100, 2);
        assert_eq!(roots.of_stream(100), None);
    }

    #[test]
    fn silent_roots_are_dropped_and_ticking_ones_kept() {
        let mut roots = Roots::new();
        roots.configure(1, Rc::new("old"));
        roots.configure(2, Rc::new("new"));
        // Both tick for a while: nothing is dropped.
        for _ in 0..500 {
            assert!(roots.tick(1).gone.is_empty());
            assert!(roots.tick(2).gone.is_empty());
        }
        // Root 1 is gone (its timer stopped): only 2 ticks from now on.
        let mut dropped = Vec::new();
        let mut ticks = 0;
        while dropped.is_empty() {
            let tick = roots.tick(2);
            assert_eq!(tick.ticked.as_deref(), Some(&"new"));
            dropped = tick.gone;
            ticks += 1;
            assert!(ticks <= 200, "root 1 was never dropped");
        }
        assert_eq!(dropped.len(), 1);
        assert_eq!((dropped[0].0, *dropped[0].1), (1, "old"));
        assert!(ticks > STALE_TICKS as usize, "dropped after only {ticks} ticks");
        assert_eq!(roots.len(), 1);
    }

    #[test]
    fn a_stall_does_not_drop_live_roots() {
        let mut roots = Roots::new();
        for id in 1..=5 {
            roots.configure(id, Rc::new(id));
        }
        // After a stall every timer fires once, in any order.
        for _ in 0..3 {
            for id in [5, 3, 1, 4, 2] {
                assert!(roots.tick(id).gone.is_empty());
            }
        }
        assert_eq!(roots.len(), 5);
    }
}
