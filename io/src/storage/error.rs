//! The storage layer's errors.

/// Why the log takes no write now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the data disk is refusing writes (full?); reads still work")]
    DiskFailing,
    #[error("the log's unflushed backlog is full")]
    BacklogFull,
    #[error("too many sync writes wait for the disk on this shard")]
    SyncWaitersFull,
    #[error("the disk has not finished a group commit within --disk-queue-timeout")]
    SyncTimeout,
}

/// Why an evicted value could not be read back.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    #[error("too many reads from disk queued on this shard")]
    QueueFull,
    #[error("a read from disk waited longer than --disk-queue-timeout")]
    Timeout,
    #[error("a stored value could not be read back from disk: {0}")]
    Unreadable(String),
}
