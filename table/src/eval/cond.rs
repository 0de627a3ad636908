//! Conditions (format 2): the tests a clause makes beyond its indexed fields, such as Istio's
//! not-lists, namespaces, paths, SNI and destination address. They are checked only on the
//! clauses the index already found, so they never change what the index looks up; a clause's
//! conditions are ANDed.

use std::net::IpAddr;

use super::clause::{Cidr, Ctx, HeaderSlot, Lit, Pool, Span};
use crate::request::Claim;

/// Where a condition finds its value.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Slot {
    Principal,
    /// The lowercased host.
    Host,
    Method,
    /// A header's values; for `:path` only the part before `?` or `#`.
    Header(HeaderSlot, bool),
    Sni,
    SourceIp,
    DestinationIp,
    DestinationPort,
    RemoteIp,
    /// Index into the table's claim paths.
    Claim(u32),
    /// The `iss` and `sub` claims' indexes.
    RequestPrincipal(u32, u32),
}

/// One compiled matcher.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Check {
    Present,
    NonEmpty,
    Lit(Lit),
    Regex(u32),
    Net(Cidr),
    Port(u16),
    /// Index of an (issuer, subject) pair of checks in the pool.
    IssuerSubject(u32),
}

/// One compiled condition: holds when some check matches (or, negated, none does).
#[derive(Clone, Copy, Debug)]
pub(crate) struct CondCheck {
    pub slot: Slot,
    pub negated: bool,
    pub checks: Span,
    /// In a DENY policy a positive header condition also holds when any single value of a
    /// repeated header matches (the trust rule for `httpHeaderMatch`), and a positive path
    /// condition also holds on the path percent-decoded, with repeated slashes merged, or both,
    /// so `/%61dmin` or `//admin` cannot dodge a DENY of `/admin` behind a backend that
    /// decodes or merges.
    pub any_value: bool,
}

impl CondCheck {
    #[inline]
    pub fn matches(&self, ctx: &Ctx<'_>, pool: &Pool) -> bool {
        self.any_check(ctx, pool) != self.negated
    }

    fn any_check(&self, ctx: &Ctx<'_>, pool: &Pool) -> bool {
        let checks = pool.checks(self.checks);
        let text = |v: &[u8]| checks.iter().any(|c| text_matches(*c, v, pool));
        match self.slot {
            Slot::Principal => ctx.req.principal.is_some_and(|p| text(p.as_bytes())),
            Slot::Host => text(ctx.host),
            Slot::Method => text(ctx.req.method.as_bytes()),
            // Envoy reports an absent SNI as the empty string.
            Slot::Sni => text(ctx.req.sni.unwrap_or("").as_bytes()),
            Slot::Header(slot, is_path) => {
                let values: &[&str] = match slot {
                    HeaderSlot::Authority => std::slice::from_ref(&ctx.req.authority),
                    HeaderSlot::Method => std::slice::from_ref(&ctx.req.method),
                    HeaderSlot::Named(i) => ctx.req.headers.get(i as usize).copied().unwrap_or(&[]),
                };
                match values {
                    [] => false,
                    [one] if is_path => {
                        let path = path_only(one);
                        text(path.as_bytes()) || (self.any_value && deny_variants(path.as_bytes(), &text))
                    }
                    [one] => text(one.as_bytes()),
                    many => {
                        (self.any_value && many.iter().any(|v| text(v.as_bytes()))) || text(many.join(",").as_bytes())
                    }
                }
            }
            Slot::SourceIp => ctx
                .source_ip
                .is_some_and(|ip| checks.iter().any(|c| net_matches(*c, ip))),
            Slot::DestinationIp => ctx
                .req
                .destination_ip
                .map(crate::spec::canonical_ip)
                .is_some_and(|ip| checks.iter().any(|c| net_matches(*c, ip))),
            Slot::Claim(i) => match ctx.req.claims.get(i as usize) {
                Some(Claim::Str(s)) => text(s.as_bytes()),
                Some(Claim::List(items)) => items.iter().any(|s| text(s.as_bytes())),
                _ => false,
            },
            Slot::RequestPrincipal(iss, sub) => {
                let string = |i: u32| match ctx.req.claims.get(i as usize) {
                    Some(Claim::Str(s)) => Some(s.as_bytes()),
                    _ => None,
                };
                let (Some(iss), Some(sub)) = (string(iss), string(sub)) else {
                    return false;
                };
                checks.iter().any(|c| match c {
                    Check::IssuerSubject(p) => pool
                        .pair(*p)
                        .is_some_and(|(ci, cs)| text_matches(ci, iss, pool) && text_matches(cs, sub, pool)),
                    _ => false,
                })
            }
            Slot::RemoteIp => ctx
                .req
                .remote_ip
                .map(crate::spec::canonical_ip)
                .is_some_and(|ip| checks.iter().any(|c| net_matches(*c, ip))),
            Slot::DestinationPort => {
                let port = ctx.port();
                checks.iter().any(|c| matches!(c, Check::Port(p) if *p == port))
            }
        }
    }
}

/// Whether `test` holds on the path percent-decoded, slash-merged, or both (the raw path is
/// tested by the caller). Costs nothing for a path with neither `%` nor `//`.
fn deny_variants(path: &[u8], test: &dyn Fn(&[u8]) -> bool) -> bool {
    let decoded = percent_decoded(path);
    let base = decoded.as_deref().unwrap_or(path);
    decoded.as_deref().is_some_and(test) || merged_slashes(base).is_some_and(|m| test(&m)) || {
        // `%2F%2F` decodes into `//`; a raw `//` next to an encoded one is covered above.
        decoded.is_some() && merged_slashes(path).is_some_and(|m| test(&m))
    }
}

/// The path with runs of `/` made one; `None` when it has none.
fn merged_slashes(path: &[u8]) -> Option<Vec<u8>> {
    if !path.windows(2).any(|w| w == b"//") {
        return None;
    }
    let mut out = Vec::with_capacity(path.len());
    for &c in path {
        if !(c == b'/' && out.last() == Some(&b'/')) {
            out.push(c);
        }
    }
    Some(out)
}

/// The path with every `%XX` decoded; `None` when it has none.
fn percent_decoded(b: &[u8]) -> Option<Vec<u8>> {
    if !b.contains(&b'%') {
        return None;
    }
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push(h << 4 | l);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    Some(out)
}

/// The path a `url_path` matcher sees: without the query and the fragment.
fn path_only(path: &str) -> &str {
    path.split(['?', '#']).next().unwrap_or("")
}

#[inline]
fn text_matches(check: Check, v: &[u8], pool: &Pool) -> bool {
    match check {
        Check::Present => true,
        Check::NonEmpty => !v.is_empty(),
        Check::Lit(l) => pool.lit_matches(l, v),
        Check::Regex(id) => pool
            .regexes
            .get(id as usize)
            .is_some_and(|re| std::str::from_utf8(v).is_ok_and(|s| re.is_match(s))),
        Check::Net(_) | Check::Port(_) | Check::IssuerSubject(_) => false,
    }
}

#[inline]
fn net_matches(check: Check, ip: IpAddr) -> bool {
    matches!(check, Check::Net(n) if n.matches(ip))
}

/// A path template as an anchored-by-the-builder regex: `{*}` is one non-empty segment,
/// `{**}` any number of characters that may include `/` (so any number of segments, none
/// included), everything else literal. `None` if a brace stands anywhere but as a whole
/// `{*}`/`{**}` segment.
pub(crate) fn template_regex(template: &str) -> Option<String> {
    const PCHAR: &str = r"[A-Za-z0-9\-._~!$&'()*+,;=:@%]";
    let mut out = String::new();
    for (i, segment) in template.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        match segment {
            "{*}" => out.push_str(&format!("{PCHAR}+")),
            "{**}" => out.push_str(&format!("(?:{PCHAR}|/)*")),
            s if s.contains(['{', '}']) => return None,
            s => out.push_str(&regex_syntax::escape(s)),
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full(re: &str, s: &str) -> bool {
        regex::Regex::new(&format!("^(?:{re})$")).unwrap().is_match(s)
    }

    #[test]
    fn templates_match_segments_as_envoy_uri_template_does() {
        let one = template_regex("/foo/{*}/bar").unwrap();
        assert!(full(&one, "/foo/x/bar"));
        assert!(!full(&one, "/foo//bar"));
        assert!(!full(&one, "/foo/x/y/bar"));
        let many = template_regex("/foo/{**}/bar").unwrap();
        assert!(full(&many, "/foo/x/y/bar"));
        assert!(full(&many, "/foo//bar"));
        let tail = template_regex("/foo/{**}").unwrap();
        assert!(full(&tail, "/foo/"));
        assert!(full(&tail, "/foo/a/b.c"));
        assert!(!full(&tail, "/foo"));
        assert!(!full(&template_regex("/a.b").unwrap(), "/aXb"));
        assert_eq!(template_regex("/x{*}"), None);
        assert_eq!(template_regex("/{a}"), None);
    }

    #[test]
    fn percent_decoding_for_deny_paths() {
        assert_eq!(percent_decoded(b"/%61dmin").as_deref(), Some(&b"/admin"[..]));
        assert_eq!(percent_decoded(b"/a%2Fb%zz%4").as_deref(), Some(&b"/a/b%zz%4"[..]));
        assert_eq!(percent_decoded(b"/plain"), None);
        assert_eq!(merged_slashes(b"//a///b/").as_deref(), Some(&b"/a/b/"[..]));
        assert_eq!(merged_slashes(b"/a/b"), None);
        let is_admin = |p: &[u8]| p == b"/admin";
        assert!(deny_variants(b"//admin", &is_admin));
        assert!(deny_variants(b"/%2F%61dmin", &is_admin));
        assert!(!deny_variants(b"/public", &is_admin));
    }

    #[test]
    fn path_loses_query_and_fragment() {
        assert_eq!(path_only("/a?b#c"), "/a");
        assert_eq!(path_only("/a#b?c"), "/a");
        assert_eq!(path_only("/a"), "/a");
    }
}
