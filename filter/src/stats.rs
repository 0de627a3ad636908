//! Counters at Envoy's admin `/stats`, the same names in both builds. Envoy prefixes them with
//! `wasmcustom.` for the Wasm build and with the dynamic module's metrics namespace
//! (`dynamicmodulescustom.` by default) for the native one:
//!
//! | name | counts |
//! |---|---|
//! | `meshauthz.allowed` | requests let through (shadow mode: also those it would deny) |
//! | `meshauthz.denied` | requests answered 403 |
//! | `meshauthz.shadow_denied` | requests shadow mode would have denied |
//! | `meshauthz.refused` | requests denied without a policy decision: a certificate that is not an X.509-SVID, a failed host call, a source address that is not the peer's (also counted in `denied`) |
//! | `meshauthz.policy.<name>.allowed` / `.denied` | decisions a policy's rule decided |
//!
//! Wasm: a request only bumps counters in Wasm memory; the root context hands them to Envoy on
//! a timer (`FLUSH_PERIOD_MS`), which saves two host calls per request, so `/stats` may lag by
//! up to one period. Native: each request increments Envoy's counters directly (a native call
//! is cheap), so `/stats` is never behind.

#[cfg(any(target_arch = "wasm32", test))]
use std::cell::Cell;

#[cfg(any(target_arch = "wasm32", test))]
use crate::abi;
use crate::config::Mode;
use crate::decide::Tally;
use meshauthz_table::{Action, Table};

/// Every counter's name without its namespace prefix, for one table: the fixed ones, then one
/// per policy (`meshauthz.policy.<name>.allowed` for ALLOW policies, `.denied` for DENY).
pub(crate) fn counter_names(table: &Table) -> (Vec<&'static str>, Vec<String>) {
    let fixed = vec![
        "meshauthz.allowed",
        "meshauthz.denied",
        "meshauthz.shadow_denied",
        "meshauthz.refused",
    ];
    let per_policy = (0..table.policy_count() as u32)
        .map(|p| {
            let outcome = match table.policy_action(p) {
                Some(Action::Deny) => "denied",
                _ => "allowed",
            };
            format!("meshauthz.policy.{}.{outcome}", table.policy_name(p))
        })
        .collect();
    (fixed, per_policy)
}

/// Which counters a request bumps: indexes into [`counter_names`]'s fixed list, and the policy.
pub(crate) fn bumps(tally: Tally) -> (&'static [usize], Option<u32>) {
    const ALLOWED: usize = 0;
    const DENIED: usize = 1;
    const SHADOW_DENIED: usize = 2;
    const REFUSED: usize = 3;
    match tally {
        Tally::Refused => (&[REFUSED, DENIED], None),
        Tally::Decided { allowed, mode, policy } => {
            let fixed: &'static [usize] = match (allowed, mode) {
                (true, _) => &[ALLOWED],
                (false, Mode::Enforce) => &[DENIED],
                (false, Mode::Shadow) => &[SHADOW_DENIED, ALLOWED],
            };
            (fixed, policy)
        }
    }
}

/// How often counted requests reach Envoy's stats.
#[cfg(any(target_arch = "wasm32", test))]
pub(crate) const FLUSH_PERIOD_MS: u32 = 250;

/// One Envoy counter and what has been counted since the last flush.
#[cfg(any(target_arch = "wasm32", test))]
#[derive(Debug)]
struct Counter {
    id: Option<u32>,
    pending: Cell<u64>,
}

#[cfg(any(target_arch = "wasm32", test))]
impl Counter {
    fn define(name: &str) -> Counter {
        Counter {
            id: abi::define_counter(name),
            pending: Cell::new(0),
        }
    }

    #[inline]
    fn bump(&self) {
        self.pending.set(self.pending.get() + 1);
    }

    fn flush(&self) {
        let n = self.pending.replace(0);
        if let (Some(id), true) = (self.id, n > 0) {
            abi::increment_counter(id, i64::try_from(n).unwrap_or(i64::MAX));
        }
    }
}

/// The Wasm build's counters: bumped in Wasm memory, handed to Envoy on a timer.
#[cfg(any(target_arch = "wasm32", test))]
#[derive(Debug)]
pub(crate) struct Stats {
    fixed: Vec<Counter>,
    per_policy: Vec<Counter>,
}

#[cfg(any(target_arch = "wasm32", test))]
impl Stats {
    pub(crate) fn define(table: &Table) -> Stats {
        let (fixed, per_policy) = counter_names(table);
        Stats {
            fixed: fixed.into_iter().map(Counter::define).collect(),
            per_policy: per_policy.iter().map(|n| Counter::define(n)).collect(),
        }
    }

    #[inline]
    pub(crate) fn record(&self, tally: Tally) {
        let (fixed, policy) = bumps(tally);
        for &i in fixed {
            if let Some(c) = self.fixed.get(i) {
                c.bump();
            }
        }
        if let Some(c) = policy.and_then(|p| self.per_policy.get(p as usize)) {
            c.bump();
        }
    }

    /// Hands everything counted so far to Envoy.
    pub(crate) fn flush(&self) {
        self.fixed.iter().chain(&self.per_policy).for_each(Counter::flush);
    }
}
