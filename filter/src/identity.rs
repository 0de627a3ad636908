//! The peer's identity from its certificate: the X.509-SVID rule and the XFCC element.
//!
//! An X.509-SVID carries exactly one URI SAN, a valid SPIFFE ID. A certificate with none, two,
//! or an invalid one establishes no identity: that is an authentication failure, and the
//! filter denies the request whatever the policies say (treating it as plaintext would let a
//! certificate with two URI SANs slip past a `DENY` on one of them).

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// What one peer certificate gives a request. Built once per certificate, then cached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The SPIFFE ID, or why the certificate is not a valid X.509-SVID.
    pub principal: Result<String, String>,
    /// Every URI SAN, in certificate order (XFCC `URI=`).
    pub uris: Vec<String>,
    /// Every DNS SAN, in certificate order (XFCC `DNS=`).
    pub dns: Vec<String>,
}

/// Reads a PEM certificate (the `connection.peer_certificate` property). The first certificate
/// in the PEM is the peer's own.
pub fn from_pem(pem: &[u8]) -> Result<PeerIdentity, String> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem).map_err(|e| format!("peer certificate PEM: {e}"))?;
    let (_, cert) = X509Certificate::from_der(&pem.contents).map_err(|e| format!("peer certificate DER: {e}"))?;
    let mut uris = Vec::new();
    let mut dns = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::URI(u) => uris.push((*u).to_owned()),
                GeneralName::DNSName(d) => dns.push((*d).to_owned()),
                _ => {}
            }
        }
    }
    Ok(from_uri_sans(uris, dns))
}

/// Applies the X.509-SVID rule to the URI SANs.
pub fn from_uri_sans(uris: Vec<String>, dns: Vec<String>) -> PeerIdentity {
    let principal = match uris.as_slice() {
        [] => Err("the certificate has no URI SAN".to_owned()),
        [one] => match meshauthz_table::spiffe::validate(one) {
            Ok(()) => Ok(one.clone()),
            Err(e) => Err(format!("URI SAN `{one}` is not a SPIFFE ID: {e}")),
        },
        more => Err(format!(
            "the certificate has {} URI SANs; an X.509-SVID has exactly one",
            more.len()
        )),
    };
    PeerIdentity { principal, uris, dns }
}

/// The peer's part of this hop's XFCC element, with the keys in the order and quoting Envoy
/// uses for `forward_client_cert_details: SANITIZE_SET` with `subject`, `uri` and `dns` set:
/// `Hash=<sha256 hex>;Subject="<RFC 2253>";URI=<uri>[;DNS=<dns>]...`. The element starts with
/// `By=<local URI SAN>;`, which belongs to the connection, not the peer ([`xfcc_element`]).
pub fn xfcc_peer_part(hash: &str, subject: &str, peer: &PeerIdentity) -> String {
    let mut parts: Vec<String> = Vec::new();
    if !hash.is_empty() {
        parts.push(format!("Hash={hash}"));
    }
    parts.push(format!("Subject=\"{subject}\""));
    if peer.uris.is_empty() {
        // Envoy keeps the key even when the certificate has no URI SAN.
        parts.push("URI=".to_owned());
    }
    parts.extend(peer.uris.iter().map(|u| format!("URI={u}")));
    parts.extend(peer.dns.iter().map(|d| format!("DNS={d}")));
    parts.join(";")
}

/// The whole element: `By=` for this hop's URI SAN (if it has one), then the peer's part.
pub fn xfcc_element(local_uri: Option<&str>, peer_part: &str) -> String {
    match local_uri {
        Some(by) => format!("By={by};{peer_part}"),
        None => peer_part.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_pem(uris: &[&str], dns: &[&str]) -> String {
        let mut params =
            rcgen::CertificateParams::new(dns.iter().map(|d| d.to_string()).collect::<Vec<_>>()).expect("params");
        for u in uris {
            params
                .subject_alt_names
                .push(rcgen::SanType::URI((*u).try_into().expect("ia5")));
        }
        let key = rcgen::KeyPair::generate().expect("key");
        params.self_signed(&key).expect("cert").pem()
    }

    #[test]
    fn svid_rule() {
        let one = from_pem(cert_pem(&["spiffe://td/ns/a/sa/b"], &["b.example"]).as_bytes()).expect("parses");
        assert_eq!(one.principal.as_deref(), Ok("spiffe://td/ns/a/sa/b"));
        assert_eq!(one.dns, vec!["b.example".to_owned()]);
        let two = from_pem(cert_pem(&["spiffe://td/a", "spiffe://td/b"], &[]).as_bytes()).expect("parses");
        assert!(two.principal.as_ref().is_err_and(|r| r.contains("2 URI SANs")));
        let none = from_pem(cert_pem(&[], &["x"]).as_bytes()).expect("parses");
        assert!(none.principal.is_err());
        let bad = from_pem(cert_pem(&["spiffe://TD/x"], &[]).as_bytes()).expect("parses");
        assert!(bad.principal.is_err());
        assert!(from_pem(b"not a certificate").is_err());
    }

    #[test]
    fn xfcc_layout() {
        let peer = from_uri_sans(vec!["spiffe://td/ns/a/sa/c".into()], vec!["c1".into(), "c2".into()]);
        let part = xfcc_peer_part("abc", "CN=c,O=x", &peer);
        assert_eq!(
            xfcc_element(Some("spiffe://td/ns/a/sa/s"), &part),
            "By=spiffe://td/ns/a/sa/s;Hash=abc;Subject=\"CN=c,O=x\";URI=spiffe://td/ns/a/sa/c;DNS=c1;DNS=c2"
        );
        assert_eq!(xfcc_element(None, &part), part);
    }
}
