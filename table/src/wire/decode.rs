//! The decoder's reader: every byte of the body checked against what is left, every index
//! against the string pool, every enum against its range ([`super`] documents the layout).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::DecodeError;
use crate::spec::{
    Action, Attribute, Condition, Destination, HeaderMatch, IpNet, Matcher, Pattern, Policy, Rule, Source,
};

pub(super) struct Reader<'a> {
    pub bytes: &'a [u8],
    pub pos: usize,
    pub strings: Vec<&'a str>,
    pub v2: bool,
}

impl<'a> Reader<'a> {
    pub(super) fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        let end = end.ok_or(DecodeError::Truncated { offset: self.pos })?;
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn varint(&mut self) -> Result<u64, DecodeError> {
        let start = self.pos;
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            let bits = u64::from(b & 0x7F);
            if shift == 63 && bits > 1 {
                return Err(DecodeError::VarintOverflow { offset: start });
            }
            value |= bits << shift;
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(DecodeError::VarintOverflow { offset: start })
    }

    /// A count of items that each take at least `min_item_len` bytes: a count the rest of the
    /// input cannot hold is rejected before anything is allocated for it.
    pub(super) fn count(&mut self, min_item_len: usize) -> Result<usize, DecodeError> {
        let at = self.pos;
        let n = self.varint()?;
        let room = (self.bytes.len() - self.pos) / min_item_len.max(1);
        match usize::try_from(n) {
            Ok(n) if n <= room => Ok(n),
            _ => Err(DecodeError::Truncated { offset: at }),
        }
    }

    fn string(&mut self) -> Result<String, DecodeError> {
        let at = self.pos;
        let index = self.varint()?;
        usize::try_from(index)
            .ok()
            .and_then(|i| self.strings.get(i))
            .map(|s| (*s).to_owned())
            .ok_or(DecodeError::StringIndex { offset: at, index })
    }

    pub(super) fn policy(&mut self) -> Result<Policy, DecodeError> {
        let name = self.string()?;
        let at = self.pos;
        let action = match self.u8()? {
            0 => Action::Allow,
            1 => Action::Deny,
            2 if self.v2 => Action::Audit,
            value => {
                return Err(DecodeError::BadEnum {
                    offset: at,
                    what: "action",
                    value,
                });
            }
        };
        let at = self.pos;
        let dry_run = match if self.v2 { self.u8()? } else { 0 } {
            0 => false,
            // Istio refuses dry-run on AUDIT; an audit never decides anyway.
            1 if action != Action::Audit => true,
            value => {
                return Err(DecodeError::BadEnum {
                    offset: at,
                    what: "policy flags",
                    value,
                });
            }
        };
        let n = self.count(2)?;
        let mut rules = Vec::with_capacity(n);
        for _ in 0..n {
            rules.push(self.rule()?);
        }
        Ok(Policy {
            name,
            action,
            rules,
            dry_run,
        })
    }

    fn rule(&mut self) -> Result<Rule, DecodeError> {
        let n = self.count(2)?;
        let mut sources = Vec::with_capacity(n);
        for _ in 0..n {
            let at = self.pos;
            let principals = self.list(1, Self::pattern)?;
            let ip_blocks = self.list(6, Self::ipnet)?;
            let conditions = self.conditions()?;
            if principals.is_empty() && ip_blocks.is_empty() && conditions.is_empty() {
                return Err(DecodeError::EmptyList {
                    offset: at,
                    what: "source",
                });
            }
            sources.push(Source {
                principals,
                ip_blocks,
                conditions,
            });
        }
        let n = self.count(5)?;
        let mut destinations = Vec::with_capacity(n);
        for _ in 0..n {
            destinations.push(self.destination()?);
        }
        Ok(Rule { sources, destinations })
    }

    fn destination(&mut self) -> Result<Destination, DecodeError> {
        let start = self.pos;
        let at = self.pos;
        let hosts = self.list(1, Self::pattern)?;
        if hosts.is_empty() && !self.v2 {
            return Err(DecodeError::EmptyList {
                offset: at,
                what: "hosts",
            });
        }
        let at = self.pos;
        let ports = self.list(2, |r| {
            let at = r.pos;
            let raw = r.take(2)?;
            match u16::from_le_bytes([raw[0], raw[1]]) {
                0 => Err(DecodeError::ZeroPort { offset: at }),
                port => Ok(port),
            }
        })?;
        if ports.is_empty() && !self.v2 {
            return Err(DecodeError::EmptyList {
                offset: at,
                what: "ports",
            });
        }
        let methods = self.list(1, Self::string)?;
        let at = self.pos;
        let header = match self.u8()? {
            0 => None,
            1 => Some(HeaderMatch {
                name: self.string()?,
                regex: self.string()?,
            }),
            value => {
                return Err(DecodeError::BadEnum {
                    offset: at,
                    what: "header flag",
                    value,
                });
            }
        };
        let conditions = self.conditions()?;
        if hosts.is_empty() && ports.is_empty() && methods.is_empty() && header.is_none() && conditions.is_empty() {
            return Err(DecodeError::EmptyList {
                offset: start,
                what: "destination",
            });
        }
        Ok(Destination {
            hosts,
            ports,
            methods,
            header,
            conditions,
        })
    }

    /// A clause's conditions: none in version 1.
    fn conditions(&mut self) -> Result<Vec<Condition>, DecodeError> {
        if !self.v2 {
            return Ok(Vec::new());
        }
        self.list(3, Self::condition)
    }

    fn condition(&mut self) -> Result<Condition, DecodeError> {
        let at = self.pos;
        let attribute = match self.u8()? {
            0 => Attribute::Principal,
            1 => Attribute::Host,
            2 => Attribute::Method,
            3 => Attribute::Path,
            4 => Attribute::Sni,
            5 => Attribute::Header(self.string()?),
            6 => Attribute::SourceIp,
            7 => Attribute::DestinationIp,
            8 => Attribute::DestinationPort,
            9 => Attribute::RemoteIp,
            10 => {
                let at = self.pos;
                let path = self.list(1, Self::string)?;
                if path.is_empty() {
                    return Err(DecodeError::EmptyList {
                        offset: at,
                        what: "claim path",
                    });
                }
                Attribute::Claim(path)
            }
            11 => Attribute::RequestPrincipal,
            value => {
                return Err(DecodeError::BadEnum {
                    offset: at,
                    what: "condition attribute",
                    value,
                });
            }
        };
        let at = self.pos;
        let negated = match self.u8()? {
            0 => false,
            1 => true,
            value => {
                return Err(DecodeError::BadEnum {
                    offset: at,
                    what: "negation flag",
                    value,
                });
            }
        };
        let at = self.pos;
        let matchers = self.list(1, |r| r.matcher(&attribute))?;
        if matchers.is_empty() {
            return Err(DecodeError::EmptyList {
                offset: at,
                what: "matcher",
            });
        }
        Ok(Condition {
            attribute,
            negated,
            matchers,
        })
    }

    /// One matcher, of a kind that suits `attribute`.
    fn matcher(&mut self, attribute: &Attribute) -> Result<Matcher, DecodeError> {
        let at = self.pos;
        let kind = self.u8()?;
        let string = attribute.is_string() && *attribute != Attribute::RequestPrincipal;
        let port = *attribute == Attribute::DestinationPort;
        Ok(match kind {
            10 if *attribute == Attribute::RequestPrincipal => {
                // Two plain string matchers, read as those of a string attribute.
                let plain = Attribute::Method;
                Matcher::IssuerSubject(Box::new(self.matcher(&plain)?), Box::new(self.matcher(&plain)?))
            }
            0 if string => Matcher::Present,
            1 if string => Matcher::NonEmpty,
            2 if string => Matcher::Exact(self.string()?),
            3 if string => Matcher::Prefix(self.string()?),
            4 if string => Matcher::Suffix(self.string()?),
            5 if string => Matcher::Regex(self.string()?),
            6 if *attribute == Attribute::Path => Matcher::PathTemplate(self.string()?),
            9 if string => Matcher::Contains(self.string()?),
            7 if !string && !port => Matcher::Net(self.ipnet()?),
            8 if port => {
                let raw = self.take(2)?;
                Matcher::Port(u16::from_le_bytes([raw[0], raw[1]]))
            }
            value => {
                return Err(DecodeError::BadEnum {
                    offset: at,
                    what: "matcher kind",
                    value,
                });
            }
        })
    }

    fn list<T>(
        &mut self,
        min_item_len: usize,
        mut item: impl FnMut(&mut Self) -> Result<T, DecodeError>,
    ) -> Result<Vec<T>, DecodeError> {
        let n = self.count(min_item_len)?;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(item(self)?);
        }
        Ok(out)
    }

    fn pattern(&mut self) -> Result<Pattern, DecodeError> {
        let at = self.pos;
        let kind = self.u8()?;
        let make: fn(String) -> Pattern = match kind {
            0 => return Ok(Pattern::Any),
            1 => Pattern::Exact,
            2 => Pattern::Prefix,
            3 => Pattern::Suffix,
            value => {
                return Err(DecodeError::BadEnum {
                    offset: at,
                    what: "pattern kind",
                    value,
                });
            }
        };
        let literal = self.string()?;
        if literal.is_empty() {
            return Err(DecodeError::BadPattern { offset: at });
        }
        Ok(make(literal))
    }

    fn ipnet(&mut self) -> Result<IpNet, DecodeError> {
        let at = self.pos;
        let family = self.u8()?;
        let prefix_len = self.u8()?;
        let addr = match family {
            4 => {
                let b = self.take(4)?;
                IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
            }
            6 => {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(self.take(16)?);
                IpAddr::V6(Ipv6Addr::from(octets))
            }
            value => {
                return Err(DecodeError::BadEnum {
                    offset: at,
                    what: "address family",
                    value,
                });
            }
        };
        IpNet::new(addr, prefix_len).ok_or(DecodeError::BadPrefixLen {
            offset: at,
            len: prefix_len,
        })
    }
}
