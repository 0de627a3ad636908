//! Reading `x-forwarded-client-cert` as Envoy writes it: elements separated by `,`, each a list
//! of `key=value` pairs separated by `;`, values optionally in double quotes with `\"` escapes
//! (`Subject="CN=a,O=b"`, `Cert="-----BEGIN%20CERTIFICATE-----..."`).
//!
//! The native build needs this because Envoy's dynamic-module ABI gives an HTTP filter only the
//! peer's first URI SAN, not its certificate: the HCM puts the certificate in this hop's element
//! (`set_current_client_cert_details: {cert: true}`), and the filter accepts it only if its
//! SHA-256 is the connection's own peer-certificate digest.

/// The pairs of the last element (this hop's, when the HCM appends or sets it).
pub fn last_element(header: &str) -> Vec<(String, String)> {
    let mut elements = split_unquoted(header, b',');
    let last = elements.pop().unwrap_or_default();
    split_unquoted(&last, b';')
        .into_iter()
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            Some((k.trim().to_owned(), unquote(v.trim())))
        })
        .collect()
}

/// The header without its last element (the previous hops' elements), `,`-joined.
pub fn without_last_element(header: &str) -> String {
    let mut elements = split_unquoted(header, b',');
    elements.pop();
    elements.join(",")
}

/// Splits on `sep` outside double quotes (a `\` escapes the next character inside them).
fn split_unquoted(s: &str, sep: u8) -> Vec<String> {
    let mut parts = Vec::new();
    let mut current = Vec::new();
    let (mut quoted, mut escaped) = (false, false);
    for &b in s.as_bytes() {
        match b {
            _ if escaped => escaped = false,
            b'\\' if quoted => escaped = true,
            b'"' => quoted = !quoted,
            _ if b == sep && !quoted => {
                parts.push(String::from_utf8_lossy(&current).into_owned());
                current.clear();
                continue;
            }
            _ => {}
        }
        current.push(b);
    }
    parts.push(String::from_utf8_lossy(&current).into_owned());
    parts
}

fn unquote(v: &str) -> String {
    let Some(inner) = v.strip_prefix('"').and_then(|v| v.strip_suffix('"')) else {
        return v.to_owned();
    };
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            out.extend(chars.next());
        } else {
            out.push(c);
        }
    }
    out
}

/// The `Cert` of the last element, URL-decoded: this hop's peer certificate as PEM.
pub fn certificate(header: &str) -> Option<Vec<u8>> {
    let pairs = last_element(header);
    let (_, cert) = pairs.iter().find(|(k, _)| k.eq_ignore_ascii_case("Cert"))?;
    Some(percent_decode(cert.as_bytes()))
}

/// `%XX` sequences decoded; anything else kept as it is.
pub fn percent_decode(bytes: &[u8]) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let decoded = match (
            b,
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(hi), Some(lo)) => Some((hi * 16 + lo) as u8),
            _ => None,
        };
        match decoded {
            Some(d) => {
                out.push(d);
                i += 3;
            }
            None => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envoy_elements() {
        let h = r#"By=spiffe://a;Hash=ab;Subject="CN=x, \"q\";O=y",By=spiffe://b;Hash=cd;Cert="-----BEGIN%20CERT%0Aabc";URI=spiffe://c"#;
        let last = last_element(h);
        assert_eq!(
            last,
            vec![
                ("By".to_owned(), "spiffe://b".to_owned()),
                ("Hash".to_owned(), "cd".to_owned()),
                ("Cert".to_owned(), "-----BEGIN%20CERT%0Aabc".to_owned()),
                ("URI".to_owned(), "spiffe://c".to_owned()),
            ]
        );
        assert_eq!(certificate(h).as_deref(), Some(&b"-----BEGIN CERT\nabc"[..]));
        let first = last_element(r#"By=spiffe://a;Subject="CN=x, \"q\";O=y""#);
        assert_eq!(first[1], ("Subject".to_owned(), "CN=x, \"q\";O=y".to_owned()));
        assert_eq!(certificate("By=x;Hash=y"), None);
        assert_eq!(
            without_last_element(h),
            r#"By=spiffe://a;Hash=ab;Subject="CN=x, \"q\";O=y""#
        );
        assert_eq!(without_last_element("By=x"), "");
        assert_eq!(certificate(""), None);
    }
}
