//! A body held as a list of shared pieces.
//!
//! A response filled while it streamed keeps the pieces it arrived in
//! instead of being copied into one buffer: copying a 16 MiB object on the
//! event loop would be a stall, and every hit then shares the pieces by
//! reference count. A body that arrived in one read is one piece.

use std::sync::Arc;

use bytes::Bytes;

/// A body as shared pieces, in order; no piece is empty.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pieces {
    pieces: Option<Arc<[Bytes]>>,
    len: u64,
}

impl Pieces {
    /// A body of one piece (nothing when `bytes` is empty).
    pub fn one(bytes: Bytes) -> Pieces {
        Pieces::from_vec(vec![bytes])
    }

    /// A body of the given pieces, empty ones dropped.
    pub fn from_vec(mut pieces: Vec<Bytes>) -> Pieces {
        pieces.retain(|piece| !piece.is_empty());
        let len = pieces.iter().map(|piece| piece.len() as u64).sum();
        match pieces.is_empty() {
            true => Pieces::default(),
            false => Pieces { pieces: Some(pieces.into()), len },
        }
    }

    /// Total bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The pieces, in order.
    pub fn iter(&self) -> impl Iterator<Item = &Bytes> {
        self.pieces.as_deref().unwrap_or_default().iter()
    }

    /// How many pieces.
    pub fn count(&self) -> usize {
        self.pieces.as_deref().map_or(0, <[Bytes]>::len)
    }

    /// The body as one buffer when it is one piece (or none).
    pub fn single(&self) -> Option<Bytes> {
        match self.pieces.as_deref() {
            None => Some(Bytes::new()),
            Some([one]) => Some(one.clone()),
            Some(_) => None,
        }
    }

    /// The bytes `start..end` (clamped to the body), sharing the pieces.
    pub fn slice(&self, start: u64, end: u64) -> Pieces {
        let end = end.min(self.len);
        if start >= end {
            return Pieces::default();
        }
        let mut taken = Vec::new();
        let mut offset = 0u64;
        for piece in self.iter() {
            let piece_end = offset + piece.len() as u64;
            if piece_end > start && offset < end {
                let from = start.saturating_sub(offset) as usize;
                let to = (end.min(piece_end) - offset) as usize;
                taken.push(piece.slice(from..to));
            }
            offset = piece_end;
            if offset >= end {
                break;
            }
        }
        Pieces::from_vec(taken)
    }

    /// The body as one buffer, copied when it is in several pieces.
    pub fn to_bytes(&self) -> Bytes {
        if let Some(one) = self.single() {
            return one;
        }
        let mut out = Vec::with_capacity(self.len as usize);
        for piece in self.iter() {
            out.extend_from_slice(piece);
        }
        Bytes::from(out)
    }
}

impl From<Bytes> for Pieces {
    fn from(bytes: Bytes) -> Pieces {
        Pieces::one(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(parts: &[&'static str]) -> Pieces {
        Pieces::from_vec(parts.iter().map(|p| Bytes::from_static(p.as_bytes())).collect())
    }

    #[test]
    fn slices_cross_pieces_and_clamp() {
        let b = body(&["abc", "", "defg", "hi"]);
        assert_eq!(b.len(), 9);
        assert_eq!(b.count(), 3, "empty pieces are dropped");
        let cases: [(u64, u64, &str); 7] = [
            (0, 9, "abcdefghi"),
            (0, 3, "abc"),
            (2, 5, "cde"),
            (3, 7, "defg"),
            (6, 100, "ghi"),
            (8, 9, "i"),
            (9, 12, ""),
        ];
        for (start, end, expect) in cases {
            assert_eq!(&b.slice(start, end).to_bytes()[..], expect.as_bytes(), "{start}..{end}");
        }
        assert!(b.slice(5, 5).is_empty());
        assert_eq!(b.single(), None);
        assert_eq!(body(&["x"]).single(), Some(Bytes::from_static(b"x")));
        assert_eq!(Pieces::default().single(), Some(Bytes::new()));
    }
}
