//! [`NativeHost`]: Envoy's dynamic-module callbacks answering the request logic's questions
//! for one request ([`crate::host::Host`]).

#![allow(unsafe_code)]

use std::ffi::c_void;

use sha2::Digest as _;

use super::ffi::{self, Buffer, Callbacks, Header, attribute};
use super::send;
use crate::decide::XFCC;
use crate::host::{Host, HostError, Property};
use crate::{DENY_BODY, DENY_STATUS};

/// Envoy, as [`decide`] sees it, for one request.
pub(super) struct NativeHost<'a> {
    pub(super) cb: &'static Callbacks,
    pub(super) filter: *mut c_void,
    /// Host call names to fail (fault-injection builds only; empty otherwise).
    pub(super) fail: &'a [String],
    /// Whether the HCM added this hop's XFCC element (with the certificate) to the request.
    pub(super) hcm_added_xfcc: std::cell::Cell<bool>,
    /// Whether the logic needs what previous hops sent (`append_forward`, `off`); with
    /// `sanitize_set` an mTLS request's XFCC is replaced whole, so it is not worth splitting.
    pub(super) previous_xfcc_needed: bool,
}

/// The request headers as Envoy holds them (views valid until a header is set), with this
/// hop's own XFCC element, which the HCM added to carry the certificate of an mTLS peer, taken
/// off: what the logic sees as "incoming" is what previous hops (or a plaintext client) sent.
pub(super) struct NativeHeaders {
    entries: Vec<Header>,
    xfcc_before_this_hop: Option<String>,
}

impl NativeHost<'_> {
    fn check(&self, what: &'static str) -> Result<(), HostError> {
        crate::host::injected_fault(self.fail, what)
    }

    fn string_attribute(&self, id: u32) -> Option<Box<[u8]>> {
        let mut out = Buffer::NULL;
        // SAFETY: `filter` is the live filter of the current hook; `out` is valid for one write.
        let ok = unsafe { (self.cb.attribute_string)(self.filter, id, &mut out) };
        // SAFETY: Envoy's buffer, valid during this hook; copied at once.
        ok.then(|| unsafe { out.bytes() }.map(Box::from)).flatten()
    }

    fn int_attribute(&self, id: u32) -> Option<u64> {
        let mut out = 0u64;
        // SAFETY: as above.
        unsafe { (self.cb.attribute_int)(self.filter, id, &mut out) }.then_some(out)
    }

    /// Every value of request header `name`, copied.
    fn request_header_values(&self, name: &[u8]) -> Vec<Vec<u8>> {
        let mut values = Vec::new();
        let mut count = 1usize;
        let mut i = 0;
        while i < count {
            let mut out = Buffer::NULL;
            // SAFETY: `name` outlives the call; `out` and `count` are valid for one write each.
            let ok = unsafe {
                (self.cb.get_header)(
                    self.filter,
                    ffi::HEADER_TYPE_REQUEST,
                    Buffer::of(name),
                    &mut out,
                    i,
                    &mut count,
                )
            };
            // SAFETY: Envoy's buffer, valid during this hook; copied at once.
            match ok.then(|| unsafe { out.bytes() }).flatten() {
                Some(v) => values.push(v.to_vec()),
                None => break,
            }
            i += 1;
        }
        values
    }

    #[cfg(feature = "fault-injection")]
    pub(super) fn request_header_present(&self, name: &[u8]) -> bool {
        !self.request_header_values(name).is_empty()
    }

    /// The peer certificate the HCM put in this hop's XFCC element, accepted only if its
    /// SHA-256 is the connection's own peer-certificate digest.
    fn peer_certificate(&self) -> Result<Option<Box<[u8]>>, HostError> {
        let failed = |status: &str| HostError {
            what: Property::PeerCertificate.name(),
            status: status.to_owned(),
        };
        let xfcc = self.request_header_values(XFCC.as_bytes());
        let joined = String::from_utf8_lossy(&xfcc.join(&b","[..])).into_owned();
        let pem = crate::xfcc::certificate(&joined).ok_or_else(|| {
            failed(
                "no Cert= in the HCM's x-forwarded-client-cert: the native filter needs \
                 forward_client_cert_details SANITIZE_SET (or APPEND_FORWARD) with set_current_client_cert_details.cert",
            )
        })?;
        let (_, parsed) =
            x509_parser::pem::parse_x509_pem(&pem).map_err(|e| failed(&format!("XFCC Cert= is not PEM: {e}")))?;
        let digest = self
            .string_attribute(attribute::SHA256_PEER_CERTIFICATE_DIGEST)
            .ok_or_else(|| failed("no peer certificate digest"))?;
        let ours = hex(&sha2::Sha256::digest(&parsed.contents));
        if !ours.as_bytes().eq_ignore_ascii_case(&digest) {
            return Err(failed("the XFCC Cert= is not the connection's peer certificate"));
        }
        Ok(Some(pem.into_boxed_slice()))
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

impl Host for NativeHost<'_> {
    type Headers = NativeHeaders;

    fn property(&self, property: Property) -> Result<Option<Box<[u8]>>, HostError> {
        self.check(property.name())?;
        let int = |v: Option<u64>| v.map(|v| Box::from(v.to_le_bytes()));
        Ok(match property {
            Property::ConnectionId => int(self.int_attribute(attribute::CONNECTION_ID)),
            Property::Mtls => {
                let mut presented = false;
                // SAFETY: as in `string_attribute`.
                let ok = unsafe { (self.cb.attribute_bool)(self.filter, attribute::CONNECTION_MTLS, &mut presented) };
                if ok {
                    Some(Box::from([u8::from(presented)]))
                } else if self.int_attribute(attribute::CONNECTION_ID).is_some() {
                    // Envoy answers "not available" for a connection without TLS.
                    Some(Box::from([0u8]))
                } else {
                    return Err(HostError {
                        what: property.name(),
                        status: "no downstream connection".into(),
                    });
                }
            }
            Property::PeerCertificateDigest => self.string_attribute(attribute::SHA256_PEER_CERTIFICATE_DIGEST),
            Property::PeerCertificate => return self.peer_certificate(),
            Property::PeerSubject => self.string_attribute(attribute::SUBJECT_PEER_CERTIFICATE),
            Property::LocalUriSan => self.string_attribute(attribute::URI_SAN_LOCAL_CERTIFICATE),
            Property::SourceAddress => self.string_attribute(attribute::SOURCE_ADDRESS),
            Property::DestinationPort => int(self.int_attribute(attribute::DESTINATION_PORT)),
            Property::DestinationAddress => self.string_attribute(attribute::DESTINATION_ADDRESS),
            Property::RequestedServerName => self.string_attribute(attribute::CONNECTION_REQUESTED_SERVER_NAME),
        })
    }

    fn request_headers(&self) -> Result<NativeHeaders, HostError> {
        self.check("request_headers")?;
        // SAFETY: `filter` is the live filter of the current hook.
        let n = unsafe { (self.cb.get_headers_size)(self.filter, ffi::HEADER_TYPE_REQUEST) };
        let mut entries = vec![
            Header {
                key: Buffer::NULL,
                value: Buffer::NULL,
            };
            n
        ];
        // SAFETY: `entries` has room for the `n` headers Envoy just counted.
        if n > 0 && !unsafe { (self.cb.get_headers)(self.filter, ffi::HEADER_TYPE_REQUEST, entries.as_mut_ptr()) } {
            return Err(HostError {
                what: "request_headers",
                status: "Envoy could not list the request headers".into(),
            });
        }
        let xfcc: Vec<&[u8]> = entries
            .iter()
            // SAFETY: Envoy's views, valid during this hook and before any setter.
            .filter(|h| unsafe { h.key.bytes() }.is_some_and(|k| k.eq_ignore_ascii_case(XFCC.as_bytes())))
            .filter_map(|h| unsafe { h.value.bytes() })
            .collect();
        // The HCM adds this hop's element exactly when the peer presented a certificate.
        let added_by_hcm = matches!(self.property(Property::Mtls), Ok(Some(v)) if *v == [1]) && !xfcc.is_empty();
        self.hcm_added_xfcc.set(added_by_hcm);
        let xfcc_before_this_hop = (!xfcc.is_empty() && (self.previous_xfcc_needed || !added_by_hcm)).then(|| {
            let joined = String::from_utf8_lossy(&xfcc.join(&b","[..])).into_owned();
            if added_by_hcm {
                crate::xfcc::without_last_element(&joined)
            } else {
                joined
            }
        });
        Ok(NativeHeaders {
            entries,
            xfcc_before_this_hop: xfcc_before_this_hop.filter(|x| !x.is_empty()),
        })
    }

    fn header_pairs(headers: &NativeHeaders) -> Option<impl Iterator<Item = (&[u8], &[u8])>> {
        let is_xfcc = |k: &[u8]| k.eq_ignore_ascii_case(XFCC.as_bytes());
        let entries = headers.entries.iter().filter_map(move |h| {
            // SAFETY: as in `request_headers`; the logic reads them before it sets anything.
            let (k, v) = unsafe { (h.key.bytes()?, h.value.bytes().unwrap_or_default()) };
            (!is_xfcc(k)).then_some((k, v))
        });
        let xfcc = headers
            .xfcc_before_this_hop
            .as_deref()
            .map(|x| (XFCC.as_bytes(), x.as_bytes()));
        Some(entries.chain(xfcc))
    }

    fn set_request_header(&self, name: &str, value: &str) -> Result<(), HostError> {
        self.check("set_request_header")?;
        // SAFETY: both buffers outlive the call; Envoy copies them.
        let ok = unsafe {
            (self.cb.set_header)(
                self.filter,
                ffi::HEADER_TYPE_REQUEST,
                Buffer::of(name.as_bytes()),
                Buffer::of(value.as_bytes()),
            )
        };
        ok.then_some(()).ok_or(HostError {
            what: "set_request_header",
            status: "refused".into(),
        })
    }

    fn remove_request_header(&self, name: &str) -> Result<(), HostError> {
        self.check("remove_request_header")?;
        // SAFETY: a null value removes the header; `name` outlives the call.
        let ok = unsafe {
            (self.cb.set_header)(
                self.filter,
                ffi::HEADER_TYPE_REQUEST,
                Buffer::of(name.as_bytes()),
                Buffer::NULL,
            )
        };
        ok.then_some(()).ok_or(HostError {
            what: "remove_request_header",
            status: "refused".into(),
        })
    }

    fn send_deny(&self) {
        send(self.cb, self.filter, DENY_STATUS, DENY_BODY);
    }

    fn restore_forwarded_client_cert(&self, previous: Option<&str>) -> Result<(), HostError> {
        if !self.hcm_added_xfcc.get() {
            return Ok(());
        }
        match previous {
            Some(p) => self.set_request_header(XFCC, p),
            None => self.remove_request_header(XFCC),
        }
    }
}
