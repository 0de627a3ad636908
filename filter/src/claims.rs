//! JWT claims as the host hands them over (jwt_authn's `payload` metadata, read by property
//! path): a string, or a list in the proxy-wasm pairs serialization.

use std::borrow::Cow;

/// A JWT claim as the host returned it: a string's bytes, or a list in the pairs
/// serialization (each element a name with an empty value). Anything else (a number, a
/// boolean, bytes that are not UTF-8) matches no string matcher, as in Envoy's metadata
/// matcher.
pub(crate) enum ClaimValue<'a> {
    Absent,
    Str(Cow<'a, str>),
    List(crate::pairs::Pairs<'a>),
}

impl<'a> ClaimValue<'a> {
    pub(crate) fn read(bytes: Option<&'a [u8]>) -> ClaimValue<'a> {
        let Some(b) = bytes else { return ClaimValue::Absent };
        // A list's serialization is a whole, valid pairs buffer with empty values; a JSON
        // string's bytes cannot be one (its first four bytes would have to count its pairs).
        if let Some(p) = crate::pairs::Pairs::parse(b).filter(|p| p.iter().all(|(_, v)| v.is_empty())) {
            return ClaimValue::List(p);
        }
        match std::str::from_utf8(b) {
            Ok(s) => ClaimValue::Str(Cow::Borrowed(s)),
            Err(_) => ClaimValue::Absent,
        }
    }

    pub(crate) fn list(&self) -> Vec<&str> {
        match self {
            ClaimValue::List(p) => p.iter().filter_map(|(k, _)| std::str::from_utf8(k).ok()).collect(),
            _ => Vec::new(),
        }
    }
}
