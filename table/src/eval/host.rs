//! Host normalization: what a `hosts` pattern is compared against.

use std::borrow::Cow;

/// Hosts up to this length are lowercased on the stack.
pub const MAX_HOST_STACK: usize = 255;

/// Lowercases, drops a `:port` (also after `[v6]`), and drops one trailing dot. Returns the
/// normalized bytes: borrowed when nothing changes, in `buf` when they fit, else on the heap
/// (only for hosts longer than 255 bytes that need lowercasing).
pub fn normalize_host<'b>(raw: &'b str, buf: &'b mut [u8; MAX_HOST_STACK]) -> Cow<'b, [u8]> {
    let mut host = raw.as_bytes();
    let port_start = if host.first() == Some(&b'[') {
        host.iter()
            .position(|&b| b == b']')
            .map(|i| i + 1)
            .filter(|&i| host.get(i) == Some(&b':'))
    } else {
        match host.iter().rposition(|&b| b == b':') {
            // A second colon means a bare IPv6 address, not a port.
            Some(i) if !host[..i].contains(&b':') => Some(i),
            _ => None,
        }
    };
    if let Some(i) = port_start {
        let port = &host[i + 1..];
        if !port.is_empty() && port.iter().all(u8::is_ascii_digit) {
            host = &host[..i];
        }
    }
    if let Some(stripped) = host.strip_suffix(b".") {
        host = stripped;
    }
    if !host.iter().any(u8::is_ascii_uppercase) {
        return Cow::Borrowed(host);
    }
    match buf.get_mut(..host.len()) {
        Some(out) => {
            for (o, &b) in out.iter_mut().zip(host) {
                *o = b.to_ascii_lowercase();
            }
            Cow::Borrowed(&buf[..host.len()])
        }
        None => Cow::Owned(host.to_ascii_lowercase()),
    }
}
