//! Asynchronous writes (SPEC §7, RFC 7240 `Prefer: respond-async`): an
//! unsafe request is appended to its owner shard's durable log, answered
//! `202 Accepted` with `Location: /_writes/{id}`, and delivered to the
//! origin later by this shard's deliverers, in order per cache key, with
//! retries, exponential backoff and full jitter.
//!
//! # Storage
//! In gateway mode the key-value API is not served (every path goes to the
//! origin), so the shard's key-value store and its log hold the queue under
//! reserved keys no client can name, one per write:
//! `\0w/{cache key hash:016x}-{sequence:016x}` ([`WRITE_KEY_PREFIX`]). Its
//! value is first the request, encoded by [`encode`] (content type
//! [`QUEUED_CONTENT_TYPE`]), then its final status, `delivered {status}`
//! or `failed {reason}`, kept for [`STATUS_TTL_MS`]: one record replaces
//! the other, so a write is never both queued and finished.
//!
//! They are ordinary log records: checksummed, group-committed (fdatasynced
//! before the 202 under `--durability sync`), compacted and replayed at
//! start, when [`recover`] queues every write still queued. The key embeds
//! the cache key's hash, so the write lives on that key's owner shard, also
//! after re-homing to another `--shards` ([`shard_for_stored_key`]): a
//! key's writes stay together and in sequence order. A failed write is also
//! appended to the shard's dead-letter segment,
//! `{data-dir}/dead-letter/shard-{n}.log`, in the log record format.
//!
//! Delivery is at least once: a crash after the origin answered and before
//! the status record is durable delivers the write again. Every delivery
//! carries `Idempotency-Key: {id}` so the origin can drop the repeat.
//!
//! The id is `{cache key hash:016x}-{sequence:x}`: the hash names the owner
//! of `GET /_writes/{id}`. Each new sequence is above the previous one, above
//! the largest found at start, and at least the current time in milliseconds
//! × 1024, so ids are not reused across restarts.

use std::cell::Cell;
use std::collections::VecDeque;
use std::io::Write as _;
use std::rc::Rc;
use std::task::Waker;
use std::time::Duration;

use bytes::Bytes;
use hashbrown::{HashMap, HashSet};
use shardgate_shards::kv::{Op, Outcome};
use shardgate_shards::record::{Record, RecordOp};
use shardgate_shards::route::{shard_for_hash, WRITE_KEY_PREFIX};

use super::{now_ms, send, ProxyRequest};
use crate::api::wants_sync;
use crate::core::Core;
use crate::durable::DurableFuture;
use crate::http::codec::Method;
use crate::http::response::{Extra, Proxied, Response};
use crate::metrics::CacheResult;
use crate::reader::read_cold;

/// How long a final status stays readable at `/_writes/{id}`.
pub const STATUS_TTL_MS: u64 = 24 * 3600 * 1000;
/// Writes delivered at once per shard (one key each).
const DELIVERERS_MAX: usize = 32;
/// First retry delay; doubles per try up to [`BACKOFF_MAX`].
const BACKOFF_BASE: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Content type of a queued write's record (for operators reading segments).
pub const QUEUED_CONTENT_TYPE: &[u8] = b"application/x-shardgate-write";
/// Sequence numbers per millisecond of start-up time (see the module doc).
const SEQUENCES_PER_MS: u64 = 1024;

/// One shard's queue of writes awaiting delivery.
#[derive(Default)]
pub struct Queue {
    /// Next sequence number to assign.
    sequence: u64,
    /// Queued sequences per cache-key hash, oldest first.
    by_key: HashMap<u64, VecDeque<u64>>,
    /// Keys with queued writes and no deliverer on them.
    ready: VecDeque<u64>,
    /// Keys a deliverer is working on.
    busy: HashSet<u64>,
    queued: usize,
    deliverers: usize,
    idle: Vec<Waker>,
}

impl Queue {
    fn push(&mut self, key_hash: u64, sequence: u64) {
        let ids = self.by_key.entry(key_hash).or_default();
        ids.push_back(sequence);
        if ids.len() == 1 && !self.busy.contains(&key_hash) {
            self.ready.push_back(key_hash);
        }
        self.queued += 1;
        for waker in self.idle.drain(..) {
            waker.wake();
        }
    }

    pub fn queued(&self) -> usize {
        self.queued
    }
}

/// `{key_hash:016x}-{sequence:x}`.
pub fn format_id(key_hash: u64, sequence: u64) -> String {
    format!("{key_hash:016x}-{sequence:x}")
}

/// The cache key hash and sequence of an id; None when malformed.
pub fn parse_id(text: &[u8]) -> Option<(u64, u64)> {
    let text = std::str::from_utf8(text).ok()?;
    let (hash, sequence) = text.split_once('-')?;
    let hex = |s: &str| !s.is_empty() && s.len() <= 16 && s.bytes().all(|b| b.is_ascii_hexdigit());
    if hash.len() != 16 || !hex(hash) || !hex(sequence) {
        return None;
    }
    Some((u64::from_str_radix(hash, 16).ok()?, u64::from_str_radix(sequence, 16).ok()?))
}

/// The owner shard of a write id.
pub fn owner_of_id(key_hash: u64, shard_count: u32) -> u32 {
    shard_for_hash(key_hash, shard_count)
}

fn write_key(key_hash: u64, sequence: u64) -> Bytes {
    Bytes::from([WRITE_KEY_PREFIX, format!("{key_hash:016x}-{sequence:016x}").as_bytes()].concat())
}

/// The cache key hash and sequence in a write key.
fn parse_write_key(key: &[u8]) -> Option<(u64, u64)> {
    let rest = std::str::from_utf8(key.strip_prefix(WRITE_KEY_PREFIX)?).ok()?;
    let (hash, sequence) = rest.split_once('-')?;
    Some((u64::from_str_radix(hash, 16).ok()?, u64::from_str_radix(sequence, 16).ok()?))
}

/// Queues an unsafe request: logs it, answers 202 (after fdatasync when the
/// write is to be durable), and wakes a deliverer.
pub async fn accept(core: &Rc<Core>, request: &ProxyRequest) -> Response {
    let gateway = core.gateway.as_ref().expect("gateway core");
    if gateway.writes.borrow().queued >= gateway.config.write_queue_max {
        core.metrics().shed();
        return Response::overloaded("the asynchronous write queue of this shard is full");
    }
    // Checked before anything is logged: a refused write must leave no record.
    let sync = match wants_sync(request.field(b"x-durability"), core.log.borrow().durability) {
        Ok(sync) => sync,
        Err(response) => return response,
    };
    if let Some(refusal) = core.write_refusal() {
        return refusal;
    }
    let sequence = {
        let mut queue = gateway.writes.borrow_mut();
        queue.sequence = (queue.sequence + 1).max(now_ms() * SEQUENCES_PER_MS);
        queue.sequence
    };
    let op = Op::Put {
        key: write_key(request.hash, sequence),
        value: encode(request),
        content_type: Bytes::from_static(QUEUED_CONTENT_TYPE),
        ttl_ms: None,
        conditions: Default::default(),
    };
    let (_, logged_end) = core.apply(now_ms(), op);
    if let Some(end) = logged_end.filter(|_| sync) {
        DurableFuture { log: Rc::clone(&core.log), end }.await;
    }
    gateway.writes.borrow_mut().push(request.hash, sequence);
    // Invalidated on acceptance (RFC 9111 §4.4: a 202 is a non-error
    // answer) and again on delivery, so a copy fetched in between goes too.
    gateway.cache.borrow_mut().remove(request.hash);
    start_deliverer(core);
    core.metrics().writes(gateway.writes.borrow().queued);
    let id = format_id(request.hash, sequence);
    let body = format!("{{\"id\":\"{id}\",\"status\":\"queued\"}}");
    let headers = format!("\r\nLocation: /_writes/{id}\r\nPreference-Applied: respond-async");
    let proxied = Proxied {
        reason: Bytes::from_static(b"Accepted"),
        headers: Bytes::from(headers),
        age_s: None,
        x_cache: Some(CacheResult::Bypass.name()),
    };
    Response {
        status: 202,
        content_type: Some(Bytes::from_static(b"application/json")),
        body: Bytes::from(body),
        extra: Extra::Proxied(Box::new(proxied)),
        ..Response::default()
    }
}

/// `GET /_writes/{id}` on the owner shard.
pub async fn status(core: &Rc<Core>, id_text: &[u8]) -> Response {
    let Some((key_hash, sequence)) = parse_id(id_text) else {
        return Response::problem(404, "no such write");
    };
    let id = format_id(key_hash, sequence);
    let json = |state: &str, extra: &str| {
        let mut response = Response::text(200, "");
        response.content_type = Some(Bytes::from_static(b"application/json"));
        response.body = Bytes::from(format!("{{\"id\":\"{id}\",\"status\":\"{state}\"{extra}}}"));
        response
    };
    let Some((value, content_type)) = read(core, write_key(key_hash, sequence)).await else {
        return Response::problem(404, "no such write (or its status expired)");
    };
    if content_type == QUEUED_CONTENT_TYPE {
        return json("queued", "");
    }
    let text = String::from_utf8_lossy(&value);
    match text.split_once(' ') {
        Some(("delivered", origin_status)) => match origin_status.parse::<u16>() {
            Ok(origin_status) => json("delivered", &format!(",\"origin_status\":{origin_status}")),
            Err(_) => Response::problem(500, "unreadable write status"),
        },
        Some(("failed", reason)) => {
            let mut quoted = Vec::with_capacity(reason.len() + 2);
            crate::http::response::json_string(&mut quoted, reason);
            json("failed", &format!(",\"reason\":{}", String::from_utf8_lossy(&quoted)))
        }
        _ => Response::problem(500, "unreadable write status"),
    }
}

/// A reserved key's value and content type, from memory or read back from
/// its segment.
async fn read(core: &Rc<Core>, key: Bytes) -> Option<(Bytes, Bytes)> {
    match core.read(now_ms(), &key, &Default::default()) {
        Outcome::Value { value, content_type, .. } => Some((value, content_type)),
        Outcome::Cold { location, content_type, etag } => {
            match read_cold(Rc::clone(core), key, location, content_type, etag).await {
                Ok(Outcome::Value { value, content_type, .. }) => Some((value, content_type)),
                _ => None,
            }
        }
        _ => None,
    }
}

/// Queues every write left in the log (called once the shard recovered),
/// each key's writes in sequence order.
pub fn recover(core: &Rc<Core>) {
    let Some(gateway) = core.gateway.as_ref() else {
        return;
    };
    let stored = core.shard.borrow().keys_with_prefix(now_ms(), WRITE_KEY_PREFIX);
    let mut queued: Vec<(u64, u64)> = Vec::new();
    let mut largest = 0;
    for (key, content_type) in &stored {
        let Some((key_hash, sequence)) = parse_write_key(key) else {
            continue;
        };
        largest = largest.max(sequence);
        if content_type == QUEUED_CONTENT_TYPE {
            queued.push((sequence, key_hash));
        }
    }
    queued.sort_unstable();
    let mut queue = gateway.writes.borrow_mut();
    queue.sequence = queue.sequence.max(largest);
    for &(sequence, key_hash) in &queued {
        queue.push(key_hash, sequence);
    }
    core.metrics().writes(queue.queued);
    drop(queue);
    if !queued.is_empty() {
        crate::logging::info("queued writes recovered", &[("shard", &core.id), ("writes", &queued.len())]);
        start_deliverer(core);
    }
}

/// Starts another deliverer while keys wait and fewer than the maximum run.
fn start_deliverer(core: &Rc<Core>) {
    let gateway = core.gateway.as_ref().expect("gateway core");
    let mut queue = gateway.writes.borrow_mut();
    if queue.ready.is_empty() || queue.deliverers >= DELIVERERS_MAX {
        return;
    }
    queue.deliverers += 1;
    drop(queue);
    monoio::spawn(deliverer(Rc::clone(core)));
}

/// Takes keys with queued writes and delivers each key's writes in order.
/// Ends when no key is ready.
async fn deliverer(core: Rc<Core>) {
    let gateway = core.gateway.as_ref().expect("gateway core");
    let seed = Cell::new(now_ms() ^ u64::from(core.id) << 32 | 1);
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
            deliver(&core, key_hash, sequence, &seed).await;
            let mut queue = gateway.writes.borrow_mut();
            if let Some(ids) = queue.by_key.get_mut(&key_hash) {
                ids.pop_front();
                if ids.is_empty() {
                    queue.by_key.remove(&key_hash);
                }
            }
            queue.queued -= 1;
            core.metrics().writes(queue.queued);
        }
        gateway.writes.borrow_mut().busy.remove(&key_hash);
    }
}

/// Delivers one write, retrying until the origin answers (any status below
/// 500) or `--write-retries` tries failed; then records the final status
/// and drops the queue record.
async fn deliver(core: &Rc<Core>, key_hash: u64, sequence: u64, seed: &Cell<u64>) {
    let gateway = core.gateway.as_ref().expect("gateway core");
    let key = write_key(key_hash, sequence);
    let Some((encoded, content_type)) = read(core, key.clone()).await else {
        return;
    };
    if content_type != QUEUED_CONTENT_TYPE {
        return; // Finished already.
    }
    let Some(write) = decode(&encoded) else {
        finish(core, key, "failed unreadable queue record".to_string(), &encoded);
        core.metrics().write_done(false);
        return;
    };
    let id = format_id(key_hash, sequence);
    let tries = gateway.config.write_retries.max(1);
    let mut last_error = String::new();
    for attempt in 0..tries {
        if attempt > 0 {
            core.metrics().write_retried();
            monoio::time::sleep(backoff(attempt, seed)).await;
        }
        let sent = send(core, |origin| write.encode_for_origin_with(origin, &id), true, true).await;
        match sent {
            Ok(response) if response.status < 500 => {
                if response.status < 400 {
                    gateway.cache.borrow_mut().remove(key_hash);
                }
                finish(core, key, format!("delivered {}", response.status), &encoded);
                core.metrics().write_done(true);
                return;
            }
            Ok(response) => last_error = format!("origin status {}", response.status),
            Err(error) => last_error = error.to_string(),
        }
    }
    finish(core, key, format!("failed after {tries} tries: {last_error}"), &encoded);
    core.metrics().write_done(false);
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
fn finish(core: &Rc<Core>, key: Bytes, status: String, encoded: &Bytes) {
    let now = now_ms();
    if status.starts_with("failed") {
        if let Err(error) = dead_letter(core, &key, now, encoded) {
            crate::logging::warn("dead-letter append failed", &[("shard", &core.id), ("error", &error)]);
        }
    }
    let put = Op::Put {
        key,
        value: Bytes::from(status),
        content_type: Bytes::from_static(b"text/plain"),
        ttl_ms: Some(STATUS_TTL_MS),
        conditions: Default::default(),
    };
    core.apply(now, put);
}

/// Appends a failed write to `{data-dir}/dead-letter/shard-{n}.log` and
/// fdatasyncs it. Failures are rare (after every retry), so the blocking
/// append on the event loop is accepted.
fn dead_letter(core: &Core, key: &[u8], now: u64, encoded: &Bytes) -> std::io::Result<()> {
    let dir = core.config.log.data_dir.join("dead-letter");
    std::fs::create_dir_all(&dir)?;
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
    let mut file =
        std::fs::OpenOptions::new().create(true).append(true).open(dir.join(format!("shard-{}.log", core.id)))?;
    file.write_all(&bytes)?;
    file.sync_data()
}

/// Layout (little-endian): key hash u64, method token (u16 length + bytes),
/// target (u32 + bytes), field count u16 then per field name (u16 + bytes)
/// and value (u32 + bytes), peer (u16 + text, empty when unknown), body
/// (u32 + bytes).
pub fn encode(request: &ProxyRequest) -> Bytes {
    let mut out = Vec::with_capacity(64 + request.target.len() + request.body.len() + request.fields.len() * 48);
    out.extend_from_slice(&request.hash.to_le_bytes());
    put(&mut out, &request.method_token, 2);
    put(&mut out, &request.target, 4);
    out.extend_from_slice(&(request.fields.len() as u16).to_le_bytes());
    for (name, value) in &request.fields {
        put(&mut out, name, 2);
        put(&mut out, value, 4);
    }
    put(&mut out, request.peer.map(|p| p.to_string()).unwrap_or_default().as_bytes(), 2);
    put(&mut out, &request.body, 4);
    Bytes::from(out)
}

fn put(out: &mut Vec<u8>, bytes: &[u8], width: usize) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes()[..width]);
    out.extend_from_slice(bytes);
}

/// The inverse of [`encode`]; None for bytes it did not produce.
fn decode(bytes: &[u8]) -> Option<ProxyRequest> {
    let mut cursor = Cursor { rest: bytes };
    let key_hash = u64::from_le_bytes(cursor.take(8)?.try_into().ok()?);
    let method_token = cursor.sized(2)?;
    let target = cursor.sized(4)?;
    let count = u16::from_le_bytes(cursor.take(2)?.try_into().ok()?);
    let mut fields = Vec::with_capacity(count as usize);
    for _ in 0..count {
        fields.push((cursor.sized(2)?, cursor.sized(4)?));
    }
    let peer = cursor.sized(2)?;
    let body = cursor.sized(4)?;
    if !cursor.rest.is_empty() {
        return None;
    }
    let method = match &method_token[..] {
        b"POST" => Method::Post,
        b"PUT" => Method::Put,
        b"PATCH" => Method::Patch,
        b"DELETE" => Method::Delete,
        _ => Method::Other,
    };
    let peer = std::str::from_utf8(&peer).ok().and_then(|p| p.parse().ok());
    let key = Bytes::new();
    Some(ProxyRequest { method, method_token, target, key, hash: key_hash, fields, peer, body })
}

struct Cursor<'a> {
    rest: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, tail) = (self.rest.get(..n)?, self.rest.get(n..)?);
        self.rest = tail;
        Some(head)
    }

    /// A length of `width` bytes, then that many bytes.
    fn sized(&mut self, width: usize) -> Option<Bytes> {
        let mut length = [0u8; 4];
        length[..width].copy_from_slice(self.take(width)?);
        self.take(u32::from_le_bytes(length) as usize).map(Bytes::copy_from_slice)
    }
}

impl ProxyRequest {
    /// The request as delivered: as sent by the client, plus `Idempotency-Key`.
    fn encode_for_origin_with(&self, origin: &super::OriginAddress, id: &str) -> Bytes {
        let encoded = self.encode_for_origin(origin, None);
        // Insert the field after the request line.
        let line_end = encoded.iter().position(|&b| b == b'\n').map_or(0, |i| i + 1);
        let mut out = Vec::with_capacity(encoded.len() + 40);
        out.extend_from_slice(&encoded[..line_end]);
        out.extend_from_slice(b"Idempotency-Key: ");
        out.extend_from_slice(id.as_bytes());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&encoded[line_end..]);
        Bytes::from(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_reject_garbage() {
        assert_eq!(parse_id(format_id(3, 0x1f).as_bytes()), Some((3, 0x1f)));
        assert_eq!(parse_write_key(&write_key(u64::MAX, 9)), Some((u64::MAX, 9)));
        for bad in [&b""[..], b"3", b"-1", b"3-1", b"000000000000000x-1", b"0000000000000003-", b"0000000000000003-1-2"]
        {
            assert_eq!(parse_id(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn queued_writes_round_trip_and_truncation_is_refused() {
        let request = ProxyRequest {
            method: Method::Put,
            method_token: Bytes::from_static(b"PUT"),
            target: Bytes::from_static(b"/items/1?x=y"),
            key: Bytes::new(),
            hash: 42,
            fields: vec![
                (Bytes::from_static(b"Host"), Bytes::from_static(b"api")),
                (Bytes::from_static(b"X-A"), Bytes::new()),
            ],
            peer: Some("10.0.0.1".parse().unwrap()),
            body: Bytes::from_static(b"{\"a\":1}"),
        };
        let encoded = encode(&request);
        assert_eq!(decode(&encoded), Some(request));
        for cut in 0..encoded.len() {
            assert!(decode(&encoded[..cut]).is_none(), "truncated at {cut}");
        }
    }

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
