//! Which log bytes are still needed, per segment, and which segment to
//! compact next.
//!
//! A shard's log is a sequence of segments; a record lives in exactly one.
//! The [`SegmentBook`] learns every record's [`Location`] when it is
//! appended and learns when it stops being needed (overwritten, deleted,
//! expired, or a tombstone, which is counted dead at once: it only shadows
//! older records and is copied forward when its segment is compacted). A
//! sealed segment whose dead share passes a threshold is a candidate:
//! its live records are appended again at the head, then it is deleted.
//! So disk use stays near live data (at a threshold of 1/2: at most twice
//! the live bytes in sealed segments, plus the active one).
//!
//! Segments roll when the next record would not fit in `segment_bytes`
//! (an empty segment takes any record), decided here at append time, so
//! every record's segment is known the moment it is appended.

use std::collections::BTreeMap;

/// Where a record sits in the log: its offset and its encoded length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Location {
    pub offset: u64,
    pub bytes: u32,
}

impl Location {
    /// For entries that have no record (tests, and values never logged).
    pub const NONE: Location = Location { offset: u64::MAX, bytes: 0 };

    pub fn is_none(&self) -> bool {
        self.offset == u64::MAX
    }

    pub fn end(&self) -> u64 {
        self.offset + u64::from(self.bytes)
    }
}

/// One segment's byte counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SegmentStats {
    /// Bytes of records in the segment.
    pub bytes: u64,
    /// Bytes of records still needed.
    pub live_bytes: u64,
}

impl SegmentStats {
    pub fn dead_bytes(&self) -> u64 {
        self.bytes - self.live_bytes
    }
}

/// Per-segment accounting of one shard's log.
#[derive(Clone, Debug)]
pub struct SegmentBook {
    /// By first offset. The last one is the active segment.
    segments: BTreeMap<u64, SegmentStats>,
    segment_bytes: u64,
}

impl SegmentBook {
    /// A book whose active segment starts at `end` (an empty log: 0).
    pub fn new(segment_bytes: u64, end: u64) -> SegmentBook {
        assert!(segment_bytes > 0);
        SegmentBook { segments: BTreeMap::from([(end, SegmentStats::default())]), segment_bytes }
    }

    /// A book of recovered segments, `(first offset, bytes)` oldest first,
    /// with nothing live yet ([`SegmentBook::restore_live`] adds it).
    pub fn recovered(segment_bytes: u64, segments: &[(u64, u64)]) -> SegmentBook {
        let Some(&(last_first, last_bytes)) = segments.last() else {
            return SegmentBook::new(segment_bytes, 0);
        };
        let mut book = SegmentBook::new(segment_bytes, last_first);
        for &(first, bytes) in segments {
            assert!(first <= last_first, "segments oldest first");
            book.segments.insert(first, SegmentStats { bytes, live_bytes: 0 });
        }
        assert_eq!(book.active().1.bytes, last_bytes);
        book
    }

    fn active(&self) -> (u64, SegmentStats) {
        let (&first, &stats) = self.segments.last_key_value().expect("there is always an active segment");
        (first, stats)
    }

    /// Offset of the next record.
    pub fn end(&self) -> u64 {
        let (first, stats) = self.active();
        first + stats.bytes
    }

    /// Places a record of `bytes` at the end of the log, rolling to a new
    /// segment first when it would not fit. Returns its location and
    /// whether it starts a new segment. `live`: counted as needed (a put)
    /// or dead at once (a tombstone).
    pub fn append(&mut self, bytes: u32, live: bool) -> (Location, bool) {
        let (first, stats) = self.active();
        let offset = first + stats.bytes;
        let rolled = stats.bytes > 0 && stats.bytes + u64::from(bytes) > self.segment_bytes;
        if rolled {
            self.segments.insert(offset, SegmentStats::default());
        }
        let active = self.segments.get_mut(&if rolled { offset } else { first }).expect("active segment");
        active.bytes += u64::from(bytes);
        if live {
            active.live_bytes += u64::from(bytes);
        }
        (Location { offset, bytes }, rolled)
    }

    /// Counts a recovered live record.
    pub fn restore_live(&mut self, location: Location) {
        let stats = self.containing(location.offset).expect("recovered records lie in recovered segments");
        stats.live_bytes += u64::from(location.bytes);
        assert!(stats.live_bytes <= stats.bytes, "live bytes beyond the segment");
    }

    /// A record is no longer needed. Records of segments already removed
    /// (compacted away) are ignored.
    pub fn dead(&mut self, location: Location) {
        if location.is_none() {
            return;
        }
        if let Some(stats) = self.containing(location.offset) {
            assert!(stats.live_bytes >= u64::from(location.bytes), "a record died twice");
            stats.live_bytes -= u64::from(location.bytes);
        }
    }

    fn containing(&mut self, offset: u64) -> Option<&mut SegmentStats> {
        let (&first, stats) = self.segments.range_mut(..=offset).next_back()?;
        (offset < first + stats.bytes).then_some(stats)
    }

    /// The sealed segment most worth compacting: the largest dead share at
    /// or above `dead_ratio_min`, oldest first among equals.
    pub fn candidate(&self, dead_ratio_min: f64) -> Option<u64> {
        let (active, _) = self.active();
        let mut best: Option<(f64, u64)> = None;
        for (&first, stats) in self.segments.range(..active) {
            let ratio = if stats.bytes == 0 { 1.0 } else { stats.dead_bytes() as f64 / stats.bytes as f64 };
            if ratio >= dead_ratio_min && best.is_none_or(|(r, _)| ratio > r) {
                best = Some((ratio, first));
            }
        }
        best.map(|(_, first)| first)
    }

    /// The first offset of the segment holding `offset`, if any does.
    pub fn segment_of(&self, offset: u64) -> Option<u64> {
        let (&first, stats) = self.segments.range(..=offset).next_back()?;
        (offset < first + stats.bytes).then_some(first)
    }

    /// Whether `first` is the oldest segment (its tombstones shadow nothing).
    pub fn is_oldest(&self, first: u64) -> bool {
        self.segments.first_key_value().is_some_and(|(&oldest, _)| oldest == first)
    }

    pub fn stats(&self, first: u64) -> Option<SegmentStats> {
        self.segments.get(&first).copied()
    }

    /// Forgets a compacted segment; its live records must have moved.
    pub fn remove(&mut self, first: u64) {
        let (active, _) = self.active();
        assert_ne!(first, active, "the active segment is never compacted");
        let removed = self.segments.remove(&first).expect("a known segment");
        assert_eq!(removed.live_bytes, 0, "a segment removed with live records");
    }

    /// Bytes on disk in all segments.
    pub fn disk_bytes(&self) -> u64 {
        self.segments.values().map(|s| s.bytes).sum()
    }

    /// Bytes of records still needed.
    pub fn live_bytes(&self) -> u64 {
        self.segments.values().map(|s| s.live_bytes).sum()
    }

    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }
}

#[cfg(test)]
mod tests;
