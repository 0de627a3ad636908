//! Host matching: what a `hosts` pattern is compared against.
//!
//! The `:authority` exactly as Envoy's router sees it, lowercased and nothing else: no port
//! or trailing dot is removed here. If the filter stripped them while the router did not, a
//! request for `service-test:9999` would be decided as `service-test` and then routed to
//! whichever virtual host matches `service-test:9999`. The HCM normalizes the host for both
//! (`strip_any_host_port`, `strip_trailing_host_dot`; SEMANTICS.md, "The host").

use std::borrow::Cow;

/// Hosts up to this length are lowercased on the stack.
pub const MAX_HOST_STACK: usize = 255;

/// ASCII-lowercases `raw`: borrowed when nothing changes, in `buf` when it fits, else on the
/// heap (only for hosts longer than 255 bytes that need lowercasing).
pub fn normalize_host<'b>(raw: &'b str, buf: &'b mut [u8; MAX_HOST_STACK]) -> Cow<'b, [u8]> {
    let host = raw.as_bytes();
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
