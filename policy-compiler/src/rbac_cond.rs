//! Format-2 conditions as Envoy RBAC matchers, for `--emit envoy-rbac`: the principal side
//! (`Principal`: `authenticated`, `header`, `url_path`, `direct_remote_ip`) and the permission
//! side (`Permission`: `header`, `url_path`, `uri_template`, `requested_server_name`,
//! `destination_ip`, `destination_port`). A negated condition is `not_id` / `not_rule` of the
//! ORed matchers, as istiod writes `notValues`.

use meshauthz_table::{Action, Attribute, Condition, Matcher};
use serde_json::{Value, json};

use crate::rbac::header_match_regex;

#[derive(Clone, Copy, PartialEq)]
enum Side {
    Principal,
    Permission,
}

pub(crate) fn principal_condition(c: &Condition, action: Action) -> Result<Value, String> {
    condition(c, action, Side::Principal)
}

pub(crate) fn permission_condition(c: &Condition, action: Action) -> Result<Value, String> {
    condition(c, action, Side::Permission)
}

fn condition(c: &Condition, action: Action, side: Side) -> Result<Value, String> {
    let mut any = Vec::with_capacity(c.matchers.len());
    for m in &c.matchers {
        any.push(one(&c.attribute, m, action, c.negated, side)?);
    }
    let (or_key, list_key, not_key) = match side {
        Side::Principal => ("or_ids", "ids", "not_id"),
        Side::Permission => ("or_rules", "rules", "not_rule"),
    };
    let or = if any.len() == 1 {
        any.pop().unwrap_or(Value::Null)
    } else {
        json!({ or_key: { list_key: any } })
    };
    Ok(if c.negated { json!({ not_key: or }) } else { or })
}

/// A string matcher; `ignore_case` for hosts (whose literals are stored lowercase).
fn string_matcher(m: &Matcher, ignore_case: bool) -> Option<Value> {
    let mut v = match m {
        Matcher::Exact(s) => json!({"exact": s}),
        Matcher::Prefix(s) => json!({"prefix": s}),
        Matcher::Suffix(s) => json!({"suffix": s}),
        Matcher::Contains(s) => json!({"contains": s}),
        Matcher::Regex(r) => json!({"safe_regex": {"regex": r}}),
        Matcher::NonEmpty => json!({"safe_regex": {"regex": ".+"}}),
        _ => return None,
    };
    if ignore_case && !matches!(m, Matcher::Regex(_) | Matcher::NonEmpty) {
        v["ignore_case"] = json!(true);
    }
    Some(v)
}

/// The same matcher as a regex over the whole value (for widening a DENY's header match).
fn as_regex(m: &Matcher) -> Option<String> {
    Some(match m {
        Matcher::Exact(s) => regex::escape(s),
        Matcher::Prefix(s) => format!("{}.*", regex::escape(s)),
        Matcher::Suffix(s) => format!(".*{}", regex::escape(s)),
        Matcher::Contains(s) => format!(".*{}.*", regex::escape(s)),
        Matcher::Regex(r) => r.clone(),
        Matcher::NonEmpty => ".+".into(),
        _ => return None,
    })
}

/// A `metadata` principal on jwt_authn's `payload` at `path`, whose value `value` matches.
fn jwt_metadata(path: &[String], value: Value) -> Value {
    let mut keys = vec![json!({"key": "payload"})];
    keys.extend(path.iter().map(|k| json!({"key": k})));
    json!({"metadata": {"filter": "envoy.filters.http.jwt_authn", "path": keys, "value": value}})
}

/// A value matcher for a string matcher: `present_match` for `Present`.
fn value_matcher(m: &Matcher) -> Option<Value> {
    match m {
        Matcher::Present => Some(json!({"present_match": true})),
        _ => string_matcher(m, false).map(|sm| json!({"string_match": sm})),
    }
}

fn cidr(n: &meshauthz_table::IpNet) -> Value {
    json!({"address_prefix": n.addr().to_string(), "prefix_len": n.prefix_len()})
}

fn one(attribute: &Attribute, m: &Matcher, action: Action, negated: bool, side: Side) -> Result<Value, String> {
    let unsupported = || {
        format!(
            "a {attribute:?} condition with {m:?} cannot be expressed on Envoy RBAC's {} side",
            if side == Side::Principal {
                "principal"
            } else {
                "permission"
            }
        )
    };
    let header = |name: &str, ignore_case: bool| -> Option<Value> {
        if *m == Matcher::Present {
            return Some(json!({"header": {"name": name, "present_match": true}}));
        }
        // A DENY's positive match on a named header also holds on one value of a repeated
        // header: widened over the `,`-joined value, as for `httpHeaderMatch`.
        let widen = matches!(attribute, Attribute::Header(_)) && !negated && action != Action::Allow;
        let sm = if widen {
            json!({"safe_regex": {"regex": header_match_regex(&as_regex(m)?, action)}})
        } else {
            string_matcher(m, ignore_case)?
        };
        Some(json!({"header": {"name": name, "string_match": sm}}))
    };
    let out = match (attribute, side) {
        (Attribute::Principal, Side::Principal) => match m {
            Matcher::Present => Some(json!({"authenticated": {}})),
            _ => string_matcher(m, false).map(|sm| json!({"authenticated": {"principal_name": sm}})),
        },
        (Attribute::Host, _) => header(":authority", true),
        (Attribute::Method, _) => header(":method", false),
        (Attribute::Header(name), _) => header(name, false),
        (Attribute::Path, _) => match m {
            Matcher::PathTemplate(t) if side == Side::Permission => Some(json!({"uri_template": {
                "name": "uri-template",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.path.match.uri_template.v3.UriTemplateMatchConfig",
                    "path_template": t.replace("{**}", "**").replace("{*}", "*"),
                },
            }})),
            _ => string_matcher(m, false).map(|sm| json!({"url_path": {"path": sm}})),
        },
        (Attribute::Sni, Side::Permission) => string_matcher(m, false).map(|sm| json!({"requested_server_name": sm})),
        (Attribute::SourceIp, Side::Principal) => match m {
            Matcher::Net(n) => Some(json!({"direct_remote_ip": cidr(n)})),
            _ => None,
        },
        // A string claim, or any element of a list claim (istiod's `or(listMatch.oneOf(v), v)`).
        (Attribute::Claim(path), Side::Principal) => value_matcher(m).map(|v| {
            jwt_metadata(
                path,
                json!({"or_match": {"value_matchers": [{"list_match": {"one_of": v}}, v]}}),
            )
        }),
        (Attribute::RequestPrincipal, Side::Principal) => match m {
            Matcher::IssuerSubject(iss, sub) => {
                let (iss, sub) = (value_matcher(iss), value_matcher(sub));
                iss.zip(sub).map(|(i, s)| {
                    json!({"and_ids": {"ids": [
                        jwt_metadata(&["iss".into()], i),
                        jwt_metadata(&["sub".into()], s),
                    ]}})
                })
            }
            _ => None,
        },
        (Attribute::RemoteIp, Side::Principal) => match m {
            Matcher::Net(n) => Some(json!({"remote_ip": cidr(n)})),
            _ => None,
        },
        (Attribute::DestinationIp, Side::Permission) => match m {
            Matcher::Net(n) => Some(json!({"destination_ip": cidr(n)})),
            _ => None,
        },
        (Attribute::DestinationPort, Side::Permission) => match m {
            Matcher::Port(p) => Some(json!({"destination_port": p})),
            _ => None,
        },
        _ => None,
    };
    out.ok_or_else(unsupported)
}
