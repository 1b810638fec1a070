//! Asynchronous writes (docs/spec.md §7; RFC 7240 `Prefer: respond-async`): an
//! unsafe request is appended to its owner shard's durable log, answered
//! `202 Accepted` with `Location: /_writes/{id}`, and delivered to the
//! origin later by this shard's deliverers, in order per cache key, with
//! retries, exponential backoff and full jitter.
//!
//! # Storage
//! In gateway mode the key-value API is not served (every path goes to the
//! origin), so the shard's key-value store and its log hold the queue under
//! reserved keys no client can name, one per write, in the record format
//! of `shardgate_shards::queued`: first the request, then its final
//! status, kept for [`STATUS_TTL_MS`]: one record replaces the other, so a
//! write is never both queued and finished.
//!
//! They are ordinary log records: checksummed, group-committed (fdatasynced
//! before the 202 under `--durability sync`), compacted and replayed at
//! start, when [`recover`] queues every write still queued. The key embeds
//! the cache key's hash, so the write lives on that key's owner shard, also
//! after re-homing to another `--shards` (`route::shard_for_stored_key`): a
//! key's writes stay together and in sequence order. A failed write is also
//! appended to the shard's dead-letter segment,
//! `{data-dir}/dead-letter/shard-{n}.log`, in the log record format.
//!
//! Delivery is at least once: a crash after the origin answered and before
//! the status record is durable delivers the write again. Every delivery
//! carries `Idempotency-Key: {id}` so the origin can drop the repeat.
//!
//! # In a cluster
//! With `--cluster-nats` (docs/spec.md §8) this shard's deliverers publish
//! to the cluster's write stream instead of calling the origin, and the
//! stream's consumers, on whichever nodes are alive, deliver (through
//! [`deliver_from_cluster`] on the key's owner core). Under `sync` a write
//! whose key has nothing queued here is published before its 202; the
//! local record then says `published`, and its final status is the
//! cluster's (the status bucket). While NATS is unreachable writes wait
//! here, in order, and are published when it returns.
//!
//! The id is `{cache key hash:016x}-{sequence:x}`: the hash names the owner
//! of `GET /_writes/{id}`. Each new sequence is above the previous one, above
//! the largest found at start, and at least the current time in milliseconds
//! × 1024, so ids are not reused across restarts.

use std::cell::Cell;
use std::io::Write as _;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use shardgate_http::response::{json_string, Extra, Proxied, Response};
use shardgate_shards::cluster::Purge;
use shardgate_shards::kv::{Op, Outcome};
use shardgate_shards::kvapi::wants_sync;
use shardgate_shards::queued::{
    format_id, is_queued, is_status, open_record, parse_id, parse_write_key, write_key, QueuedWrite, Receipt,
    WriteStatus, LEGACY_STATUS_CONTENT_TYPE, QUEUED_CONTENT_TYPE, STATUS_CONTENT_TYPE, TOKEN_BYTES, WRITE_KEY_PREFIX,
};
use shardgate_shards::record::{Record, RecordOp};
use tokio::sync::oneshot;

use shardgate_http::proxy::ProxyRequest;

use super::state::{now_ms, send, Asker, Gateway};
use crate::cluster::Link;
use crate::config::Durability;
use crate::core::DeliveryOutcome;
use crate::origin::OriginError;
use crate::runtime::logging;
use crate::runtime::metrics::CacheResult;
use crate::storage::segments::sync_dir;

/// How long a final status stays readable at `/_writes/{id}`.
pub const STATUS_TTL_MS: u64 = 24 * 3600 * 1000;
/// Writes delivered at once per shard (one key each).
const DELIVERERS_MAX: usize = 32;
/// First retry delay; doubles per try up to [`BACKOFF_MAX`].
const BACKOFF_BASE: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Sequence numbers per millisecond of start-up time (see the module doc).
const SEQUENCES_PER_MS: u64 = 1024;

/// Queues an unsafe request: logs it, answers 202 (after fdatasync when the
/// write is to be durable), and wakes a deliverer.
pub async fn accept(gateway: &Rc<Gateway>, request: &ProxyRequest) -> Response {
    if gateway.writes.borrow().queued >= gateway.config.write_queue_entries_max {
        gateway.core.metrics().shed();
        return Response::overloaded("the asynchronous write queue of this shard is full");
    }
    // Checked before anything is logged: a refused write must leave no record.
    let store = gateway.core.store();
    let sync = match wants_sync(request.field(b"x-durability"), store.durability() == Durability::Sync) {
        Ok(sync) => sync,
        Err(refused) => return Response::problem(refused.status, refused.detail),
    };
    if let Some(refusal) = gateway.core.write_refusal(sync) {
        return refusal;
    }
    let sequence = {
        let mut queue = gateway.writes.borrow_mut();
        queue.sequence = (queue.sequence + 1).max(now_ms() * SEQUENCES_PER_MS);
        queue.sequence
    };
    let Some(encoded) = request.to_queued().encode() else {
        return Response::problem(431, "a header field of this request is too long to queue");
    };
    let receipt = Receipt { token: random_token(), owner: gateway.identity(request) };
    let mut value = Vec::with_capacity(encoded.len() + 32);
    receipt.encode(&mut value);
    value.extend_from_slice(&encoded);
    let value = Bytes::from(value);
    let op = Op::Put {
        key: write_key(request.hash, sequence),
        value: value.clone(),
        content_type: Bytes::from_static(QUEUED_CONTENT_TYPE),
        ttl_ms: None,
        conditions: Default::default(),
    };
    let logged_end = match store.apply(gateway.core.now_ms(), op) {
        Ok((_, logged_end)) => logged_end,
        Err(field) => {
            let refused = shardgate_shards::kvapi::too_long(field);
            return Response::problem(refused.status, "this request is too large to queue");
        }
    };
    if let Some(end) = logged_end.filter(|_| sync) {
        store.durable(end).await;
    }
    let id = format_id(request.hash, sequence, &receipt.token);
    let published = sync && publish_now(gateway, request.hash, &id, &value).await;
    if published {
        let key = write_key(request.hash, sequence);
        finish(gateway, key, Some(receipt), WriteStatus::Published, &value);
    } else {
        gateway.writes.borrow_mut().push(request.hash, sequence);
        start_deliverer(gateway);
    }
    // Invalidated on acceptance (RFC 9111 §4.4: a 202 is a non-error
    // answer) and again on delivery, so a copy fetched in between goes too.
    gateway.cache.borrow_mut().remove(request.hash);
    notice_key(gateway, request.hash, &request.key);
    gateway.core.metrics().writes(gateway.writes.borrow().queued);
    let body = format!("{{\"id\":\"{id}\",\"status\":\"queued\"}}");
    let headers = format!("\r\nLocation: /_writes/{id}\r\nPreference-Applied: respond-async");
    let proxied =
        Proxied::new(Bytes::from_static(b"Accepted"), Bytes::from(headers), None, Some(CacheResult::Bypass.name()));
    Response {
        status: 202,
        content_type: Some(Bytes::from_static(b"application/json")),
        body: Bytes::from(body),
        extra: Extra::Proxied(Box::new(proxied)),
        ..Response::default()
    }
}

/// Longest a `sync` write waits for the cluster's stream before its 202
/// (then it is delivered from the local log, published later).
const PUBLISH_WAIT: Duration = Duration::from_secs(2);
/// Longest pause between tries to publish while NATS is unreachable.
const PUBLISH_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Publishes a write to the cluster's stream at once when nothing of its
/// key waits here (that would go first); true once the stream stored it.
async fn publish_now(gateway: &Gateway, key_hash: u64, id: &str, value: &Bytes) -> bool {
    let Some(link) = gateway.cluster.as_ref().filter(|link| link.has_nats()) else { return false };
    if gateway.writes.borrow().by_key.contains_key(&key_hash) {
        return false;
    }
    let Some(answer) = link.publish(id.to_string(), key_hash, value.clone()) else { return false };
    matches!(monoio::time::timeout(PUBLISH_WAIT, answer).await, Ok(Ok(true)))
}

/// Tells the other nodes to drop what they store under this cache key.
fn notice_key(gateway: &Gateway, hash: u64, key: &Bytes) {
    if let Some(link) = &gateway.cluster {
        link.notice(Purge::Key { hash, key: key.clone() });
    }
}

/// What `GET /_writes/{id}` found.
enum Seen {
    Queued,
    Finished(WriteStatus),
}

/// A write's receipt and status from the cluster's status bucket.
async fn cluster_status(gateway: &Gateway, id: &[u8]) -> Option<(Receipt, WriteStatus)> {
    let link = gateway.cluster.as_ref().filter(|link| link.has_nats())?;
    let value = link.status(String::from_utf8_lossy(id).into_owned())?.await.ok()??;
    let (receipt, status) = Receipt::decode(&value)?;
    Some((receipt, WriteStatus::decode(status)?))
}

/// `GET /_writes/{id}` on the owner shard: answered only to the client
/// that made the write (its id's token and its identity), or with the admin
/// token; to anyone else the write does not exist (404).
pub async fn status(gateway: &Rc<Gateway>, request: &ProxyRequest, id_text: &[u8]) -> Response {
    let not_found = || Response::problem(404, "no such write (or its status expired)");
    let Some(id) = parse_id(id_text) else {
        return not_found();
    };
    let (receipt, seen) = match read(gateway, write_key(id.key_hash, id.sequence)).await {
        Some((value, content_type)) => {
            let Some((receipt, payload)) = open_record(&content_type, &value) else {
                return Response::problem(500, "unreadable write record");
            };
            if is_queued(&content_type) {
                (receipt, Seen::Queued)
            } else {
                match WriteStatus::decode(payload) {
                    Some(status) => (receipt, Seen::Finished(status)),
                    None => return Response::problem(500, "unreadable write status"),
                }
            }
        }
        // Accepted by another node of the cluster, perhaps.
        None => match cluster_status(gateway, id_text).await {
            Some((receipt, status)) => (Some(receipt), Seen::Finished(status)),
            None => return not_found(),
        },
    };
    let admin = gateway.is_admin(request);
    let allowed = match (receipt, id.token) {
        (Some(receipt), Some(token)) => {
            receipt.token_matches(&token)
                && (admin || receipt.owner.is_some_and(|o| Some(o) == gateway.identity(request)))
        }
        // A write from before ids carried a token: the operator only.
        (None, None) => admin,
        _ => false,
    };
    if !allowed {
        return not_found();
    }
    let id_bytes = id_text;
    let id_text = String::from_utf8_lossy(id_text);
    let json = |state: &str, extra: &str| {
        let mut response = Response::text(200, "");
        response.content_type = Some(Bytes::from_static(b"application/json"));
        response.body = Bytes::from(format!("{{\"id\":\"{id_text}\",\"status\":\"{state}\"{extra}}}"));
        response
    };
    let status = match seen {
        Seen::Queued => return json("queued", ""),
        // In the cluster's stream: its final status is the cluster's.
        Seen::Finished(WriteStatus::Published) => match cluster_status(gateway, id_bytes).await {
            Some((_, status)) => status,
            None => WriteStatus::Published,
        },
        Seen::Finished(status) => status,
    };
    match status {
        WriteStatus::Published => json("queued", ""),
        WriteStatus::Delivered(origin_status) => json("delivered", &format!(",\"origin_status\":{origin_status}")),
        WriteStatus::Failed(reason) => {
            let mut quoted = Vec::with_capacity(reason.len() + 2);
            json_string(&mut quoted, &reason);
            json("failed", &format!(",\"reason\":{}", String::from_utf8_lossy(&quoted)))
        }
    }
}

/// 96 bits from the operating system's CSPRNG.
fn random_token() -> [u8; TOKEN_BYTES] {
    let mut token = [0u8; TOKEN_BYTES];
    // The OS generator failing is not something to serve through.
    getrandom::fill(&mut token).expect("the operating system's random generator works");
    token
}

/// A reserved key's value and content type, from memory or read back from
/// its segment.
async fn read(gateway: &Gateway, key: Bytes) -> Option<(Bytes, Bytes)> {
    let store = gateway.core.store();
    match store.read(gateway.core.now_ms(), &key, &Default::default()) {
        Outcome::Value { value, content_type, .. } => Some((value, content_type)),
        Outcome::Cold { location, etag, .. } => match store.read_cold(key, location, etag).await {
            Ok(Outcome::Value { value, content_type, .. }) => Some((value, content_type)),
            _ => None,
        },
        _ => None,
    }
}

/// Queues every write left in the log (called once the shard recovered),
/// each key's writes in sequence order.
pub fn recover(gateway: &Rc<Gateway>) {
    let stored = gateway.core.store().keys_with_prefix(gateway.core.now_ms(), WRITE_KEY_PREFIX);
    let mut queued: Vec<(u64, u64)> = Vec::new();
    let mut finished: Vec<(u64, u64)> = Vec::new();
    let mut largest = 0;
    for (key, content_type) in &stored {
        let Some((key_hash, sequence)) = parse_write_key(key) else {
            continue;
        };
        largest = largest.max(sequence);
        if is_queued(content_type) {
            queued.push((sequence, key_hash));
        } else if is_status(content_type) {
            finished.push((sequence, key_hash));
        }
    }
    queued.sort_unstable();
    finished.sort_unstable();
    let mut queue = gateway.writes.borrow_mut();
    queue.sequence = queue.sequence.max(largest);
    for &(sequence, key_hash) in &queued {
        queue.push(key_hash, sequence);
    }
    // Sizes of statuses not in memory are not known here: each counts as
    // the largest a status record takes, which keeps the bound conservative.
    for &(sequence, key_hash) in &finished {
        queue.statuses.push_back((key_hash, sequence, STATUS_RECORD_BYTES_ESTIMATE));
        queue.status_bytes += STATUS_RECORD_BYTES_ESTIMATE;
    }
    drop(queue);
    trim_statuses(gateway);
    let queue = gateway.writes.borrow();
    gateway.core.metrics().writes(queue.queued);
    drop(queue);
    if !queued.is_empty() {
        logging::info("queued writes recovered", &[("shard", &gateway.core.id()), ("writes", &queued.len())]);
        start_deliverer(gateway);
    }
}

/// Starts another deliverer while keys wait and fewer than the maximum run.
fn start_deliverer(gateway: &Rc<Gateway>) {
    let mut queue = gateway.writes.borrow_mut();
    if queue.ready.is_empty() || queue.deliverers >= DELIVERERS_MAX {
        return;
    }
    queue.deliverers += 1;
    drop(queue);
    monoio::spawn(deliverer(Rc::clone(gateway)));
}

/// Takes keys with queued writes and delivers each key's writes in order.
/// Ends when no key is ready.
async fn deliverer(gateway: Rc<Gateway>) {
    let seed = Cell::new(now_ms() ^ u64::from(gateway.core.id()) << 32 | 1);
    loop {
        let key_hash = {
            let mut queue = gateway.writes.borrow_mut();
            match queue.ready.pop_front() {
                Some(key_hash) => {
                    queue.busy.insert(key_hash);
                    key_hash
                }
                None => {
                    queue.deliverers -= 1;
                    return;
                }
            }
        };
        loop {
            let next = gateway.writes.borrow().by_key.get(&key_hash).and_then(|ids| ids.front().copied());
            let Some(sequence) = next else {
                break;
            };
            deliver(&gateway, key_hash, sequence, &seed).await;
            let mut queue = gateway.writes.borrow_mut();
            if let Some(ids) = queue.by_key.get_mut(&key_hash) {
                ids.pop_front();
                if ids.is_empty() {
                    queue.by_key.remove(&key_hash);
                }
            }
            queue.queued -= 1;
            gateway.core.metrics().writes(queue.queued);
        }
        gateway.writes.borrow_mut().busy.remove(&key_hash);
    }
}

/// Delivers one write, retrying until the origin answers (any status below
/// 500) or `--write-retries` tries failed; then records the final status
/// and drops the queue record.
async fn deliver(gateway: &Rc<Gateway>, key_hash: u64, sequence: u64, seed: &Cell<u64>) {
    let key = write_key(key_hash, sequence);
    let Some((encoded, content_type)) = read(gateway, key.clone()).await else {
        return;
    };
    if !is_queued(&content_type) {
        return; // Finished already.
    }
    let opened = open_record(&content_type, &encoded);
    let receipt = opened.and_then(|(receipt, _)| receipt);
    let write = opened.and_then(|(_, payload)| QueuedWrite::decode(payload)).map(ProxyRequest::from_queued);
    let Some(write) = write else {
        let failed = WriteStatus::Failed("unreadable queue record".to_string());
        finish(gateway, key, receipt, failed, &encoded);
        gateway.core.metrics().write_done(false);
        return;
    };
    // The origin's Idempotency-Key: the public id where there is one.
    let id = match receipt {
        Some(receipt) => format_id(key_hash, sequence, &receipt.token),
        None => format!("{key_hash:016x}-{sequence:x}"),
    };
    // In a cluster the stream delivers (a legacy record, without a
    // receipt, is still delivered from here).
    if let Some(link) = gateway.cluster.as_ref().filter(|link| link.has_nats() && receipt.is_some()) {
        publish_until_acknowledged(link, &id, key_hash, &encoded, seed).await;
        finish(gateway, key, receipt, WriteStatus::Published, &encoded);
        return;
    }
    let tries = gateway.config.write_retries.max(1);
    let mut last_error = String::new();
    let mut attempt = 0;
    while attempt < tries {
        if attempt > 0 {
            monoio::time::sleep(backoff(attempt, seed)).await;
        }
        // A redelivery is a retry: the origin's retry budget must allow it.
        // One it refuses waits another backoff and costs no try.
        let asker = Asker { identity: key_hash, retry: attempt > 0, wait: true };
        let sent = send(gateway, |host| write.encode_for_delivery(host, &id), None, true, true, asker).await;
        // Only the status matters; a body still arriving is dropped with its
        // connection (not pooled).
        let sent = sent.map(|sent| sent.exchanged.response);
        if matches!(sent, Err(OriginError::RetryRefused)) {
            continue;
        }
        if attempt > 0 {
            gateway.core.metrics().write_retried();
        }
        attempt += 1;
        match sent {
            Ok(response) if response.status < 500 => {
                if response.status < 400 {
                    gateway.cache.borrow_mut().remove(key_hash);
                }
                finish(gateway, key, receipt, WriteStatus::Delivered(response.status), &encoded);
                gateway.core.metrics().write_done(true);
                return;
            }
            Ok(response) => last_error = format!("origin status {}", response.status),
            Err(error) => last_error = error.to_string(),
        }
    }
    let failed = WriteStatus::Failed(format!("after {tries} tries: {last_error}"));
    finish(gateway, key, receipt, failed, &encoded);
    gateway.core.metrics().write_done(false);
}

/// Publishes a queued write to the cluster's stream, again and again (with
/// backoff) until the stream acknowledges it: while NATS is unreachable
/// the write stays in the local log, and is published when it returns.
async fn publish_until_acknowledged(link: &Link, id: &str, key_hash: u64, encoded: &Bytes, seed: &Cell<u64>) {
    let mut attempt = 0;
    loop {
        if let Some(answer) = link.publish(id.to_string(), key_hash, encoded.clone()) {
            if matches!(monoio::time::timeout(PUBLISH_WAIT, answer).await, Ok(Ok(true))) {
                return;
            }
        }
        attempt += 1;
        monoio::time::sleep(backoff(attempt, seed).min(PUBLISH_BACKOFF_MAX)).await;
    }
}

/// One delivery of a write the cluster's stream handed this node, on the
/// owner core of its key; the outcome goes back to the stream's consumer,
/// which acknowledges it or asks for it again (docs/spec.md §8).
pub async fn deliver_from_cluster(
    gateway: Rc<Gateway>,
    write: Bytes,
    id: String,
    retry: bool,
    reply: oneshot::Sender<DeliveryOutcome>,
) {
    let decoded = Receipt::decode(&write).and_then(|(_, rest)| QueuedWrite::decode(rest));
    let Some(queued) = decoded else {
        let _ = reply.send(DeliveryOutcome::Failed("unreadable queue record".to_string()));
        return;
    };
    let write = ProxyRequest::from_queued(queued);
    let asker = Asker { identity: write.hash, retry, wait: true };
    let sent = send(&gateway, |host| write.encode_for_delivery(host, &id), None, true, true, asker).await;
    let outcome = match sent.map(|sent| sent.exchanged.response) {
        Ok(response) => {
            if response.status < 400 {
                gateway.cache.borrow_mut().remove(write.hash);
                notice_key(&gateway, write.hash, &write.key);
            }
            if retry {
                gateway.core.metrics().write_retried();
            }
            DeliveryOutcome::Answered(response.status)
        }
        Err(OriginError::RetryRefused) => DeliveryOutcome::Refused,
        Err(error) => DeliveryOutcome::Failed(error.to_string()),
    };
    let _ = reply.send(outcome);
}

/// Full jitter (AWS architecture blog, "Exponential Backoff And Jitter"):
/// uniform in [0, min(cap, base × 2^attempt)].
fn backoff(attempt: u32, seed: &Cell<u64>) -> Duration {
    let ceiling = BACKOFF_BASE.saturating_mul(1 << attempt.min(16)).min(BACKOFF_MAX);
    // xorshift64: jitter needs spread, not quality.
    let mut x = seed.get();
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    seed.set(x);
    ceiling.mul_f64((x % 10_000) as f64 / 10_000.0).max(Duration::from_millis(1))
}

/// Records the final status in place of the queued request (one record),
/// after appending a failure to the dead-letter segment.
fn finish(gateway: &Gateway, key: Bytes, receipt: Option<Receipt>, status: WriteStatus, encoded: &Bytes) {
    let now = now_ms();
    if matches!(status, WriteStatus::Failed(_)) {
        if let Err(error) = dead_letter(gateway, &key, now, encoded) {
            logging::warn("dead-letter append failed", &[("shard", &gateway.core.id()), ("error", &error)]);
        }
    }
    // A legacy write keeps a legacy status (readable by the operator only).
    let (value, content_type) = match receipt {
        Some(receipt) => {
            let mut value = Vec::with_capacity(64);
            receipt.encode(&mut value);
            value.extend_from_slice(&status.encode());
            (Bytes::from(value), STATUS_CONTENT_TYPE)
        }
        None => (status.encode(), LEGACY_STATUS_CONTENT_TYPE),
    };
    let record_bytes = (key.len() + value.len() + content_type.len()) as u64;
    let (key_hash, sequence) = parse_write_key(&key).expect("a write key");
    let put = Op::Put {
        key,
        value,
        content_type: Bytes::from_static(content_type),
        ttl_ms: Some(STATUS_TTL_MS),
        conditions: Default::default(),
    };
    // A status record is a few bytes under a fixed-size key: it always fits.
    let stored = gateway.core.store().apply(now, put);
    assert!(stored.is_ok(), "a write status fits a record");
    let mut queue = gateway.writes.borrow_mut();
    queue.statuses.push_back((key_hash, sequence, record_bytes));
    queue.status_bytes += record_bytes;
    drop(queue);
    trim_statuses(gateway);
}

/// Status bytes one shard keeps; past them the oldest statuses go first.
const STATUS_BYTES_MAX: u64 = 16 << 20;
/// What a status counts for when its size is not known (after a restart).
const STATUS_RECORD_BYTES_ESTIMATE: u64 = 160;

/// Deletes the oldest statuses while the shard keeps more than
/// [`STATUS_BYTES_MAX`] of them (their 24 h expiry aside).
fn trim_statuses(gateway: &Gateway) {
    loop {
        let mut queue = gateway.writes.borrow_mut();
        if queue.status_bytes <= STATUS_BYTES_MAX {
            return;
        }
        let Some((key_hash, sequence, bytes)) = queue.statuses.pop_front() else {
            return;
        };
        queue.status_bytes -= bytes;
        drop(queue);
        let delete = Op::Delete { key: write_key(key_hash, sequence), conditions: Default::default() };
        let deleted = gateway.core.store().apply(gateway.core.now_ms(), delete);
        assert!(deleted.is_ok(), "a delete always fits a record");
        gateway.core.metrics().write_status_evicted();
    }
}

/// Appends a failed write to `{data-dir}/dead-letter/shard-{n}.log` and
/// fdatasyncs it. Failures are rare (after every retry), so the blocking
/// append on the event loop is accepted.
fn dead_letter(gateway: &Gateway, key: &[u8], now: u64, encoded: &Bytes) -> std::io::Result<()> {
    let data_dir = &gateway.core.config().log.data_dir;
    let dir = data_dir.join("dead-letter");
    let created = !dir.exists();
    if created {
        std::fs::create_dir_all(&dir)?;
        sync_dir(data_dir)?;
    }
    let record = Record {
        op: RecordOp::Put,
        sequence: 0,
        timestamp_ms: now,
        expires_at_ms: None,
        key,
        content_type: QUEUED_CONTENT_TYPE,
        value: encoded,
    };
    let mut bytes = Vec::new();
    record.encode(&mut bytes);
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("shard-{}.log", gateway.core.id())))?;
    file.write_all(&bytes)?;
    file.sync_data()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_exponentially_with_full_jitter_under_the_cap() {
        let seed = Cell::new(0x9e37_79b9_7f4a_7c15);
        for attempt in 1..20u32 {
            let ceiling = BACKOFF_BASE.saturating_mul(1 << attempt.min(16)).min(BACKOFF_MAX);
            let delays: Vec<Duration> = (0..200).map(|_| backoff(attempt, &seed)).collect();
            assert!(delays.iter().all(|d| *d <= ceiling));
            let mean = delays.iter().sum::<Duration>() / 200;
            assert!(mean > ceiling / 4 && mean < ceiling * 3 / 4, "attempt {attempt}: mean {mean:?} of {ceiling:?}");
        }
    }
}
