//! The key-value API (docs/spec.md §2): a request for `/v1/kv/{key}` applied
//! on the key's owner shard, here or through the mesh, and the outcome as
//! a response.

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;

use bytes::Bytes;
use shardgate_http::codec::{Method, Request};
use shardgate_http::response::{Extra, Response};
use shardgate_shards::conditions::{Conditions, TagList};
use shardgate_shards::kv::{Op, Outcome, CONTENT_TYPE_DEFAULT};
use shardgate_shards::kvapi::{self, RequestError};
use shardgate_shards::record;
use shardgate_shards::route::shard_for_stored_key;

use crate::config::Durability;
use crate::core::{Answer, Core, Message, Reply, ReplyFuture};
use crate::storage::durable::DurableFuture;
use crate::storage::ReadError;

/// The path prefix of the key-value API.
pub const KV_PREFIX: &[u8] = b"/v1/kv/";
const KV_ALLOW: &str = "GET, HEAD, PUT, DELETE";

/// What a key-value request turned into.
pub enum Step {
    Ready(Response),
    Pending(Pending),
}

/// A key-value request whose response waits on something.
pub enum Pending {
    /// Sent to the owner shard; the response is built from its outcome.
    Remote { reply: ReplyFuture, owner: u32 },
    /// Applied here; answered once its log record is durable.
    Durable { wait: DurableFuture, response: Response },
    /// The value was evicted: read back from its segment on this core.
    Disk { read: Pin<Box<dyn Future<Output = Result<Outcome, ReadError>>>>, owner: u32 },
}

impl Pending {
    /// Waits, then answers.
    pub async fn response(self, shard_count: u32) -> Response {
        match self {
            Pending::Remote { reply, owner } => match reply.await {
                Answer::Kv(Ok(outcome)) => kv_response(outcome, owner, shard_count),
                Answer::Kv(Err(refusal)) => with_shard(refusal, owner, shard_count),
                Answer::Lease(_) | Answer::LeaseUnavailable | Answer::Gateway(_) | Answer::Purged(_) => {
                    unreachable!("a key-value op is answered with an outcome")
                }
            },
            Pending::Durable { wait, response } => {
                wait.await;
                response
            }
            Pending::Disk { read, owner } => match read.await {
                Ok(outcome) => kv_response(outcome, owner, shard_count),
                Err(error) => with_shard(read_error_response(&error), owner, shard_count),
            },
        }
    }
}

/// Builds the shard op of a key-value request, copying out of the input only
/// what the op keeps, and applies or forwards it.
pub fn request(core: &Rc<Core>, request: &Request<'_>, raw_key: &[u8], query: &[u8], now_ms: u64) -> Step {
    let key = match kvapi::decode_key(raw_key) {
        Ok(key) => key,
        Err(refused) => return Step::Ready(refused_response(refused)),
    };
    let shard_count = core.shard_count();
    let owner = shard_for_stored_key(&key, shard_count);
    let conditions = Conditions {
        if_match: request.if_match.map(TagList::parse),
        if_none_match: request.if_none_match.map(TagList::parse),
    };
    let local = owner == core.id();
    let refuse = |response: Response| Step::Ready(with_shard(response, owner, shard_count));
    let op = match request.method {
        Method::Get | Method::Head if local => return read_local(core, &key, &conditions, owner, now_ms),
        Method::Get | Method::Head => Op::Get { key: Bytes::copy_from_slice(&key), conditions },
        Method::Delete => Op::Delete { key: Bytes::copy_from_slice(&key), conditions },
        Method::Put => {
            let ttl_ms = match kvapi::parse_ttl(query) {
                Ok(ttl) => ttl.map(|s| s * 1000),
                Err(refused) => return refuse(refused_response(refused)),
            };
            let content_type = request.content_type.unwrap_or(CONTENT_TYPE_DEFAULT);
            if let Err(field) = record::check_lengths(&key, content_type, request.body) {
                // Refused where it arrived, before it is copied or forwarded.
                return refuse(refused_response(kvapi::too_long(field)));
            }
            Op::Put {
                key: Bytes::copy_from_slice(&key),
                value: Bytes::copy_from_slice(request.body),
                content_type: match request.content_type {
                    Some(content_type) => Bytes::copy_from_slice(content_type),
                    None => Bytes::from_static(CONTENT_TYPE_DEFAULT),
                },
                ttl_ms,
                conditions,
            }
        }
        _ => {
            let response = Response::problem(405, "use GET, HEAD, PUT or DELETE");
            return refuse(Response { extra: Extra::Allow(&KV_ALLOW), ..response });
        }
    };
    let is_write = !matches!(op, Op::Get { .. });
    let store = core.store();
    let sync = match kvapi::wants_sync(request.x_durability, store.durability() == Durability::Sync) {
        Ok(sync) => sync && is_write,
        Err(refused) => return refuse(refused_response(refused)),
    };
    if !local {
        return match core.forward(owner, Message::Kv { op, sync }) {
            Ok(reply) => Step::Pending(Pending::Remote { reply, owner }),
            Err(response) => refuse(response),
        };
    }
    if let Some(refusal) = core.write_refusal(sync).filter(|_| is_write) {
        return refuse(refusal);
    }
    let (outcome, logged_end) = match store.apply(now_ms, op) {
        Ok(applied) => applied,
        Err(field) => return refuse(refused_response(kvapi::too_long(field))),
    };
    let response = kv_response(outcome, owner, shard_count);
    match logged_end.filter(|_| sync) {
        Some(end) => Step::Pending(Pending::Durable { wait: store.durable(end), response }),
        None => Step::Ready(response),
    }
}

/// A GET or HEAD of a key this core owns: from memory, or read back from disk.
fn read_local(core: &Rc<Core>, key: &[u8], conditions: &Conditions, owner: u32, now_ms: u64) -> Step {
    match core.store().read(now_ms, key, conditions) {
        Outcome::Cold { location, etag, .. } => {
            let (core, key) = (Rc::clone(core), Bytes::copy_from_slice(key));
            let read = Box::pin(async move { core.store().read_cold(key, location, etag).await });
            Step::Pending(Pending::Disk { read, owner })
        }
        outcome => Step::Ready(kv_response(outcome, owner, core.shard_count())),
    }
}

/// Applies a key-value op another core forwarded, and replies to `source`:
/// at once, once its record is durable (`sync`), or once its value was
/// read back from disk.
pub fn serve_forwarded(core: &Rc<Core>, source: u32, token: u32, op: Op, sync: bool, now_ms: u64) {
    let mesh = core.mesh();
    let is_write = !matches!(op, Op::Get { .. });
    if let Some(refusal) = core.write_refusal(sync).filter(|_| is_write) {
        mesh.reply(source, Reply { token, answer: Answer::Kv(Err(refusal)) });
        return;
    }
    let key = op.key().clone();
    let store = core.store();
    let (outcome, logged_end) = match store.apply(now_ms, op) {
        Ok(applied) => applied,
        Err(field) => {
            let refusal = refused_response(kvapi::too_long(field));
            mesh.reply(source, Reply { token, answer: Answer::Kv(Err(refusal)) });
            return;
        }
    };
    if let Outcome::Cold { location, etag, .. } = outcome {
        // Read from disk on this core, then answer.
        let core = Rc::clone(core);
        monoio::spawn(async move {
            let read = core.store().read_cold(key, location, etag).await;
            let answer = Answer::Kv(read.map_err(|error| read_error_response(&error)));
            core.mesh().reply(source, Reply { token, answer });
        });
        return;
    }
    match logged_end.filter(|_| sync) {
        Some(end) => store.defer_reply(end, source, token, outcome),
        // Waking per reply still costs one cross-thread wake per batch:
        // after the first, the source's waker is taken until it re-polls.
        None => mesh.reply(source, Reply { token, answer: Answer::Kv(Ok(outcome)) }),
    }
}

fn with_shard(response: Response, owner: u32, shard_count: u32) -> Response {
    Response { shard: Some((owner, shard_count)), ..response }
}

fn refused_response(refused: RequestError) -> Response {
    Response::problem(refused.status, refused.detail)
}

/// The response to a failed read from disk: 503 when the read queue is
/// full or the read waited past its deadline, 500 when the record is
/// unreadable (a failing disk).
pub fn read_error_response(error: &ReadError) -> Response {
    match error {
        ReadError::QueueFull | ReadError::Timeout => Response::overloaded(&error.to_string()),
        ReadError::Unreadable(_) => Response::problem(500, &error.to_string()),
    }
}

/// Maps a shard's outcome to the HTTP response of docs/spec.md §2.
pub fn kv_response(outcome: Outcome, owner: u32, shard_count: u32) -> Response {
    let response = match outcome {
        Outcome::Value { value, content_type, etag } => Response {
            status: 200,
            content_type: Some(content_type),
            etag: Some(etag),
            body: value,
            ..Response::default()
        },
        Outcome::NotModified { etag } => Response { etag: Some(etag), ..Response::new(304) },
        Outcome::NotFound => Response::problem(404, "no such key"),
        Outcome::Stored { etag, created, .. } => {
            Response { etag: Some(etag), ..Response::new(if created { 201 } else { 200 }) }
        }
        Outcome::Deleted => Response::new(204),
        Outcome::PreconditionFailed => {
            Response::problem(412, "a precondition (If-Match / If-None-Match) does not hold")
        }
        // A cold read is resolved by reading the segment before this point.
        Outcome::Cold { .. } => Response::problem(500, "a value was not read back from disk"),
    };
    with_shard(response, owner, shard_count)
}
