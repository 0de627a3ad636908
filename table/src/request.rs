//! What the evaluator is asked and what it answers.

use std::net::IpAddr;

/// One request, as the filter sees it. Borrowed: building one costs nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct Request<'a> {
    /// The peer's SPIFFE ID from its mTLS certificate; `None` on plaintext or when the
    /// certificate is not a valid X.509-SVID.
    pub principal: Option<&'a str>,
    /// The peer's address; `None` matches no `ipBlocks`.
    pub source_ip: Option<IpAddr>,
    /// `:authority` as Envoy's router sees it. Host patterns compare it case-insensitively and
    /// remove nothing: the port and a trailing dot are the HCM's to strip
    /// (`strip_any_host_port`, `strip_trailing_host_dot`), so that the host decided is the host
    /// routed.
    pub authority: &'a str,
    /// The connection's local (destination) port.
    pub port: u16,
    pub method: &'a str,
    /// The values of each header the table references, indexed like
    /// [`Table::header_names`](crate::Table::header_names): every value the header arrived
    /// with, in order (Envoy keeps a repeated header as separate entries); empty when absent.
    pub headers: &'a [&'a [&'a str]],
    /// The SNI the client sent (`None`: plaintext or none sent); read only when
    /// [`Table::uses_sni`](crate::Table::uses_sni).
    pub sni: Option<&'a str>,
    /// The connection's local address; read only when
    /// [`Table::uses_destination_ip`](crate::Table::uses_destination_ip).
    pub destination_ip: Option<IpAddr>,
    /// The original client address as the HCM computed it; read only when
    /// [`Table::uses_remote_ip`](crate::Table::uses_remote_ip).
    pub remote_ip: Option<IpAddr>,
    /// The verified JWT's claims the table looks at, indexed like
    /// [`Table::claim_paths`](crate::Table::claim_paths); empty without a verified token.
    pub claims: &'a [Claim<'a>],
}

/// One JWT claim's value, as the matchers see it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Claim<'a> {
    /// No verified token, no such claim, or a value that is neither a string nor a list.
    #[default]
    Absent,
    Str(&'a str),
    /// The string elements of a list claim.
    List(&'a [&'a str]),
}

/// Which policy rule decided. `rule` is `None` for a policy without rules (it matches all).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RuleRef {
    pub policy: u32,
    pub rule: Option<u32>,
}

/// The outcome of one evaluation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// The matching rule that decided, or `None` for the default (no DENY matched and either no
    /// ALLOW policy exists, or none matched).
    pub by: Option<RuleRef>,
}

/// What the policies that never decide made of a request: Istio's AUDIT policies and the
/// dry-run (`istio.io/dry-run`) ones, evaluated apart from the enforced set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    /// The first AUDIT rule that matched.
    pub audit: Option<RuleRef>,
    /// What the dry-run policies alone would have decided, when there are any.
    pub dry_run: Option<Decision>,
}
