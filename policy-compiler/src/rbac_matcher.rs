//! `--emit envoy-rbac-matcher`: the same policy set as Envoy's RBAC filter in its matcher form
//! (the xDS unified matcher API), which looks a request up instead of scanning every policy.
//! This is the fastest configuration Envoy's own RBAC offers, for users who want no filter of
//! ours at all, and the baseline meshauthz must beat.
//!
//! Shape: a tree keyed on `:authority` with one exact entry per exact host literal (lowercase).
//! Each entry holds, in decision order (DENY rules, then ALLOW rules, each in the author's order),
//! only the rules that can match that host: exact hosts equal to it, and the wildcard, prefix and
//! suffix hosts that match it, decided here at build time. What the tree cannot index falls back to
//! ordered matching: a host that is not an exact literal (an unknown host, or one in another case,
//! since the map is case-sensitive) goes to a list of every rule with its hosts as case-insensitive
//! regexes. Inside a rule, principals (URI SAN), ports, methods, source networks (direct peer) and
//! header regexes are predicates. First match wins; no match is DENY when ALLOW policies exist,
//! else ALLOW. The decisions are the ones `--emit envoy-rbac` gives (the differential test checks
//! both against the filter), with the same documented differences (SEMANTICS.md).

use meshauthz_table::{Action, Destination, Pattern, PolicySet, Rule, Source};
use serde_json::{Value, json};

use crate::rbac::host_regex;

/// The HTTP filter entries (JSON, valid YAML) to put before the router: one RBAC filter.
pub fn envoy_rbac_matcher(set: &PolicySet, shadow: bool) -> String {
    let rules = ordered_rules(set);
    let default = action(
        "default",
        if set.policies.iter().any(|p| p.action == Action::Allow) {
            Action::Deny
        } else {
            Action::Allow
        },
    );
    let mut keys: Vec<String> = rules
        .iter()
        .flat_map(|(_, _, r)| r.destinations.iter().flat_map(|d| &d.hosts))
        .filter_map(|p| match p {
            Pattern::Exact(h) => Some(h.to_ascii_lowercase()),
            _ => None,
        })
        .collect();
    keys.sort();
    keys.dedup();
    let map: serde_json::Map<String, Value> = keys
        .iter()
        .map(|h| {
            let leaf: Vec<Value> = rules
                .iter()
                .filter_map(|(name, act, r)| field_matcher(name, *act, r, Some(h)))
                .collect();
            (h.clone(), list_or(leaf, &default))
        })
        .collect();
    let fallback: Vec<Value> = rules
        .iter()
        .filter_map(|(name, act, r)| field_matcher(name, *act, r, None))
        .collect();
    let matcher = if map.is_empty() {
        // No exact host to index (a map needs one entry): the ordered list alone.
        let matchers = if fallback.is_empty() {
            vec![json!({"predicate": always(), "on_match": default})]
        } else {
            fallback
        };
        json!({"matcher_list": {"matchers": matchers}, "on_no_match": {"action": default["action"]}})
    } else {
        json!({
            "matcher_tree": {"input": header_input(":authority"), "exact_match_map": {"map": map}},
            "on_no_match": list_or(fallback, &default),
        })
    };
    let mut config = json!({"@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"});
    if shadow {
        config["shadow_matcher"] = matcher;
        config["shadow_rules_stat_prefix"] = json!("meshauthz_matcher_");
    } else {
        config["matcher"] = matcher;
    }
    format!(
        "{:#}\n",
        json!([{"name": "envoy.filters.http.rbac", "typed_config": config}])
    )
}

/// Every rule as (`<policy>/<rule>`, action, rule), DENY policies first; a policy without rules
/// is one rule that matches everything.
fn ordered_rules(set: &PolicySet) -> Vec<(String, Action, Rule)> {
    let mut out = Vec::new();
    for action in [Action::Deny, Action::Allow] {
        for p in set.policies.iter().filter(|p| p.action == action) {
            if p.rules.is_empty() {
                out.push((format!("{}/all", p.name), action, Rule::default()));
            }
            for (i, r) in p.rules.iter().enumerate() {
                out.push((format!("{}/{i}", p.name), action, r.clone()));
            }
        }
    }
    out
}

/// A matcher list, or the default action when it would be empty (a list needs one entry).
fn list_or(matchers: Vec<Value>, default: &Value) -> Value {
    if matchers.is_empty() {
        json!({"action": default["action"]})
    } else {
        json!({"matcher": {"matcher_list": {"matchers": matchers}, "on_no_match": {"action": default["action"]}}})
    }
}

fn action(name: &str, action: Action) -> Value {
    json!({"action": {"name": name, "typed_config": {
        "@type": "type.googleapis.com/envoy.config.rbac.v3.Action",
        "name": name,
        "action": action.as_str(),
    }}})
}

/// One rule as a `FieldMatcher` for requests to `host` (`Some`: the tree already matched that
/// exact host; `None`: the fallback, which checks hosts itself). `None` if the rule cannot match
/// that host.
fn field_matcher(name: &str, act: Action, rule: &Rule, host: Option<&str>) -> Option<Value> {
    let mut and = Vec::new();
    if !rule.sources.is_empty() {
        and.push(any(rule.sources.iter().map(source).collect()));
    }
    if !rule.destinations.is_empty() {
        let dests: Vec<Value> = rule
            .destinations
            .iter()
            .filter_map(|d| destination(d, act, host))
            .collect();
        if dests.is_empty() {
            return None;
        }
        and.push(any(dests));
    }
    let predicate = if and.is_empty() { always() } else { all(and) };
    Some(json!({"predicate": predicate, "on_match": action(name, act)}))
}

fn source(s: &Source) -> Value {
    let mut and = Vec::new();
    if !s.principals.is_empty() {
        and.push(any(s
            .principals
            .iter()
            .map(|p| {
                let value = match p {
                    Pattern::Any => re2(".+"),
                    Pattern::Exact(v) => json!({"exact": v}),
                    Pattern::Prefix(v) => json!({"prefix": v}),
                    Pattern::Suffix(v) => json!({"suffix": v}),
                };
                single(input("uri_san", "ssl.v3.UriSanInput"), value)
            })
            .collect()));
    }
    if !s.ip_blocks.is_empty() {
        let ranges: Vec<Value> = s
            .ip_blocks
            .iter()
            .map(|n| json!({"address_prefix": n.addr().to_string(), "prefix_len": n.prefix_len()}))
            .collect();
        and.push(json!({"single_predicate": {
            "input": input("direct_source_ip", "network.v3.DirectSourceIPInput"),
            "custom_match": {"name": "ip", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.matching.input_matchers.ip.v3.Ip",
                "cidr_ranges": ranges,
                "stat_prefix": "meshauthz_rbac_matcher",
            }},
        }}));
    }
    all(and)
}

/// A destination for requests to `host`, `None` if it cannot match it.
fn destination(d: &Destination, act: Action, host: Option<&str>) -> Option<Value> {
    let mut and = Vec::new();
    match host {
        Some(h) => {
            if !d.hosts.iter().any(|p| p.matches(h.as_bytes())) {
                return None;
            }
        }
        None => {
            let hosts: Vec<Value> = d
                .hosts
                .iter()
                .filter_map(|p| host_regex(p).map(|re| single(header_input(":authority"), re2(&re))))
                .collect();
            // A `*` host matches every host: no condition.
            if !d.hosts.contains(&Pattern::Any) {
                and.push(any(hosts));
            }
        }
    }
    and.push(any(d
        .ports
        .iter()
        .map(|p| {
            single(
                input("destination_port", "network.v3.DestinationPortInput"),
                json!({"exact": p.to_string()}),
            )
        })
        .collect()));
    if !d.methods.is_empty() {
        and.push(any(d
            .methods
            .iter()
            .map(|m| single(header_input(":method"), json!({"exact": m})))
            .collect()));
    }
    if let Some(h) = &d.header {
        and.push(single(
            header_input(&h.name),
            re2(&crate::rbac::header_match_regex(&h.regex, act)),
        ));
    }
    Some(all(and))
}

fn input(name: &str, kind: &str) -> Value {
    json!({"name": name, "typed_config": {"@type": format!("type.googleapis.com/envoy.extensions.matching.common_inputs.{kind}")}})
}

fn header_input(header: &str) -> Value {
    json!({"name": "header", "typed_config": {
        "@type": "type.googleapis.com/envoy.type.matcher.v3.HttpRequestHeaderMatchInput",
        "header_name": header,
    }})
}

/// An xDS string matcher by RE2 regex (full match), which must name its engine.
fn re2(regex: &str) -> Value {
    json!({"safe_regex": {"google_re2": {}, "regex": regex}})
}

fn single(input: Value, value_match: Value) -> Value {
    json!({"single_predicate": {"input": input, "value_match": value_match}})
}

/// Always true: `:authority` is always present.
fn always() -> Value {
    single(header_input(":authority"), re2(".*"))
}

fn any(mut predicates: Vec<Value>) -> Value {
    match predicates.len() {
        0 => always(),
        1 => predicates.remove(0),
        _ => json!({"or_matcher": {"predicate": predicates}}),
    }
}

fn all(mut predicates: Vec<Value>) -> Value {
    match predicates.len() {
        0 => always(),
        1 => predicates.remove(0),
        _ => json!({"and_matcher": {"predicate": predicates}}),
    }
}
