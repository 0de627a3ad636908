//! The proxy-wasm serialization of header maps, read in place.
//!
//! Layout: a little-endian `u32` count `n`, then `n` pairs of `u32` lengths (name, value), then
//! the bytes: each name and each value followed by a NUL. Reading borrows from the host's
//! buffer, so a request costs no allocation per header; a malformed buffer reads as `None`
//! (the caller fails closed), never as a panic.

/// The header pairs of one buffer.
#[derive(Clone, Copy, Debug)]
pub struct Pairs<'a> {
    lengths: &'a [u8],
    bytes: &'a [u8],
}

impl<'a> Pairs<'a> {
    /// Checks the whole layout up front, so iteration cannot fail half-way.
    pub fn parse(buffer: &'a [u8]) -> Option<Pairs<'a>> {
        let count = usize::try_from(u32::from_le_bytes(buffer.get(..4)?.try_into().ok()?)).ok()?;
        let lengths_end = count.checked_mul(8)?.checked_add(4)?;
        let lengths = buffer.get(4..lengths_end)?;
        let bytes = buffer.get(lengths_end..)?;
        let mut at = 0usize;
        for pair in lengths.chunks_exact(8) {
            let (name, value) = split_lengths(pair);
            for len in [name, value] {
                let end = at.checked_add(len)?;
                if bytes.get(end) != Some(&0) {
                    return None;
                }
                at = end + 1;
            }
        }
        (at == bytes.len()).then_some(Pairs { lengths, bytes })
    }

    pub fn iter(self) -> impl Iterator<Item = (&'a [u8], &'a [u8])> + 'a {
        let bytes = self.bytes;
        let mut at = 0usize;
        self.lengths.chunks_exact(8).map(move |pair| {
            let (name, value) = split_lengths(pair);
            // In bounds: `parse` walked exactly these lengths.
            let n = bytes.get(at..at + name).unwrap_or_default();
            at += name + 1;
            let v = bytes.get(at..at + value).unwrap_or_default();
            at += value + 1;
            (n, v)
        })
    }
}

fn split_lengths(pair: &[u8]) -> (usize, usize) {
    let word = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize;
    (word(&pair[..4]), word(&pair[4..8]))
}

/// Serializes pairs in the same layout (for the headers of a local reply).
pub fn serialize(pairs: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (name, value) in pairs {
        out.extend_from_slice(&(name.len() as u32).to_le_bytes());
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    }
    for (name, value) in pairs {
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        out.extend_from_slice(value.as_bytes());
        out.push(0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let headers = [
            (":authority", "service-test"),
            (":method", "GET"),
            ("x-empty", ""),
            ("", "v"),
        ];
        let buffer = serialize(&headers);
        let pairs = Pairs::parse(&buffer).expect("valid");
        let read: Vec<(&[u8], &[u8])> = pairs.iter().collect();
        let expected: Vec<(&[u8], &[u8])> = headers.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())).collect();
        assert_eq!(read, expected);
        assert_eq!(Pairs::parse(&serialize(&[])).expect("empty").iter().count(), 0);
    }

    #[test]
    fn malformed_buffers_are_refused() {
        let good = serialize(&[("a", "b"), ("cc", "dd")]);
        // Every truncation, a missing NUL, trailing bytes, and absurd counts and lengths.
        for end in 0..good.len() {
            assert!(Pairs::parse(&good[..end]).is_none(), "truncated at {end}");
        }
        let mut no_nul = good.clone();
        let last = no_nul.len() - 1;
        no_nul[last] = b'x';
        assert!(Pairs::parse(&no_nul).is_none());
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(Pairs::parse(&trailing).is_none());
        let mut huge_count = good.clone();
        huge_count[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(Pairs::parse(&huge_count).is_none());
        let mut huge_len = good;
        huge_len[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(Pairs::parse(&huge_len).is_none());
    }
}
