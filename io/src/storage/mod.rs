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
//! - `error`: the layer's errors ([`Refusal`], [`ReadError`]).

pub mod compact;
pub mod durable;
mod error;
pub mod reader;
pub mod rehome;
pub mod segments;
pub mod store;

pub use error::{ReadError, Refusal};
pub use store::Store;
