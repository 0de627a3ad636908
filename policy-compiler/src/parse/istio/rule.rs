//! One Istio rule: `from` sources (ORed), `to` operations (ORed), `when` conditions (ANDed and
//! copied into every entry of their side, as istiod does), each field's `values` ORed and its
//! `notValues` a negated OR.

use meshauthz_table::{Attribute, Condition, Destination, Matcher, Rule, Source};
use saphyr::{Scalar, YamlData};

use super::values::{
    expand_trust_domain, host_pattern, namespace_matcher, principal_matcher, principal_pattern,
    request_principal_matcher, rewrite_principal, service_account_matcher, string_matcher, trust_domain_matcher,
};
use crate::check;
use crate::diag::did_you_mean;
use crate::parse::reader::join;
use crate::parse::{Node, Parser};

const RULE_FIELDS: &[&str] = &["from", "to", "when"];
const SOURCE_FIELDS: &[&str] = &[
    "principals",
    "notPrincipals",
    "requestPrincipals",
    "notRequestPrincipals",
    "namespaces",
    "notNamespaces",
    "serviceAccounts",
    "notServiceAccounts",
    "trustDomains",
    "notTrustDomains",
    "ipBlocks",
    "notIpBlocks",
    "remoteIpBlocks",
    "notRemoteIpBlocks",
];
const OPERATION_FIELDS: &[&str] = &[
    "hosts",
    "notHosts",
    "ports",
    "notPorts",
    "methods",
    "notMethods",
    "paths",
    "notPaths",
];
const WHEN_FIELDS: &[&str] = &["key", "values", "notValues"];
const WHEN_KEYS: &[&str] = &[
    "request.headers[]",
    "source.ip",
    "remote.ip",
    "source.namespace",
    "source.principal",
    "source.serviceAccount",
    "source.trustDomain",
    "request.auth.principal",
    "request.auth.audiences",
    "request.auth.presenter",
    "request.auth.claims[]",
    "destination.ip",
    "destination.port",
    "connection.sni",
];

/// What a field's or `when` key's values become.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Principal,
    Namespace,
    ServiceAccount,
    TrustDomain,
    SourceIp,
    RemoteIp,
    RequestPrincipal,
    /// A JWT claim (the path is carried beside, as a header's name is).
    Claim,
    Host,
    Method,
    Path,
    Port,
    Header,
    DestinationIp,
    Sni,
}

impl Parser<'_> {
    pub(super) fn istio_rule(&mut self, node: &Node<'_>, path: &str, ns: &str) -> Option<Rule> {
        if matches!(node.data, YamlData::Value(Scalar::Null)) {
            self.error(node, path, "a rule cannot be null".into());
            return None;
        }
        let fields = self.fields(node, path, RULE_FIELDS)?;
        let get = |name: &str| fields.iter().find(|(k, _)| *k == name).map(|(_, v)| *v);
        // `when` first: its conditions go into every entry of their side.
        let (mut principal_side, mut permission_side) = (Vec::new(), Vec::new());
        if let Some(when) = get("when") {
            let items = self.list(when, &join(path, "when")).unwrap_or(&[]);
            for (i, w) in items.iter().enumerate() {
                let wpath = format!("{path}.when[{i}]");
                if let Some((permission, cond)) = self.when(w, &wpath, ns) {
                    if permission {
                        permission_side.extend(cond);
                    } else {
                        principal_side.extend(cond);
                    }
                }
            }
        }
        let mut rule = Rule::default();
        if let Some(from) = get("from") {
            for (i, entry) in self.entries(from, &join(path, "from"))?.iter().enumerate() {
                let epath = format!("{path}.from[{i}].source");
                let Some(source) = self.entry(entry, &format!("{path}.from[{i}]"), "source") else {
                    continue;
                };
                let mut s = self.istio_source(source, &epath, ns)?;
                s.conditions.extend(principal_side.iter().cloned());
                rule.sources.push(s);
            }
        } else if !principal_side.is_empty() {
            rule.sources.push(Source {
                conditions: principal_side,
                ..Source::default()
            });
        }
        if let Some(to) = get("to") {
            for (i, entry) in self.entries(to, &join(path, "to"))?.iter().enumerate() {
                let epath = format!("{path}.to[{i}].operation");
                let Some(op) = self.entry(entry, &format!("{path}.to[{i}]"), "operation") else {
                    continue;
                };
                let mut d = self.operation(op, &epath)?;
                d.conditions.extend(permission_side.iter().cloned());
                rule.destinations.push(d);
            }
        } else if !permission_side.is_empty() {
            rule.destinations.push(Destination {
                conditions: permission_side,
                ..Destination::default()
            });
        }
        Some(rule)
    }

    /// `from` / `to`: a non-empty list.
    fn entries<'n>(&mut self, node: &'n Node<'n>, path: &str) -> Option<&'n [Node<'n>]> {
        let items = self.list(node, path)?;
        if items.is_empty() {
            self.error(
                node,
                path,
                "an empty list matches nothing; leave the field out instead".into(),
            );
            return None;
        }
        Some(items)
    }

    /// `{source: ...}` or `{operation: ...}`, which must be set and not empty.
    fn entry<'n>(&mut self, node: &'n Node<'n>, path: &str, field: &str) -> Option<&'n Node<'n>> {
        let fields = self.fields(node, path, &[field])?;
        match fields.first() {
            Some((_, v)) if !matches!(&v.data, YamlData::Value(Scalar::Null)) && !is_empty_map(v) => Some(*v),
            _ => {
                self.error(node, &join(path, field), format!("`{field}` must be set and not empty"));
                None
            }
        }
    }

    fn istio_source(&mut self, node: &Node<'_>, path: &str, ns: &str) -> Option<Source> {
        let fields = self.fields(node, path, SOURCE_FIELDS)?;
        let has = |n: &str| fields.iter().any(|(k, _)| *k == n);
        if (has("serviceAccounts") || has("notServiceAccounts"))
            && ["principals", "notPrincipals", "namespaces", "notNamespaces"]
                .iter()
                .any(|f| has(f))
        {
            self.error(
                node,
                path,
                "serviceAccounts cannot be combined with principals or namespaces (or their not- forms)".into(),
            );
        }
        let mut s = Source::default();
        for (key, value) in fields {
            let fpath = join(path, key);
            let negated = key.starts_with("not");
            let kind = match key {
                "principals" | "notPrincipals" => Kind::Principal,
                "namespaces" | "notNamespaces" => Kind::Namespace,
                "serviceAccounts" | "notServiceAccounts" => Kind::ServiceAccount,
                "trustDomains" | "notTrustDomains" => Kind::TrustDomain,
                "ipBlocks" | "notIpBlocks" => Kind::SourceIp,
                "remoteIpBlocks" | "notRemoteIpBlocks" => Kind::RemoteIp,
                _ => Kind::RequestPrincipal,
            };
            // A bad value is reported and the field left out of this (failing) compile, so that
            // every other field is still checked and reported too.
            let Some(values) = self.values(value, &fpath) else {
                continue;
            };
            if kind == Kind::ServiceAccount && values.len() > 16 {
                self.error(value, &fpath, "at most 16 service accounts".into());
            }
            let Some(matchers) = self.matchers(kind, &values, &fpath, ns) else {
                continue;
            };
            match (kind, negated) {
                (Kind::SourceIp, false) => s.ip_blocks.extend(matchers.iter().filter_map(|m| match m {
                    Matcher::Net(n) => Some(*n),
                    _ => None,
                })),
                (Kind::Principal, false) if matchers.iter().all(|m| principal_pattern(m).is_some()) => {
                    s.principals.extend(matchers.iter().filter_map(principal_pattern));
                }
                _ => s.conditions.push(condition(kind, negated, matchers)),
            }
        }
        Some(s)
    }

    fn operation(&mut self, node: &Node<'_>, path: &str) -> Option<Destination> {
        let fields = self.fields(node, path, OPERATION_FIELDS)?;
        let mut d = Destination::default();
        for (key, value) in fields {
            let fpath = join(path, key);
            let negated = key.starts_with("not");
            let kind = match key.trim_start_matches("not").to_ascii_lowercase().as_str() {
                "hosts" => Kind::Host,
                "ports" => Kind::Port,
                "methods" => Kind::Method,
                _ => Kind::Path,
            };
            let Some(values) = self.values(value, &fpath) else {
                continue;
            };
            let Some(matchers) = self.matchers(kind, &values, &fpath, "") else {
                continue;
            };
            match (kind, negated) {
                // The indexable forms where the table has them.
                (Kind::Host, false) => d.hosts.extend(values.iter().map(|(_, v)| host_pattern(v))),
                (Kind::Method, false) if values.iter().all(|(_, v)| !v.contains('*')) => {
                    d.methods.extend(values.iter().map(|(_, v)| v.clone()))
                }
                (Kind::Port, false) if matchers.iter().all(|m| !matches!(m, Matcher::Port(0))) => {
                    d.ports.extend(matchers.iter().filter_map(|m| match m {
                        Matcher::Port(p) => Some(*p),
                        _ => None,
                    }))
                }
                _ => d.conditions.push(condition(kind, negated, matchers)),
            }
        }
        Some(d)
    }

    /// One `when` entry: whether it is on the permission side, and its conditions.
    fn when(&mut self, node: &Node<'_>, path: &str, ns: &str) -> Option<(bool, Vec<Condition>)> {
        let fields = self.fields(node, path, WHEN_FIELDS)?;
        let get = |name: &str| fields.iter().find(|(k, _)| *k == name).map(|(_, v)| *v);
        let Some(key_node) = get("key") else {
            self.error(node, &join(path, "key"), "missing required field `key`".into());
            return None;
        };
        let key = self.string(key_node, &join(path, "key"))?;
        let kpath = join(path, "key");
        // The header name, or the claim path, that the kind's attribute carries.
        let (kind, header): (Kind, Option<Attribute>) = match key {
            "source.ip" => (Kind::SourceIp, None),
            "remote.ip" => (Kind::RemoteIp, None),
            "source.namespace" => (Kind::Namespace, None),
            "source.principal" => (Kind::Principal, None),
            "source.serviceAccount" => (Kind::ServiceAccount, None),
            "source.trustDomain" => (Kind::TrustDomain, None),
            "destination.ip" => (Kind::DestinationIp, None),
            "destination.port" => (Kind::Port, None),
            "connection.sni" => (Kind::Sni, None),
            "request.auth.principal" => (Kind::RequestPrincipal, None),
            "request.auth.audiences" => (Kind::Claim, Some(Attribute::Claim(vec!["aud".into()]))),
            "request.auth.presenter" => (Kind::Claim, Some(Attribute::Claim(vec!["azp".into()]))),
            k if k.starts_with("request.auth.claims[") => match claim_path(k) {
                Some(path) => (Kind::Claim, Some(Attribute::Claim(path))),
                None => {
                    self.error(
                        key_node,
                        &kpath,
                        format!("malformed key `{k}`: expected request.auth.claims[NAME][NESTED]..."),
                    );
                    return None;
                }
            },
            k if k.starts_with("request.headers[") => match bracketed(k, "request.headers") {
                Some(name) => (Kind::Header, Some(Attribute::Header(name.to_ascii_lowercase()))),
                None => {
                    self.error(
                        key_node,
                        &kpath,
                        format!("malformed key `{k}`: expected request.headers[NAME]"),
                    );
                    return None;
                }
            },
            k if k.starts_with("experimental.") => {
                self.unsupported(key_node, &kpath, k);
                return None;
            }
            k => {
                let hint = did_you_mean(k, WHEN_KEYS).map_or(String::new(), |s| format!("; did you mean `{s}`?"));
                self.error(key_node, &kpath, format!("unknown condition key `{k}`{hint}"));
                return None;
            }
        };
        let (values, not_values) = (get("values"), get("notValues"));
        if values.is_none() && not_values.is_none() {
            self.error(node, path, "a condition needs `values` or `notValues`".into());
            return None;
        }
        let mut out = Vec::new();
        for (field, negated) in [(values, false), (not_values, true)] {
            let Some(list) = field else { continue };
            let fpath = join(path, if negated { "notValues" } else { "values" });
            let Some(vals) = self.values(list, &fpath) else {
                continue;
            };
            let Some(matchers) = self.matchers(kind, &vals, &fpath, ns) else {
                continue;
            };
            out.push(match &header {
                Some(attribute) => Condition {
                    attribute: attribute.clone(),
                    negated,
                    matchers,
                },
                None => condition(kind, negated, matchers),
            });
        }
        let permission = matches!(kind, Kind::DestinationIp | Kind::Port | Kind::Sni);
        Some((permission, out))
    }

    /// A list of non-empty strings, with each item's node for errors. A bad item is reported
    /// (which fails the compile) and left out, so the rest are still checked.
    fn values<'n>(&mut self, node: &'n Node<'n>, path: &str) -> Option<Vec<(&'n Node<'n>, String)>> {
        let items = self.list(node, path)?;
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let ipath = format!("{path}[{i}]");
            match self.string(item, &ipath) {
                Some("") => self.error(item, &ipath, "empty value".into()),
                Some(text) => out.push((item, text.to_owned())),
                None => {}
            }
        }
        Some(out)
    }

    /// The matchers for one field's values, validated as istiod's webhook does.
    fn matchers(&mut self, kind: Kind, values: &[(&Node<'_>, String)], path: &str, ns: &str) -> Option<Vec<Matcher>> {
        let mut out: Vec<Matcher> = Vec::new();
        let mut ok = true;
        let bundle = self.istio.bundle();
        for (i, (node, v)) in values.iter().enumerate() {
            let ipath = format!("{path}[{i}]");
            match kind {
                Kind::Principal => {
                    out.extend(rewrite_principal(v, &bundle).iter().map(|p| principal_matcher(p)));
                }
                Kind::Namespace => out.push(namespace_matcher(v)),
                Kind::ServiceAccount => {
                    let parts: Vec<&str> = v.split('/').collect();
                    let shape_ok = parts.len() <= 2 && parts.iter().all(|p| !p.is_empty());
                    if v.contains('*') || v.len() > 320 || !shape_ok {
                        self.error(
                            node,
                            &ipath,
                            format!("invalid service account `{v}`: expected `sa` or `ns/sa`, no `*`, at most 320 characters"),
                        );
                        ok = false;
                        continue;
                    }
                    out.push(service_account_matcher(v, ns));
                }
                Kind::TrustDomain => {
                    let stars = v.matches('*').count();
                    let middle = stars == 1 && v != "*" && !v.starts_with('*') && !v.ends_with('*');
                    if stars > 1 || middle || v.contains('/') {
                        self.error(
                            node,
                            &ipath,
                            format!("invalid trust domain `{v}`: at most one `*`, at an end, and no `/`"),
                        );
                        ok = false;
                        continue;
                    }
                    out.extend(expand_trust_domain(v, &bundle).iter().map(|d| trust_domain_matcher(d)));
                }
                Kind::SourceIp | Kind::DestinationIp | Kind::RemoteIp => match check::ip_block(v) {
                    Ok((net, _)) => out.push(Matcher::Net(net)),
                    Err(e) => {
                        self.error(node, &ipath, format!("invalid IP or CIDR `{v}`: {e}"));
                        ok = false;
                    }
                },
                Kind::Port => match v.parse::<u16>() {
                    Ok(p) if v.bytes().all(|b| b.is_ascii_digit()) => out.push(Matcher::Port(p)),
                    _ => {
                        self.error(node, &ipath, format!("invalid port `{v}`: expected a decimal 0-65535"));
                        ok = false;
                    }
                },
                Kind::Host | Kind::Method | Kind::Header => out.push(string_matcher(v, Matcher::Present)),
                Kind::RequestPrincipal => out.push(request_principal_matcher(v)),
                Kind::Claim => out.push(string_matcher(v, Matcher::NonEmpty)),
                Kind::Sni => out.push(string_matcher(v, Matcher::NonEmpty)),
                Kind::Path => {
                    if v.contains(['{', '}']) {
                        if let Err(why) = check_template(v) {
                            self.error(node, &ipath, format!("invalid path template `{v}`: {why}"));
                            ok = false;
                            continue;
                        }
                        out.push(Matcher::PathTemplate(v.clone()));
                    } else {
                        out.push(string_matcher(v, Matcher::NonEmpty));
                    }
                }
            }
        }
        ok.then_some(out)
    }

    /// `experimental.*` keys: Envoy filter metadata whose meaning meshauthz cannot know.
    fn unsupported(&mut self, node: &Node<'_>, path: &str, what: &str) {
        self.error(
            node,
            path,
            format!(
                "`{what}`: experimental keys are not compiled; the policy is rejected rather than widened or narrowed"
            ),
        );
    }
}

fn condition(kind: Kind, negated: bool, matchers: Vec<Matcher>) -> Condition {
    let attribute = match kind {
        Kind::Principal | Kind::Namespace | Kind::ServiceAccount | Kind::TrustDomain => Attribute::Principal,
        Kind::SourceIp => Attribute::SourceIp,
        Kind::RemoteIp => Attribute::RemoteIp,
        Kind::RequestPrincipal => Attribute::RequestPrincipal,
        // Claims carry their path; `when` builds those itself.
        Kind::Claim => Attribute::Claim(Vec::new()),
        Kind::DestinationIp => Attribute::DestinationIp,
        Kind::Host => Attribute::Host,
        Kind::Method => Attribute::Method,
        Kind::Path => Attribute::Path,
        Kind::Port => Attribute::DestinationPort,
        Kind::Sni => Attribute::Sni,
        // Headers carry their name; `when` builds those itself.
        Kind::Header => Attribute::Header(String::new()),
    };
    Condition {
        attribute,
        negated,
        matchers,
    }
}

fn is_empty_map(node: &Node<'_>) -> bool {
    matches!(&node.data, YamlData::Mapping(m) if m.is_empty())
}

/// `request.auth.claims[a][b]` -> `["a", "b"]` (each segment non-empty, no brackets inside).
fn claim_path(key: &str) -> Option<Vec<String>> {
    let mut rest = key.strip_prefix("request.auth.claims")?;
    let mut path = Vec::new();
    while !rest.is_empty() {
        let inner = rest.strip_prefix('[')?;
        let end = inner.find(']')?;
        let segment = &inner[..end];
        if segment.is_empty() || segment.contains('[') {
            return None;
        }
        path.push(segment.to_owned());
        rest = &inner[end + 1..];
    }
    (!path.is_empty()).then_some(path)
}

/// `prefix[NAME]` -> NAME (non-empty, no brackets inside).
fn bracketed<'k>(key: &'k str, prefix: &str) -> Option<&'k str> {
    let name = key.strip_prefix(prefix)?.strip_prefix('[')?.strip_suffix(']')?;
    (!name.is_empty() && !name.contains(['[', ']'])).then_some(name)
}

/// Envoy's URI template rules as istiod validates them: braces only as whole `{*}` / `{**}`
/// segments, nothing templated after `{**}`.
fn check_template(path: &str) -> Result<(), &'static str> {
    let mut seen_double = false;
    for seg in path.split('/') {
        match seg {
            "{*}" | "{**}" if seen_double => return Err("no `{*}` or `{**}` may follow `{**}`"),
            "{**}" => seen_double = true,
            "{*}" => {}
            s if s.contains(['{', '}']) => return Err("`{` and `}` only as a whole `{*}` or `{**}` segment"),
            _ => {}
        }
    }
    Ok(())
}
