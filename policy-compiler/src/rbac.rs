//! `--emit envoy-rbac`: the same policy set as Envoy's native RBAC HTTP filter
//! (`envoy.filters.http.rbac`), for side-by-side measurement and differential testing.
//!
//! One RBAC filter per action, DENY first: Envoy's RBAC engine has one action per filter, and
//! running the DENY filter before the ALLOW filter gives meshauthz's combination rule (any DENY
//! match denies; else, with ALLOW policies, a match is required). Each (policy, rule) becomes an
//! Envoy policy named `<policy>/<rule>`.
//!
//! Where Envoy cannot say the same thing, the closest expression is used (see SEMANTICS.md,
//! "Native RBAC differences"):
//! - hosts: compared case-insensitively with nothing removed, as the filter does (the HCM's
//!   `strip_any_host_port` / `strip_trailing_host_dot` normalize the host for both), through a
//!   case-insensitive regex on `:authority`;
//! - a DENY's header regex must also catch one value of a repeated header, but Envoy's matcher
//!   sees only the `,`-joined value: the regex is widened to match any `,`-separated run of it
//!   (`(?:.*,)?(?:R)(?:,.*)?`), which denies at least what the filter denies;
//! - principals: Envoy's `authenticated.principal_name` matches any URI SAN (then DNS SANs, then
//!   the subject), not only the single URI SAN of an X.509-SVID;
//! - the decision is the same, but which rule decided is not reported the same way.
//!
//! Format-2 sets (Istio input) come out as istiod writes them: an AUDIT filter (action `LOG`)
//! first, dry-run policies under their filter's `shadow_rules` (a filter holding only dry-run
//! policies has no `rules`, so it enforces nothing), conditions as `not_rule` / `not_id`,
//! `url_path`, `uri_template`, `requested_server_name`, `destination_ip`.

use meshauthz_table::{Action, Destination, Pattern, Policy, PolicySet, Rule, Source};
use serde_json::{Value, json};

use crate::rbac_cond::{permission_condition, principal_condition};

/// The HTTP filter entries (JSON, valid YAML) to put before the router, in order. With
/// `shadow`, the policies go under `shadow_rules`: Envoy evaluates and counts them
/// (`shadow_allowed` / `shadow_denied` stats) and never denies, like the filter's shadow mode.
/// An error names a condition Envoy's RBAC cannot hold where the policy has it.
pub fn envoy_rbac(set: &PolicySet, shadow: bool) -> Result<String, String> {
    let mut filters = Vec::new();
    for action in [Action::Audit, Action::Deny, Action::Allow] {
        let of = |dry: bool| -> Vec<&Policy> {
            set.policies
                .iter()
                .filter(|p| p.action == action && p.dry_run == dry)
                .collect()
        };
        let (enforced, dry) = (of(false), of(true));
        if enforced.is_empty() && dry.is_empty() {
            continue;
        }
        filters.push(rbac_filter(action, &enforced, &dry, shadow)?);
    }
    Ok(format!("{:#}\n", Value::Array(filters)))
}

fn rbac_filter(action: Action, enforced: &[&Policy], dry: &[&Policy], shadow: bool) -> Result<Value, String> {
    let policies = |ps: &[&Policy]| -> Result<Value, String> {
        let mut map = serde_json::Map::new();
        for p in ps {
            if p.rules.is_empty() {
                map.insert(
                    format!("{}/all", p.name),
                    json!({"permissions": [{"any": true}], "principals": [{"any": true}]}),
                );
            }
            for (i, rule) in p.rules.iter().enumerate() {
                let policy = envoy_policy(rule, action).map_err(|e| format!("policy {} rule {i}: {e}", p.name))?;
                map.insert(format!("{}/{i}", p.name), policy);
            }
        }
        let envoy_action = if action == Action::Audit {
            "LOG"
        } else {
            action.as_str()
        };
        Ok(json!({"action": envoy_action, "policies": map}))
    };
    let mut config = json!({"@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"});
    let (enforce, observe): (Vec<&Policy>, Vec<&Policy>) = if shadow {
        (Vec::new(), enforced.iter().chain(dry).copied().collect())
    } else {
        (enforced.to_vec(), dry.to_vec())
    };
    if !enforce.is_empty() {
        config["rules"] = policies(&enforce)?;
    }
    if !observe.is_empty() {
        config["shadow_rules"] = policies(&observe)?;
        config["shadow_rules_stat_prefix"] = json!(format!("meshauthz_{}_", action.as_str().to_ascii_lowercase()));
    }
    Ok(json!({"name": "envoy.filters.http.rbac", "typed_config": config}))
}

fn envoy_policy(rule: &Rule, action: Action) -> Result<Value, String> {
    let permissions: Vec<Value> = if rule.destinations.is_empty() {
        vec![json!({"any": true})]
    } else {
        rule.destinations
            .iter()
            .map(|d| permission(d, action))
            .collect::<Result<_, _>>()?
    };
    let principals: Vec<Value> = if rule.sources.is_empty() {
        vec![json!({"any": true})]
    } else {
        rule.sources
            .iter()
            .map(|s| principal(s, action))
            .collect::<Result<_, _>>()?
    };
    Ok(json!({"permissions": permissions, "principals": principals}))
}

fn or_rules(rules: Vec<Value>) -> Value {
    if rules.len() == 1 {
        rules.into_iter().next().unwrap_or(Value::Null)
    } else {
        json!({"or_rules": {"rules": rules}})
    }
}

fn or_ids(ids: Vec<Value>) -> Value {
    if ids.len() == 1 {
        ids.into_iter().next().unwrap_or(Value::Null)
    } else {
        json!({"or_ids": {"ids": ids}})
    }
}

fn header_regex(name: &str, regex: &str) -> Value {
    json!({"header": {"name": name, "string_match": {"safe_regex": {"regex": regex}}}})
}

/// A host pattern as a case-insensitive regex over `:authority`, nothing removed (`None`: `*`).
pub(crate) fn host_regex(p: &Pattern) -> Option<String> {
    let lit = |s: &str| regex::escape(s);
    match p {
        Pattern::Any => None,
        Pattern::Exact(h) => Some(format!("(?i:{})", lit(h))),
        Pattern::Prefix(h) => Some(format!("(?i:{}).*", lit(h))),
        Pattern::Suffix(h) => Some(format!("(?i:.*{})", lit(h))),
    }
}

fn host_rule(p: &Pattern) -> Value {
    match host_regex(p) {
        None => json!({"any": true}),
        Some(re) => header_regex(":authority", &re),
    }
}

/// A header regex as Envoy's matchers must hold it: a DENY's widened to any `,`-separated run
/// of the joined value (a superset of "any single value"), an ALLOW's as written.
pub(crate) fn header_match_regex(regex: &str, action: Action) -> String {
    match action {
        Action::Deny | Action::Audit => format!("(?:.*,)?(?:{regex})(?:,.*)?"),
        Action::Allow => regex.to_owned(),
    }
}

fn permission(d: &Destination, action: Action) -> Result<Value, String> {
    let mut and = Vec::new();
    if !d.hosts.is_empty() {
        and.push(or_rules(d.hosts.iter().map(host_rule).collect()));
    }
    if !d.ports.is_empty() {
        and.push(or_rules(
            d.ports.iter().map(|p| json!({"destination_port": p})).collect(),
        ));
    }
    if !d.methods.is_empty() {
        and.push(or_rules(
            d.methods
                .iter()
                .map(|m| json!({"header": {"name": ":method", "string_match": {"exact": m}}}))
                .collect(),
        ));
    }
    if let Some(h) = &d.header {
        and.push(header_regex(&h.name, &header_match_regex(&h.regex, action)));
    }
    for c in &d.conditions {
        and.push(permission_condition(c, action)?);
    }
    Ok(match and.len() {
        0 => json!({"any": true}),
        _ => json!({"and_rules": {"rules": and}}),
    })
}

fn principal_id(p: &Pattern) -> Value {
    match p {
        Pattern::Any => json!({"authenticated": {}}),
        Pattern::Exact(s) => json!({"authenticated": {"principal_name": {"exact": s}}}),
        Pattern::Prefix(s) => json!({"authenticated": {"principal_name": {"prefix": s}}}),
        Pattern::Suffix(s) => json!({"authenticated": {"principal_name": {"suffix": s}}}),
    }
}

fn principal(s: &Source, action: Action) -> Result<Value, String> {
    let mut and = Vec::new();
    if !s.principals.is_empty() {
        and.push(or_ids(s.principals.iter().map(principal_id).collect()));
    }
    if !s.ip_blocks.is_empty() {
        and.push(or_ids(
            s.ip_blocks
                .iter()
                .map(|n| json!({"direct_remote_ip": {"address_prefix": n.addr().to_string(), "prefix_len": n.prefix_len()}}))
                .collect(),
        ));
    }
    for c in &s.conditions {
        and.push(principal_condition(c, action)?);
    }
    Ok(match and.len() {
        0 => json!({"any": true}),
        1 => and.into_iter().next().unwrap_or(Value::Null),
        _ => json!({"and_ids": {"ids": and}}),
    })
}
