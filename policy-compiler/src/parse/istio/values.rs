//! Istio's value forms, turned into the table's matchers exactly as istiod turns them into
//! Envoy RBAC matchers (`../shared/istio/semantics.md` §2, §3): `*`, `p*`, `*s`, exact; the
//! `spiffe://` prefix on principals; namespace and service-account regexes; trust-domain
//! rewriting. Pure functions, so each rule is tested on its own.

use meshauthz_table::{Matcher, Pattern};

/// The trust domains a workload accepts: its own first, then its aliases.
#[derive(Clone, Debug)]
pub struct TrustBundle(pub Vec<String>);

/// A plain string field's value (`hosts`, `methods`, `paths`, header values, SNI): `*` is
/// `any`, a leading `*` a suffix, a trailing one a prefix; a `*` anywhere else is literal.
/// `star` is what a lone `*` means for this field (present for headers, non-empty for SNI).
pub fn string_matcher(value: &str, star: Matcher) -> Matcher {
    if value == "*" {
        star
    } else if let Some(s) = value.strip_prefix('*') {
        Matcher::Suffix(s.to_owned())
    } else if let Some(p) = value.strip_suffix('*') {
        Matcher::Prefix(p.to_owned())
    } else {
        Matcher::Exact(value.to_owned())
    }
}

/// The same forms as an indexable pattern (hosts), or `None` where a matcher is needed.
pub fn host_pattern(value: &str) -> Pattern {
    match string_matcher(value, Matcher::Present) {
        Matcher::Suffix(s) if !s.is_empty() => Pattern::Suffix(s),
        Matcher::Prefix(p) if !p.is_empty() => Pattern::Prefix(p),
        Matcher::Exact(e) if !e.is_empty() => Pattern::Exact(e),
        _ => Pattern::Any,
    }
}

/// A principal value (after the trust-domain rewrite) as istiod matches it: exact and prefix
/// get `spiffe://` in front; `*s` is the regex `spiffe://.*s`; `*` is `.+`.
pub fn principal_matcher(value: &str) -> Matcher {
    if value == "*" {
        return Matcher::NonEmpty;
    }
    match value.strip_prefix('*') {
        Some(suffix) => {
            // `spiffe://.*s` is "ends with s" only if s cannot overlap the scheme; a suffix
            // that starts with a tail of `spiffe://` (`/x`, `:...`) keeps the exact regex.
            let scheme = "spiffe://";
            let overlaps = (1..scheme.len()).any(|k| suffix.starts_with(&scheme[scheme.len() - k..]));
            if overlaps {
                Matcher::Regex(format!("spiffe://.*{}", regex::escape(suffix)))
            } else {
                Matcher::Suffix(suffix.to_owned())
            }
        }
        None => match value.strip_suffix('*') {
            Some(prefix) => Matcher::Prefix(format!("spiffe://{prefix}")),
            None => Matcher::Exact(format!("spiffe://{value}")),
        },
    }
}

/// A `requestPrincipals` / `request.auth.principal` value as istiod matches it: split at the
/// last `/` into issuer and subject; `*` anywhere at the ends widens the side it stands on.
pub fn request_principal_matcher(value: &str) -> Matcher {
    let any = || Box::new(Matcher::NonEmpty);
    let exact = |s: &str| Box::new(Matcher::Exact(s.to_owned()));
    let pair = |iss: Box<Matcher>, sub: Box<Matcher>| Matcher::IssuerSubject(iss, sub);
    if value == "*" {
        return pair(any(), any());
    }
    if let Some(rest) = value.strip_prefix('*') {
        return match rest.rsplit_once('/') {
            // `*iss/sub`: the issuer ends with `iss` (any issuer for `*/sub`), the subject exact.
            Some(("", sub)) => pair(any(), exact(sub)),
            Some((iss, sub)) => pair(Box::new(Matcher::Suffix(iss.to_owned())), exact(sub)),
            None => pair(any(), Box::new(Matcher::Suffix(rest.to_owned()))),
        };
    }
    if let Some(rest) = value.strip_suffix('*') {
        return match rest.rsplit_once('/') {
            Some((iss, "")) => pair(exact(iss), any()),
            Some((iss, sub)) => pair(exact(iss), Box::new(Matcher::Prefix(sub.to_owned()))),
            None => pair(Box::new(Matcher::Prefix(rest.to_owned())), any()),
        };
    }
    match value.rsplit_once('/') {
        Some((iss, sub)) => pair(exact(iss), exact(sub)),
        // No `/`: the issuer, and a subject that is present and empty.
        None => pair(exact(value), exact("")),
    }
}

/// The indexable form of a principal matcher, where there is one.
pub fn principal_pattern(m: &Matcher) -> Option<Pattern> {
    match m {
        Matcher::Exact(s) => Some(Pattern::Exact(s.clone())),
        Matcher::Prefix(s) => Some(Pattern::Prefix(s.clone())),
        Matcher::Suffix(s) => Some(Pattern::Suffix(s.clone())),
        _ => None,
    }
}

/// `namespaces` / `source.namespace`: `.*/ns/<ns>/.*`, each `*` in the value a `.*`. Without
/// a `*` that is "contains `/ns/<ns>/`", which the table indexes.
pub fn namespace_matcher(value: &str) -> Matcher {
    if !value.contains('*') {
        return Matcher::Contains(format!("/ns/{value}/"));
    }
    let ns: Vec<String> = value.split('*').map(regex::escape).collect();
    Matcher::Regex(format!(".*/ns/{}/.*", ns.join(".*")))
}

/// `serviceAccounts` / `source.serviceAccount`: `ns/sa`, or `sa` in the policy's namespace.
pub fn service_account_matcher(value: &str, policy_namespace: &str) -> Matcher {
    let (ns, sa) = value.split_once('/').unwrap_or((policy_namespace, value));
    Matcher::Regex(format!(
        "spiffe://.+/ns/{}/(.+/|)sa/{}(/.+)?",
        regex::escape(ns),
        regex::escape(sa)
    ))
}

/// `trustDomains`: `*` any SPIFFE ID, an exact domain its IDs, one `*` a pattern of domains.
pub fn trust_domain_matcher(value: &str) -> Matcher {
    if value == "*" {
        return Matcher::Prefix("spiffe://".into());
    }
    match value.split_once('*') {
        None => Matcher::Prefix(format!("spiffe://{value}/")),
        Some((pre, suf)) => Matcher::Regex(format!("spiffe://{}[^/]*{}/.*", regex::escape(pre), regex::escape(suf))),
    }
}

/// Whether a trust-domain value (possibly `*x` or `x*`) matches a concrete domain.
fn td_matches(td: &str, domain: &str) -> bool {
    if let Some(s) = td.strip_prefix('*') {
        domain.ends_with(s)
    } else if let Some(p) = td.strip_suffix('*') {
        domain.starts_with(p)
    } else {
        td == domain
    }
}

/// The trust-domain rewrite of a principal value: `td/ns/N/sa/S` whose domain is one of the
/// bundle's (or `cluster.local`, which names the local domain) becomes one value per bundle
/// entry; a wildcard domain stays as written where it matches that entry. Anything else is
/// kept.
pub fn rewrite_principal(value: &str, bundle: &TrustBundle) -> Vec<String> {
    let segments: Vec<&str> = value.split('/').collect();
    if segments.len() != 5 || segments[0] == "*" {
        return vec![value.to_owned()];
    }
    let td = segments[0];
    let rest = &value[td.len()..];
    let known = td == "cluster.local" || bundle.0.iter().any(|d| td_matches(td, d));
    if !known {
        return vec![value.to_owned()];
    }
    let mut out: Vec<String> = Vec::new();
    for domain in &bundle.0 {
        let v = if td_matches(td, domain) && td != "cluster.local" || td == domain {
            value.to_owned()
        } else {
            format!("{domain}{rest}")
        };
        if !out.contains(&v) {
            out.push(v);
        }
    }
    out
}

/// `trustDomains` values equal to a bundle entry stand for the whole bundle.
pub fn expand_trust_domain(value: &str, bundle: &TrustBundle) -> Vec<String> {
    if bundle.0.iter().any(|d| d == value) {
        bundle.0.clone()
    } else {
        vec![value.to_owned()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle(d: &[&str]) -> TrustBundle {
        TrustBundle(d.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn principals_get_the_scheme_as_istiod_writes_them() {
        assert_eq!(principal_matcher("deny"), Matcher::Exact("spiffe://deny".into()));
        assert_eq!(principal_matcher("p-*"), Matcher::Prefix("spiffe://p-".into()));
        assert_eq!(principal_matcher("*-s"), Matcher::Suffix("-s".into()));
        assert_eq!(principal_matcher("*"), Matcher::NonEmpty);
        assert_eq!(
            principal_matcher("*/ns/foo/sa/x"),
            Matcher::Regex(r"spiffe://.*/ns/foo/sa/x".into())
        );
    }

    #[test]
    fn trust_domains_rewrite_like_the_golden_cases() {
        let b = bundle(&["td1", "cluster.local"]);
        assert_eq!(
            rewrite_principal("cluster.local/ns/a/sa/b", &b),
            ["td1/ns/a/sa/b", "cluster.local/ns/a/sa/b"]
        );
        assert_eq!(
            rewrite_principal("cluster.local/ns/a/sa/b", &bundle(&["td1"])),
            ["td1/ns/a/sa/b"]
        );
        assert_eq!(
            rewrite_principal("*bar/ns/a/sa/b", &bundle(&["td1", "foobar"])),
            ["td1/ns/a/sa/b", "*bar/ns/a/sa/b"]
        );
        assert_eq!(rewrite_principal("other/ns/a/sa/b", &b), ["other/ns/a/sa/b"]);
        assert_eq!(rewrite_principal("*/ns/a/sa/b", &b), ["*/ns/a/sa/b"]);
        assert_eq!(rewrite_principal("td1/ns/a", &b), ["td1/ns/a"]);
    }

    #[test]
    fn request_principals_split_at_the_last_slash() {
        let pair = |i: Matcher, s: Matcher| Matcher::IssuerSubject(Box::new(i), Box::new(s));
        let exact = |s: &str| Matcher::Exact(s.into());
        assert_eq!(
            request_principal_matcher("https://iss.example/sub/1"),
            pair(exact("https://iss.example/sub"), exact("1"))
        );
        assert_eq!(request_principal_matcher("iss"), pair(exact("iss"), exact("")));
        assert_eq!(
            request_principal_matcher("*"),
            pair(Matcher::NonEmpty, Matcher::NonEmpty)
        );
        assert_eq!(
            request_principal_matcher("https://iss.example/*"),
            pair(exact("https://iss.example"), Matcher::NonEmpty)
        );
        assert_eq!(
            request_principal_matcher("*.example/alice"),
            pair(Matcher::Suffix(".example".into()), exact("alice"))
        );
        assert_eq!(
            request_principal_matcher("*/alice"),
            pair(Matcher::NonEmpty, exact("alice"))
        );
        assert_eq!(
            request_principal_matcher("*-bob"),
            pair(Matcher::NonEmpty, Matcher::Suffix("-bob".into()))
        );
        assert_eq!(
            request_principal_matcher("iss-*"),
            pair(Matcher::Prefix("iss-".into()), Matcher::NonEmpty)
        );
    }

    #[test]
    fn namespace_and_service_account_regexes() {
        assert_eq!(namespace_matcher("a*b"), Matcher::Regex(".*/ns/a.*b/.*".into()));
        assert_eq!(namespace_matcher("foo"), Matcher::Contains("/ns/foo/".into()));
        assert_eq!(
            service_account_matcher("sa", "foo"),
            Matcher::Regex("spiffe://.+/ns/foo/(.+/|)sa/sa(/.+)?".into())
        );
        assert_eq!(trust_domain_matcher("td"), Matcher::Prefix("spiffe://td/".into()));
    }
}
