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
//! | `meshauthz.audited` | requests an AUDIT rule matched (Istio input; never changes a decision) |
//! | `meshauthz.policy.<name>.audited` | requests that AUDIT policy's rule matched |
//! | `meshauthz.dry_run_allowed` / `.dry_run_denied` | what the dry-run policies (`istio.io/dry-run`) alone would have decided |
//! | `meshauthz.policy.<name>.dry_run_allowed` / `.dry_run_denied` | dry-run decisions that policy's rule made |
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
/// per policy (`meshauthz.policy.<name>.allowed` for ALLOW policies, `.denied` for DENY,
/// `.audited` for AUDIT, `.dry_run_allowed` / `.dry_run_denied` for dry-run ones).
pub(crate) fn counter_names(table: &Table) -> (Vec<&'static str>, Vec<String>) {
    let fixed = vec![
        "meshauthz.allowed",
        "meshauthz.denied",
        "meshauthz.shadow_denied",
        "meshauthz.refused",
        "meshauthz.audited",
        "meshauthz.dry_run_allowed",
        "meshauthz.dry_run_denied",
    ];
    let per_policy = (0..table.policy_count() as u32)
        .map(|p| {
            let outcome = match (table.policy_action(p), table.policy_dry_run(p)) {
                (Some(Action::Audit), _) => "audited",
                (Some(Action::Deny), true) => "dry_run_denied",
                (_, true) => "dry_run_allowed",
                (Some(Action::Deny), false) => "denied",
                _ => "allowed",
            };
            format!("meshauthz.policy.{}.{outcome}", table.policy_name(p))
        })
        .collect();
    (fixed, per_policy)
}

/// Which counters a request bumps: indexes into [`counter_names`]'s fixed list (at most three)
/// and the policies (at most three: the deciding one, the auditing one, the dry-run one).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Bumps {
    pub fixed: [Option<usize>; 4],
    pub policies: [Option<u32>; 3],
}

impl Bumps {
    pub fn fixed(&self) -> impl Iterator<Item = usize> + '_ {
        self.fixed.iter().flatten().copied()
    }

    pub fn policies(&self) -> impl Iterator<Item = u32> + '_ {
        self.policies.iter().flatten().copied()
    }
}

pub(crate) fn bumps(tally: Tally) -> Bumps {
    const ALLOWED: usize = 0;
    const DENIED: usize = 1;
    const SHADOW_DENIED: usize = 2;
    const REFUSED: usize = 3;
    const AUDITED: usize = 4;
    const DRY_RUN_ALLOWED: usize = 5;
    const DRY_RUN_DENIED: usize = 6;
    match tally {
        Tally::Refused => Bumps {
            fixed: [Some(REFUSED), Some(DENIED), None, None],
            policies: [None; 3],
        },
        Tally::Decided {
            allowed,
            mode,
            policy,
            audit,
            dry_run,
        } => {
            let (first, second) = match (allowed, mode) {
                (true, _) => (ALLOWED, None),
                (false, Mode::Enforce) => (DENIED, None),
                (false, Mode::Shadow) => (SHADOW_DENIED, Some(ALLOWED)),
            };
            let dry = dry_run.map(|(ok, _)| if ok { DRY_RUN_ALLOWED } else { DRY_RUN_DENIED });
            Bumps {
                fixed: [Some(first), second, audit.map(|_| AUDITED), dry],
                policies: [policy, audit, dry_run.and_then(|(_, p)| p)],
            }
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
        let b = bumps(tally);
        for i in b.fixed() {
            if let Some(c) = self.fixed.get(i) {
                c.bump();
            }
        }
        for p in b.policies() {
            if let Some(c) = self.per_policy.get(p as usize) {
                c.bump();
            }
        }
    }

    /// Hands everything counted so far to Envoy.
    pub(crate) fn flush(&self) {
        self.fixed.iter().chain(&self.per_policy).for_each(Counter::flush);
    }
}
