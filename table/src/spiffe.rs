//! The SPIFFE ID rules (SPIFFE spec, "SPIFFE-ID"), shared by the compiler (for principals in
//! policies) and the filter (for the URI SAN of a peer's X.509-SVID).

/// Checks an exact `spiffe://` principal against the SPIFFE ID rules.
pub fn validate(id: &str) -> Result<(), String> {
    let Some(rest) = id.strip_prefix("spiffe://") else {
        return Err("a SPIFFE ID starts with `spiffe://` (lowercase)".into());
    };
    if id.len() > 2048 {
        return Err("a SPIFFE ID is at most 2048 bytes".into());
    }
    if id.contains('%') {
        return Err("percent-encoding is not allowed in a SPIFFE ID".into());
    }
    if id.contains('?') || id.contains('#') {
        return Err("a SPIFFE ID has no query or fragment".into());
    }
    let (domain, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    if domain.is_empty() {
        return Err("the trust domain is empty".into());
    }
    if domain.contains('@') {
        return Err("the trust domain may not contain userinfo (`@`)".into());
    }
    if domain.contains(':') {
        return Err("the trust domain may not contain a port".into());
    }
    if let Some(c) = domain
        .chars()
        .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '.' | '-' | '_'))
    {
        return Err(if c.is_ascii_uppercase() {
            format!("the trust domain must be lowercase (found `{c}`)")
        } else {
            format!("the trust domain may contain only [a-z0-9._-] (found `{c}`)")
        });
    }
    if path.is_empty() {
        return Ok(());
    }
    if path.ends_with('/') {
        return Err("a SPIFFE ID path may not end with `/`".into());
    }
    for segment in path[1..].split('/') {
        match segment {
            "" => return Err("a SPIFFE ID path may not contain an empty segment (`//`)".into()),
            "." | ".." => {
                return Err(format!("a SPIFFE ID path may not contain a `{segment}` segment"));
            }
            _ => {}
        }
        if let Some(c) = segment
            .chars()
            .find(|c| !matches!(c, 'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '-' | '_'))
        {
            return Err(format!(
                "a SPIFFE ID path may contain only [A-Za-z0-9._-] (found `{c}`)"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spiffe_rules() {
        assert!(validate("spiffe://p.svc.id.goog/ns/default/sa/client").is_ok());
        assert!(validate("spiffe://td").is_ok());
        for bad in [
            "spiffe://",
            "spiffe:///ns",
            "spiffe://TD/ns",
            "spiffe://td:443/ns",
            "spiffe://user@td/ns",
            "spiffe://td/ns/?x",
            "spiffe://td/ns#f",
            "spiffe://td/ns//sa",
            "spiffe://td/ns/./sa",
            "spiffe://td/ns/../sa",
            "spiffe://td/ns/",
            "spiffe://td/ns/%41",
        ] {
            assert!(validate(bad).is_err(), "{bad}");
        }
    }
}
