//! The pure side of several nodes serving together (docs/spec.md §8): the
//! names and scripts shardgate uses in Redis and NATS JetStream, the
//! partition of a write, and the purge notices nodes send each other.
//!
//! # Global rate limits (Redis)
//! Redis plays the part the owner shard plays inside one node
//! (`ratelimit`): it holds each identity's sliding window, and every core of
//! every node leases blocks of permits from it with [`LEASE_SCRIPT`], which
//! checks and charges in one atomic step, so two nodes can never both be
//! granted the last permits. The window is the one [`crate::ratelimit`]
//! keeps, bucket for bucket ([`SUB_WINDOWS`] counters, the oldest sliding
//! out linearly), stored as one Redis key per bucket that expires once it
//! has left the window. The caller's clock names the bucket: nodes must
//! agree on the time to well within a bucket (NTP does; a bucket is a
//! window / 8).
//!
//! # Writes (JetStream)
//! A write is published to subject `shardgate.writes.{partition}` of
//! stream [`WRITES_STREAM`], its partition taken from its cache key's hash,
//! with its id as `Nats-Msg-Id` (the stream drops a repeat within its
//! duplicate window). Each partition has one durable consumer that allows
//! one unacknowledged message at a time: whichever node pulls it delivers
//! it, and the next write of the partition waits for the acknowledgement,
//! so one key's writes reach the origin in order whoever delivers them.
//! Statuses live in the key-value bucket [`STATUS_BUCKET`] under the id.
//!
//! # Purges (NATS core)
//! A purge or an invalidation is published on [`PURGE_SUBJECT`] as a
//! [`Notice`]; every node applies the ones another node sent.

use bytes::Bytes;

use crate::ratelimit::{Class, Decision, Policy, SUB_WINDOWS};

/// Partitions of the write stream: the most writes delivered at once
/// across the cluster, one per partition.
pub const WRITE_PARTITIONS: u32 = 16;
/// The JetStream stream that holds writes until a node delivers them.
pub const WRITES_STREAM: &str = "SHARDGATE_WRITES";
/// The subjects of [`WRITES_STREAM`].
pub const WRITES_SUBJECTS: &str = "shardgate.writes.*";
/// The JetStream key-value bucket of write statuses.
pub const STATUS_BUCKET: &str = "shardgate_write_status";
/// Where purges and invalidations go to every node.
pub const PURGE_SUBJECT: &str = "shardgate.purge";

/// The partition of a write to the key with this hash.
pub fn write_partition(key_hash: u64) -> u32 {
    // The high half: the owner shard (`route`) is chosen from the whole
    // hash, so this spreads one node's shards over every partition.
    ((key_hash >> 32) % u64::from(WRITE_PARTITIONS)) as u32
}

/// The subject a write of `partition` is published on.
pub fn write_subject(partition: u32) -> String {
    format!("shardgate.writes.{partition}")
}

/// The durable consumer that delivers `partition`'s writes.
pub fn consumer_name(partition: u32) -> String {
    format!("shardgate-deliver-{partition}")
}

/// The prefix of an identity's bucket keys for one policy. The policy is
/// in the name, so nodes configured with different limits do not share a
/// window by accident.
pub fn rate_key(identity: u64, class: Class, policy: Policy) -> String {
    let class = match class {
        Class::All => "all",
        Class::Writes => "writes",
    };
    format!("shardgate:rl:{class}:{}:{}:{identity:016x}", policy.limit, policy.window_ms)
}

/// `KEYS[1]` the prefix ([`rate_key`]); `ARGV`: now in ms, the window in
/// ms, the limit, permits wanted, buckets in the window (`SUB_WINDOWS - 1`).
/// Returns `{granted, remaining, reset_ms, retry_after_ms}` as
/// `ratelimit::Window::acquire` computes them (the retry time is the first
/// moment within the current bucket, else the bucket's end).
pub const LEASE_SCRIPT: &str = r#"
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
local want = tonumber(ARGV[4])
local n = tonumber(ARGV[5])
local width = math.max(math.floor(window / n), 1)
local bucket = math.floor(now / width)
local elapsed = now - bucket * width
local names = {}
for i = 0, n do names[i + 1] = KEYS[1] .. ':' .. (bucket - n + i) end
local counts = redis.call('MGET', unpack(names))
local oldest = tonumber(counts[1]) or 0
local recent = 0
for i = 2, n + 1 do recent = recent + (tonumber(counts[i]) or 0) end
local used = recent * width + oldest * (width - elapsed)
local capacity = limit * width
local fit = 0
if capacity > used then fit = math.floor((capacity - used) / width) end
local granted = math.min(want, fit)
if granted > 0 then
  redis.call('INCRBY', names[n + 1], granted)
  redis.call('PEXPIRE', names[n + 1], (n + 1) * width)
end
local reset = (bucket + 1) * width - now
local retry = 0
if granted == 0 then
  retry = reset
  local need = capacity - width
  if oldest > 0 then
    local wait = math.ceil((used - need) / oldest)
    if wait < width - elapsed then retry = math.max(wait, 1) end
  end
end
return {granted, fit - granted, reset, retry}
"#;

/// `KEYS[1]` the prefix; `ARGV`: now in ms, the window in ms, permits, the
/// time they were charged in ms, buckets in the window. Takes unused
/// permits back from the bucket that counted them while it is in the
/// window (`ratelimit::Window::give_back`).
pub const GIVE_BACK_SCRIPT: &str = r#"
local now = tonumber(ARGV[1])
local width = math.max(math.floor(tonumber(ARGV[2]) / tonumber(ARGV[5])), 1)
local permits = tonumber(ARGV[3])
local charged = math.floor(tonumber(ARGV[4]) / width)
local bucket = math.floor(now / width)
if charged > bucket or bucket - charged > tonumber(ARGV[5]) then return 0 end
local name = KEYS[1] .. ':' .. charged
local count = tonumber(redis.call('GET', name)) or 0
local taken = math.min(count, permits)
if taken > 0 then redis.call('DECRBY', name, taken) end
return taken
"#;

/// Buckets in a window: the `ARGV[5]` of both scripts.
pub const SCRIPT_BUCKETS: u64 = SUB_WINDOWS as u64 - 1;

/// A [`LEASE_SCRIPT`] answer as a decision; None for anything else.
pub fn decision_from_reply(values: &[i64]) -> Option<Decision> {
    let &[granted, remaining, reset_ms, retry_after_ms] = values else {
        return None;
    };
    let count = |v: i64| u32::try_from(v).ok();
    let millis = |v: i64| u64::try_from(v).ok();
    Some(Decision {
        granted: count(granted)?,
        remaining: count(remaining)?,
        reset_ms: millis(reset_ms)?,
        retry_after_ms: millis(retry_after_ms)?,
    })
}

/// What a purge notice asks every node to drop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Purge {
    /// Everything stored under one cache key (a URL).
    Key { hash: u64, key: Bytes },
    /// Every object carrying one of these surrogate keys; `soft` marks them
    /// stale instead.
    Tags { tags: Vec<Bytes>, soft: bool },
}

/// A purge one node sends the others.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    /// The sender's `--node-id`: a node skips its own notices.
    pub node: Bytes,
    pub purge: Purge,
}

const NOTICE_VERSION: u8 = 1;
const NOTICE_KEY: u8 = 0;
const NOTICE_TAGS: u8 = 1;
/// Longest node id, cache key or tag a notice carries.
pub const NOTICE_FIELD_MAX: usize = u16::MAX as usize;
/// Most tags one notice carries.
pub const NOTICE_TAGS_MAX: usize = 1024;

impl Notice {
    /// `version, node, kind, …` with 16-bit lengths; None when a field is
    /// too long to encode.
    pub fn encode(&self) -> Option<Vec<u8>> {
        let mut out = vec![NOTICE_VERSION];
        put_field(&mut out, &self.node)?;
        match &self.purge {
            Purge::Key { hash, key } => {
                out.push(NOTICE_KEY);
                out.extend_from_slice(&hash.to_le_bytes());
                put_field(&mut out, key)?;
            }
            Purge::Tags { tags, soft } => {
                if tags.len() > NOTICE_TAGS_MAX {
                    return None;
                }
                out.push(NOTICE_TAGS);
                out.push(u8::from(*soft));
                out.extend_from_slice(&(tags.len() as u16).to_le_bytes());
                for tag in tags {
                    put_field(&mut out, tag)?;
                }
            }
        }
        Some(out)
    }

    /// The inverse of [`Notice::encode`]; None for anything else (a notice
    /// from a newer version, a truncated or padded one).
    pub fn decode(bytes: &[u8]) -> Option<Notice> {
        let mut input = Reader(bytes);
        if input.byte()? != NOTICE_VERSION {
            return None;
        }
        let node = input.field()?;
        let purge = match input.byte()? {
            NOTICE_KEY => {
                let hash = u64::from_le_bytes(input.take(8)?.try_into().ok()?);
                Purge::Key { hash, key: input.field()? }
            }
            NOTICE_TAGS => {
                let soft = match input.byte()? {
                    0 => false,
                    1 => true,
                    _ => return None,
                };
                let count = u16::from_le_bytes(input.take(2)?.try_into().ok()?) as usize;
                if count > NOTICE_TAGS_MAX {
                    return None;
                }
                let tags = (0..count).map(|_| input.field()).collect::<Option<Vec<_>>>()?;
                Purge::Tags { tags, soft }
            }
            _ => return None,
        };
        input.0.is_empty().then_some(Notice { node, purge })
    }
}

fn put_field(out: &mut Vec<u8>, field: &[u8]) -> Option<()> {
    let len = u16::try_from(field.len()).ok()?;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(field);
    Some(())
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn byte(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn field(&mut self) -> Option<Bytes> {
        let len = u16::from_le_bytes(self.take(2)?.try_into().ok()?) as usize;
        self.take(len).map(Bytes::copy_from_slice)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_round_trip_and_reject_anything_else() {
        let notices = [
            Notice { node: Bytes::from_static(b"n1"), purge: Purge::Key { hash: 7, key: Bytes::from_static(b"k") } },
            Notice {
                node: Bytes::from_static(b"node-2"),
                purge: Purge::Tags { tags: vec![Bytes::from_static(b"a"), Bytes::from_static(b"")], soft: true },
            },
            Notice { node: Bytes::new(), purge: Purge::Tags { tags: vec![], soft: false } },
        ];
        for notice in notices {
            let bytes = notice.encode().expect("fits");
            assert_eq!(Notice::decode(&bytes), Some(notice.clone()));
            for cut in 0..bytes.len() {
                assert_eq!(Notice::decode(&bytes[..cut]), None, "{notice:?} cut at {cut}");
            }
            let mut padded = bytes.clone();
            padded.push(0);
            assert_eq!(Notice::decode(&padded), None);
            let mut newer = bytes;
            newer[0] = NOTICE_VERSION + 1;
            assert_eq!(Notice::decode(&newer), None);
        }
    }

    #[test]
    fn notices_refuse_fields_too_long_to_encode() {
        let long = Bytes::from(vec![b'x'; NOTICE_FIELD_MAX + 1]);
        let cases = [
            Notice { node: long.clone(), purge: Purge::Tags { tags: vec![], soft: false } },
            Notice { node: Bytes::new(), purge: Purge::Key { hash: 1, key: long.clone() } },
            Notice { node: Bytes::new(), purge: Purge::Tags { tags: vec![long], soft: false } },
            Notice {
                node: Bytes::new(),
                purge: Purge::Tags { tags: vec![Bytes::new(); NOTICE_TAGS_MAX + 1], soft: false },
            },
        ];
        for notice in cases {
            assert_eq!(notice.encode(), None);
        }
    }

    #[test]
    fn script_replies_become_decisions_only_when_well_formed() {
        let cases: [(&[i64], Option<Decision>); 5] = [
            (&[3, 5, 100, 0], Some(Decision { granted: 3, remaining: 5, reset_ms: 100, retry_after_ms: 0 })),
            (&[0, 0, 40, 12], Some(Decision { granted: 0, remaining: 0, reset_ms: 40, retry_after_ms: 12 })),
            (&[1, 2, 3], None),
            (&[-1, 0, 0, 0], None),
            (&[1, 1 << 40, 0, 0], None),
        ];
        for (reply, decision) in cases {
            assert_eq!(decision_from_reply(reply), decision, "{reply:?}");
        }
    }

    #[test]
    fn writes_spread_over_every_partition_and_keys_stay_in_theirs() {
        let mut seen = [0u32; WRITE_PARTITIONS as usize];
        for i in 0..10_000u64 {
            let hash = crate::route::key_hash(&i.to_le_bytes());
            let partition = write_partition(hash);
            assert_eq!(partition, write_partition(hash));
            seen[partition as usize] += 1;
        }
        assert!(seen.iter().all(|&n| n > 10_000 / WRITE_PARTITIONS / 2), "{seen:?}");
        assert_eq!(write_subject(3), "shardgate.writes.3");
    }

    #[test]
    fn rate_keys_name_the_class_policy_and_identity() {
        let policy = Policy::new(100, 1000).unwrap();
        assert_eq!(rate_key(0xab, Class::All, policy), "shardgate:rl:all:100:1000:00000000000000ab");
        assert_ne!(rate_key(0xab, Class::Writes, policy), rate_key(0xab, Class::All, policy));
    }
}
