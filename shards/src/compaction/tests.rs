use super::*;

#[test]
fn appends_roll_when_the_next_record_does_not_fit() {
    let mut book = SegmentBook::new(100, 0);
    assert_eq!(book.append(60, true), (Location { offset: 0, bytes: 60 }, false));
    assert_eq!(book.append(40, true), (Location { offset: 60, bytes: 40 }, false));
    assert_eq!(book.append(1, true), (Location { offset: 100, bytes: 1 }, true));
    // An empty segment takes a record larger than the bound.
    let mut book = SegmentBook::new(100, 0);
    assert_eq!(book.append(500, true), (Location { offset: 0, bytes: 500 }, false));
    assert_eq!(book.append(10, false), (Location { offset: 500, bytes: 10 }, true));
    assert_eq!(book.end(), 510);
    assert_eq!((book.disk_bytes(), book.live_bytes(), book.segment_count()), (510, 500, 2));
}

#[test]
fn dead_records_make_sealed_segments_candidates() {
    let mut book = SegmentBook::new(100, 0);
    let a: Vec<Location> = (0..4).map(|_| book.append(25, true).0).collect();
    let b: Vec<Location> = (0..4).map(|_| book.append(25, true).0).collect();
    book.append(25, true); // active segment 200..
    assert_eq!(book.candidate(0.5), None);
    book.dead(a[0]);
    book.dead(a[1]);
    book.dead(b[0]);
    book.dead(b[1]);
    book.dead(b[2]);
    // Segment 100 is 75% dead, segment 0 50%: the deader first.
    assert_eq!(book.candidate(0.5), Some(100));
    assert_eq!(book.candidate(0.8), None);
    assert!(book.is_oldest(0) && !book.is_oldest(100));
    // The active segment is never a candidate, however dead.
    let mut active = SegmentBook::new(100, 0);
    let only = active.append(10, true).0;
    active.dead(only);
    assert_eq!(active.candidate(0.0), None);
}

#[test]
fn removing_a_compacted_segment() {
    let mut book = SegmentBook::new(100, 0);
    let a = book.append(50, true).0;
    let b = book.append(50, true).0;
    book.append(50, true);
    book.dead(a);
    // Compaction moves b to the head, then drops segment 0.
    let (moved, _) = book.append(50, true);
    book.dead(b);
    book.remove(0);
    assert_eq!(book.stats(0), None);
    assert_eq!(moved.offset, 150);
    // A record of a removed segment dying again is ignored.
    book.dead(a);
    assert_eq!((book.disk_bytes(), book.live_bytes()), (100, 100));
}

#[test]
#[should_panic(expected = "a segment removed with live records")]
fn removing_a_segment_with_live_records_is_a_bug() {
    let mut book = SegmentBook::new(100, 0);
    book.append(100, true);
    book.append(100, true);
    book.remove(0);
}

#[test]
fn recovered_books_count_what_is_restored() {
    let mut book = SegmentBook::recovered(100, &[(0, 90), (90, 100), (190, 20)]);
    assert_eq!(book.end(), 210);
    book.restore_live(Location { offset: 10, bytes: 30 });
    book.restore_live(Location { offset: 195, bytes: 15 });
    assert_eq!(book.stats(0), Some(SegmentStats { bytes: 90, live_bytes: 30 }));
    assert_eq!(book.candidate(0.5), Some(90), "segment 90 holds nothing live");
    assert_eq!(SegmentBook::recovered(100, &[]).end(), 0);
}
