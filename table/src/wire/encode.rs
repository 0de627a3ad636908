//! The encoder: a policy set into the bytes [`super::decode`] reads back. It writes format 1
//! whenever the set fits it ([`super::needs_format_2`]), so filters that read only version 1 keep
//! loading what the guide's format compiles to.

use std::net::IpAddr;

use super::{HEADER_LEN, MAGIC, crc32, needs_format_2};
use crate::spec::{Action, Attribute, Condition, IpNet, Matcher, Pattern, Policy, PolicySet};

/// Encodes a policy set. Encoding then decoding gives back an equal set (host bits of IP
/// networks are already clear in [`IpNet`]).
pub fn encode(set: &PolicySet) -> Vec<u8> {
    let version = if needs_v2(set) { 2 } else { 1 };
    let mut w = Writer {
        v2: version >= 2,
        ..Writer::default()
    };
    for policy in &set.policies {
        w.policy(policy);
    }
    let mut body = Vec::with_capacity(w.out.len() + w.pool_bytes + 16);
    put_varint(&mut body, w.pool.len() as u64);
    for s in &w.pool {
        put_varint(&mut body, s.len() as u64);
        body.extend_from_slice(s.as_bytes());
    }
    put_varint(&mut body, set.policies.len() as u64);
    body.extend_from_slice(&w.out);
    let mut bytes = Vec::with_capacity(HEADER_LEN + body.len());
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&u16::to_le_bytes(version));
    bytes.extend_from_slice(&0u16.to_le_bytes());
    let body_len = u32::try_from(body.len()).unwrap_or(u32::MAX);
    bytes.extend_from_slice(&body_len.to_le_bytes());
    bytes.extend_from_slice(&crc32(&body).to_le_bytes());
    bytes.extend_from_slice(&body);
    bytes
}

/// Whether the set uses anything version 1 cannot hold.
fn needs_v2(set: &PolicySet) -> bool {
    set.policies.iter().any(needs_format_2)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

#[derive(Default)]
struct Writer<'s> {
    pool: Vec<&'s str>,
    index: std::collections::HashMap<&'s str, u64>,
    pool_bytes: usize,
    out: Vec<u8>,
    v2: bool,
}

impl<'s> Writer<'s> {
    fn string(&mut self, s: &'s str) {
        let next = self.pool.len() as u64;
        let index = *self.index.entry(s).or_insert(next);
        if index == next {
            self.pool.push(s);
            self.pool_bytes += s.len() + 2;
        }
        put_varint(&mut self.out, index);
    }

    fn len(&mut self, n: usize) {
        put_varint(&mut self.out, n as u64);
    }

    fn policy(&mut self, p: &'s Policy) {
        self.string(&p.name);
        self.out.push(match p.action {
            Action::Allow => 0,
            Action::Deny => 1,
            Action::Audit => 2,
        });
        if self.v2 {
            self.out.push(u8::from(p.dry_run));
        }
        self.len(p.rules.len());
        for rule in &p.rules {
            self.len(rule.sources.len());
            for s in &rule.sources {
                self.len(s.principals.len());
                s.principals.iter().for_each(|p| self.pattern(p));
                self.len(s.ip_blocks.len());
                s.ip_blocks.iter().for_each(|n| self.ipnet(n));
                self.conditions(&s.conditions);
            }
            self.len(rule.destinations.len());
            for d in &rule.destinations {
                self.len(d.hosts.len());
                d.hosts.iter().for_each(|p| self.pattern(p));
                self.len(d.ports.len());
                for port in &d.ports {
                    self.out.extend_from_slice(&port.to_le_bytes());
                }
                self.len(d.methods.len());
                d.methods.iter().for_each(|m| self.string(m));
                match &d.header {
                    None => self.out.push(0),
                    Some(h) => {
                        self.out.push(1);
                        self.string(&h.name);
                        self.string(&h.regex);
                    }
                }
                self.conditions(&d.conditions);
            }
        }
    }

    fn ipnet(&mut self, net: &IpNet) {
        match net.addr() {
            IpAddr::V4(a) => {
                self.out.extend_from_slice(&[4, net.prefix_len()]);
                self.out.extend_from_slice(&a.octets());
            }
            IpAddr::V6(a) => {
                self.out.extend_from_slice(&[6, net.prefix_len()]);
                self.out.extend_from_slice(&a.octets());
            }
        }
    }

    fn conditions(&mut self, conds: &'s [Condition]) {
        if !self.v2 {
            return;
        }
        self.len(conds.len());
        for c in conds {
            match &c.attribute {
                Attribute::Principal => self.out.push(0),
                Attribute::Host => self.out.push(1),
                Attribute::Method => self.out.push(2),
                Attribute::Path => self.out.push(3),
                Attribute::Sni => self.out.push(4),
                Attribute::Header(name) => {
                    self.out.push(5);
                    self.string(name);
                }
                Attribute::SourceIp => self.out.push(6),
                Attribute::DestinationIp => self.out.push(7),
                Attribute::DestinationPort => self.out.push(8),
                Attribute::RemoteIp => self.out.push(9),
                Attribute::Claim(path) => {
                    self.out.push(10);
                    self.len(path.len());
                    path.iter().for_each(|seg| self.string(seg));
                }
                Attribute::RequestPrincipal => self.out.push(11),
            }
            self.out.push(u8::from(c.negated));
            self.len(c.matchers.len());
            for m in &c.matchers {
                self.matcher(m);
            }
        }
    }

    fn matcher(&mut self, m: &'s Matcher) {
        {
            {
                match m {
                    Matcher::Present => self.out.push(0),
                    Matcher::NonEmpty => self.out.push(1),
                    Matcher::Exact(v) => self.tagged(2, v),
                    Matcher::Prefix(v) => self.tagged(3, v),
                    Matcher::Suffix(v) => self.tagged(4, v),
                    Matcher::Regex(v) => self.tagged(5, v),
                    Matcher::PathTemplate(v) => self.tagged(6, v),
                    Matcher::Contains(v) => self.tagged(9, v),
                    Matcher::Net(n) => {
                        self.out.push(7);
                        self.ipnet(n);
                    }
                    Matcher::Port(p) => {
                        self.out.push(8);
                        self.out.extend_from_slice(&p.to_le_bytes());
                    }
                    Matcher::IssuerSubject(iss, sub) => {
                        self.out.push(10);
                        self.matcher(iss);
                        self.matcher(sub);
                    }
                }
            }
        }
    }

    fn tagged(&mut self, tag: u8, s: &'s str) {
        self.out.push(tag);
        self.string(s);
    }

    fn pattern(&mut self, p: &'s Pattern) {
        match p {
            Pattern::Any => self.out.push(0),
            Pattern::Exact(s) => {
                self.out.push(1);
                self.string(s);
            }
            Pattern::Prefix(s) => {
                self.out.push(2);
                self.string(s);
            }
            Pattern::Suffix(s) => {
                self.out.push(3);
                self.string(s);
            }
        }
    }
}
