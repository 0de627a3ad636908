//! Counters at Envoy's admin `/stats`. Envoy prefixes metrics a Wasm module defines with
//! `wasmcustom.`, so these read `wasmcustom.meshauthz.allowed` and so on:
//!
//! | name | counts |
//! |---|---|
//! | `meshauthz.allowed` | requests let through (shadow mode: also those it would deny) |
//! | `meshauthz.denied` | requests answered 403 |
//! | `meshauthz.shadow_denied` | requests shadow mode would have denied |
//! | `meshauthz.refused` | requests denied without a policy decision: a certificate that is not an X.509-SVID, a failed host call, a source address that is not the peer's (also counted in `denied`) |
//! | `meshauthz.policy.<name>.allowed` / `.denied` | decisions a policy's rule decided |
//!
//! A request only bumps counters in Wasm memory; the root context hands them to Envoy on a
//! timer ([`FLUSH_PERIOD_MS`]), which saves two host calls per request. `/stats` may therefore lag
//! by up to one period.

use std::cell::Cell;

use crate::abi;
use crate::config::Mode;
use meshauthz_table::{Action, Decision, Table};

/// How often counted requests reach Envoy's stats.
pub(crate) const FLUSH_PERIOD_MS: u32 = 250;

/// One Envoy counter and what has been counted since the last flush.
#[derive(Debug)]
struct Counter {
    id: Option<u32>,
    pending: Cell<u64>,
}

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

#[derive(Debug)]
pub(crate) struct Stats {
    allowed: Counter,
    denied: Counter,
    shadow_denied: Counter,
    refused: Counter,
    /// Per policy: the counter its matches feed (allowed for ALLOW policies, denied for DENY).
    per_policy: Vec<Counter>,
}

impl Stats {
    pub(crate) fn define(table: &Table) -> Stats {
        let per_policy = (0..table.policy_count() as u32)
            .map(|p| {
                let outcome = match table.policy_action(p) {
                    Some(Action::Deny) => "denied",
                    _ => "allowed",
                };
                Counter::define(&format!("meshauthz.policy.{}.{outcome}", table.policy_name(p)))
            })
            .collect();
        Stats {
            allowed: Counter::define("meshauthz.allowed"),
            denied: Counter::define("meshauthz.denied"),
            shadow_denied: Counter::define("meshauthz.shadow_denied"),
            refused: Counter::define("meshauthz.refused"),
            per_policy,
        }
    }

    #[inline]
    pub(crate) fn record(&self, decision: &Decision, mode: Mode) {
        match (decision.allowed, mode) {
            (true, _) => self.allowed.bump(),
            (false, Mode::Enforce) => self.denied.bump(),
            (false, Mode::Shadow) => {
                self.shadow_denied.bump();
                self.allowed.bump();
            }
        }
        if let Some(c) = decision.by.and_then(|by| self.per_policy.get(by.policy as usize)) {
            c.bump();
        }
    }

    /// A request denied without a policy decision, in either mode.
    #[inline]
    pub(crate) fn record_refusal(&self) {
        self.refused.bump();
        self.denied.bump();
    }

    /// Hands everything counted so far to Envoy.
    pub(crate) fn flush(&self) {
        self.allowed.flush();
        self.denied.flush();
        self.shadow_denied.flush();
        self.refused.flush();
        self.per_policy.iter().for_each(Counter::flush);
    }
}
