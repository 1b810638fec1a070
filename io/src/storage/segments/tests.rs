use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::*;

/// Waits (bounded by attempts) until `done` holds.
fn eventually(done: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

#[test]
fn a_full_disk_is_retried_and_a_half_written_job_cut_back() {
    let dir = tempfile::tempdir().unwrap();
    let switch = dir.path().join("full");
    let shard_dir = dir.path().join("shard-000");
    fs::create_dir_all(&shard_dir).unwrap();
    let (jobs, queue) = mpsc::sync_channel(1);
    let flushed = Arc::new(Flushed::default());
    let storage = Box::new(Faulty { full: Some(switch.clone()), stall: None });
    spawn_writer(0, shard_dir.clone(), 0, queue, Arc::clone(&flushed), Arc::new(Metrics::new(1)), storage).unwrap();
    let segment = shard_dir.join(segment_name(0));

    jobs.send(FlushJob { start: 0, bytes: vec![1; 100], new_segment: false }).unwrap();
    assert!(eventually(|| flushed.durable_end.load(Ordering::Acquire) == 100));
    fs::write(&switch, b"").unwrap();
    jobs.send(FlushJob { start: 100, bytes: vec![2; 100], new_segment: false }).unwrap();
    assert!(eventually(|| flushed.failed.load(Ordering::Acquire)), "the failure is published");
    // Half of the job reached the file and was cut off again.
    assert!(eventually(|| fs::metadata(&segment).unwrap().len() == 100));
    assert_eq!(flushed.durable_end.load(Ordering::Acquire), 100);
    fs::remove_file(&switch).unwrap();
    assert!(eventually(|| flushed.durable_end.load(Ordering::Acquire) == 200), "retried once space returns");
    assert!(!flushed.failed.load(Ordering::Acquire));
    let bytes = fs::read(&segment).unwrap();
    assert_eq!(bytes.len(), 200);
    assert!(bytes[..100].iter().all(|&b| b == 1) && bytes[100..].iter().all(|&b| b == 2));
}

#[test]
fn a_job_that_starts_a_segment_creates_it() {
    let dir = tempfile::tempdir().unwrap();
    let (jobs, queue) = mpsc::sync_channel(1);
    let flushed = Arc::new(Flushed::default());
    spawn_writer(
        0,
        dir.path().to_path_buf(),
        0,
        queue,
        Arc::clone(&flushed),
        Arc::new(Metrics::new(1)),
        Box::new(Disk),
    )
    .unwrap();
    jobs.send(FlushJob { start: 0, bytes: vec![1; 10], new_segment: false }).unwrap();
    jobs.send(FlushJob { start: 10, bytes: vec![2; 5], new_segment: true }).unwrap();
    assert!(eventually(|| flushed.durable_end.load(Ordering::Acquire) == 15));
    let found: Vec<(u64, u64)> = segments(dir.path())
        .unwrap()
        .into_iter()
        .map(|(first, path)| (first, fs::metadata(path).unwrap().len()))
        .collect();
    assert_eq!(found, vec![(0, 10), (10, 5)]);
}
