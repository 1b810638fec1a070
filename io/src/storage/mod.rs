//! The storage layer: one shard's durable log and its keydir, knowing
//! nothing of HTTP.
//!
//! - [`segments`]: segment files, the I/O thread that appends and
//!   fdatasyncs them, hint files, recovery at start, the [`segments::Storage`]
//!   fault seam.
//! - [`durable`]: a core's append buffer, group commit, durability waits.
//! - [`reader`]: reading evicted values back, off the event loop.
//! - [`store`]: the keydir and the log kept in step ([`Store`]).
//! - [`compact`]: background compaction of sealed segments.
//! - [`rehome`]: moving every key to its owner under a new `--shards`.

pub mod compact;
pub mod durable;
pub mod reader;
pub mod rehome;
pub mod segments;
pub mod store;

pub use store::Store;

/// Why the log takes no write now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the data disk is refusing writes (full?); reads still work")]
    DiskFailing,
    #[error("the log's unflushed backlog is full")]
    BacklogFull,
}

/// Why an evicted value could not be read back.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    #[error("too many reads from disk queued on this shard")]
    QueueFull,
    #[error("a stored value could not be read back from disk: {0}")]
    Unreadable(String),
}
