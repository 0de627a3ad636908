//! Value checks that need more than a type: HTTP method tokens, CIDRs, and the regex dialect of
//! `httpHeaderMatch`. (SPIFFE IDs are checked by `meshauthz_table::spiffe`, shared with the filter.)

use std::net::IpAddr;

use meshauthz_table::{IpNet, Pattern};

/// An HTTP method is a token (RFC 9110 `tchar`s).
pub fn is_http_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

pub const STANDARD_METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

/// Parses `ADDR` or `ADDR/LEN`. Returns the network and whether host bits had to be cleared.
pub fn ip_block(text: &str) -> Result<(IpNet, bool), String> {
    let (addr, len) = match text.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (text, None),
    };
    let ip: IpAddr = addr
        .parse()
        .map_err(|_| format!("`{addr}` is not an IPv4 or IPv6 address"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = match len {
        None => max,
        Some(l) => match l.parse::<u8>() {
            Ok(n) if n <= max && !l.starts_with('+') => n,
            _ => return Err(format!("prefix length `/{l}` is not in 0..={max}")),
        },
    };
    let net = IpNet::new(ip, len).ok_or_else(|| format!("prefix length /{len} is too long"))?;
    Ok((net, net.addr() != ip))
}

/// For an IPv4-mapped IPv6 block (`::ffff:a.b.c.d/len`, len >= 96), the IPv4 block it means.
pub fn ipv4_mapped(net: &IpNet) -> Option<IpNet> {
    let IpAddr::V6(v6) = net.addr() else {
        return None;
    };
    let v4 = v6.to_ipv4_mapped()?;
    (net.prefix_len() >= 96).then(|| IpNet::new(IpAddr::V4(v4), net.prefix_len() - 96))?
}

/// What a principal prefix or suffix pattern matches beyond what it seems to say, if anything:
/// a prefix must end at a `/` after the trust domain, and a suffix cannot pin a trust domain.
pub fn principal_pattern_trap(pattern: &Pattern) -> Option<String> {
    match pattern {
        Pattern::Prefix(p) => {
            let rest = p.strip_prefix("spiffe://")?;
            match rest.find('/') {
                None => Some(format!(
                    "cuts the trust domain: it also matches `{p}-other/...` and every trust domain starting \
                     `{rest}`; end it with `/` (`{p}/*`)"
                )),
                Some(_) if !p.ends_with('/') => Some(format!(
                    "cuts a path segment: it also matches `{p}-other` and `{p}x/...`; end it at a `/`"
                )),
                Some(_) => None,
            }
        }
        Pattern::Suffix(s) if s.starts_with('/') => Some(format!(
            "matches principals in every trust domain (`spiffe://any-domain/...{s}`); list the trust domains \
             as exact IDs or prefixes"
        )),
        Pattern::Suffix(s) => Some(format!(
            "matches principals in every trust domain and cuts a path segment (`.../x{s}` matches too); \
             start it with `/`"
        )),
        _ => None,
    }
}

/// Names an ECMAScript regex construct the `regex` engine does not have, if the pattern uses one.
pub fn unsupported_regex_construct(re: &str) -> Option<&'static str> {
    let b = re.as_bytes();
    let mut i = 0;
    let mut in_class = false;
    while i < b.len() {
        match b[i] {
            b'\\' => {
                match b.get(i + 1) {
                    Some(b'1'..=b'9') if !in_class => return Some("backreference (`\\N`)"),
                    Some(b'k') if b.get(i + 2) == Some(&b'<') => {
                        return Some("named backreference (`\\k<name>`)");
                    }
                    _ => {}
                }
                i += 2;
                continue;
            }
            b'[' if !in_class => in_class = true,
            b']' if in_class => in_class = false,
            b'(' if !in_class && b.get(i + 1) == Some(&b'?') => match (b.get(i + 2), b.get(i + 3)) {
                (Some(b'='), _) => return Some("lookahead (`(?=...)`)"),
                (Some(b'!'), _) => return Some("negative lookahead (`(?!...)`)"),
                (Some(b'<'), Some(b'=')) => return Some("lookbehind (`(?<=...)`)"),
                (Some(b'<'), Some(b'!')) => return Some("negative lookbehind (`(?<!...)`)"),
                _ => {}
            },
            _ => {}
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_blocks() {
        assert!(ip_block("10.0.0.0/8").is_ok());
        assert!(ip_block("2001:db8::/32").is_ok());
        assert_eq!(
            ip_block("10.1.2.3/8").map(|(n, fixed)| (n.to_string(), fixed)),
            Ok(("10.0.0.0/8".into(), true))
        );
        for bad in ["10.0.0.0/33", "300.1.1.1", "10.0.0.0/-1", "10.0.0.0/", "::/129", "x"] {
            assert!(ip_block(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn traps() {
        let (mapped, _) = ip_block("::ffff:10.0.0.0/104").expect("parses");
        assert_eq!(ipv4_mapped(&mapped).map(|n| n.to_string()), Some("10.0.0.0/8".into()));
        assert_eq!(ipv4_mapped(&ip_block("2001:db8::/32").expect("parses").0), None);
        let trap = |p: &str| principal_pattern_trap(&Pattern::parse(p).expect("pattern"));
        assert!(trap("spiffe://td*").is_some_and(|t| t.contains("trust domain")));
        assert!(trap("spiffe://td/ns/prod*").is_some_and(|t| t.contains("path segment")));
        assert!(trap("*/sa/admin").is_some_and(|t| t.contains("every trust domain")));
        assert!(trap("*admin").is_some_and(|t| t.contains("path segment")));
        assert_eq!(trap("spiffe://td/ns/prod/*"), None);
        assert_eq!(trap("spiffe://td/ns/prod/sa/x"), None);
    }

    #[test]
    fn regex_dialect() {
        assert_eq!(unsupported_regex_construct("a(?=b)"), Some("lookahead (`(?=...)`)"));
        assert_eq!(
            unsupported_regex_construct("(?<!a)b"),
            Some("negative lookbehind (`(?<!...)`)")
        );
        assert_eq!(unsupported_regex_construct(r"(a)\1"), Some("backreference (`\\N`)"));
        assert_eq!(
            unsupported_regex_construct(r"(?<n>a)\k<n>"),
            Some("named backreference (`\\k<name>`)")
        );
        assert_eq!(unsupported_regex_construct(r"(?<n>a)[\1]|\\1"), None);
        assert_eq!(unsupported_regex_construct("prod|staging"), None);
    }
}
