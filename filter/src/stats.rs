//! Counters at Envoy's admin `/stats`. Envoy prefixes metrics a Wasm module defines with
//! `wasmcustom.`, so these read `wasmcustom.meshauthz.allowed` and so on:
//!
//! | name | counts |
//! |---|---|
//! | `meshauthz.allowed` | requests let through (shadow mode: also those it would deny) |
//! | `meshauthz.denied` | requests answered 403 |
//! | `meshauthz.shadow_denied` | requests shadow mode would have denied |
//! | `meshauthz.policy.<name>.allowed` / `.denied` | decisions a policy's rule decided |

use meshauthz_table::{Action, Decision, Table};
use proxy_wasm::hostcalls;
use proxy_wasm::types::MetricType;

use crate::config::Mode;

#[derive(Debug)]
pub(crate) struct Stats {
    allowed: Option<u32>,
    denied: Option<u32>,
    shadow_denied: Option<u32>,
    /// Per policy: the counter its matches feed (allowed for ALLOW policies, denied for DENY).
    per_policy: Vec<Option<u32>>,
}

fn counter(name: &str) -> Option<u32> {
    hostcalls::define_metric(MetricType::Counter, name).ok()
}

impl Stats {
    pub(crate) fn define(table: &Table) -> Stats {
        let per_policy = (0..table.policy_count() as u32)
            .map(|p| {
                let outcome = match table.policy_action(p) {
                    Some(Action::Deny) => "denied",
                    _ => "allowed",
                };
                counter(&format!("meshauthz.policy.{}.{outcome}", table.policy_name(p)))
            })
            .collect();
        Stats {
            allowed: counter("meshauthz.allowed"),
            denied: counter("meshauthz.denied"),
            shadow_denied: counter("meshauthz.shadow_denied"),
            per_policy,
        }
    }

    pub(crate) fn record(&self, decision: &Decision, mode: Mode) {
        let main = match (decision.allowed, mode) {
            (true, _) => self.allowed,
            (false, Mode::Enforce) => self.denied,
            (false, Mode::Shadow) => {
                bump(self.shadow_denied);
                self.allowed
            }
        };
        bump(main);
        if let Some(by) = decision.by {
            bump(self.per_policy.get(by.policy as usize).copied().flatten());
        }
    }
}

fn bump(id: Option<u32>) {
    if let Some(id) = id {
        let _ = hostcalls::increment_metric(id, 1);
    }
}
