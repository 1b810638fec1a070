//! The cluster's side thread: one current-thread tokio runtime holding the
//! Redis and NATS clients, so that no core runs tokio or waits on them.
//!
//! Each request from a core becomes a task, at most [`TASKS_MAX`] at once;
//! past that the loop stops taking requests, the queue fills, and cores
//! take their fallbacks. Every call to a service has a deadline.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, kv, stream, AckKind};
use bytes::Bytes;
use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;
use shardgate_shards::cluster::{
    consumer_name, decision_from_reply, rate_key, write_partition, write_subject, Notice, Purge, GIVE_BACK_SCRIPT,
    LEASE_SCRIPT, PURGE_SUBJECT, SCRIPT_BUCKETS, STATUS_BUCKET, WRITES_STREAM, WRITES_SUBJECTS, WRITE_PARTITIONS,
};
use shardgate_shards::queued::{QueuedWrite, Receipt, WriteStatus};
use shardgate_shards::route::shard_for_hash;
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::{Link, Request};
use crate::core::{Answer, CoreMesh, DeliveryOutcome, Forward, LeaseTicket, Message, Reply};
use crate::runtime::logging;
use crate::runtime::metrics::{DeliveryResult, LeaseResult};

/// Requests handled at once.
const TASKS_MAX: usize = 4096;
/// Longest a lease waits for Redis before the core falls back.
const REDIS_TIMEOUT: Duration = Duration::from_millis(200);
/// Between pings while Redis is up, and while it is down.
const REDIS_PING_UP: Duration = Duration::from_secs(1);
const REDIS_PING_DOWN: Duration = Duration::from_millis(250);
/// Longest a publish or a status lookup waits for NATS.
const NATS_TIMEOUT: Duration = Duration::from_secs(2);
/// A pulled write not acknowledged within this goes to another node
/// (a node that died mid-delivery hands its write on after this).
const ACK_WAIT: Duration = Duration::from_secs(5);
/// How long one pull waits for a write before asking again.
const PULL_EXPIRES: Duration = Duration::from_secs(5);
/// Redelivery backoff: from this, doubling per delivery, up to the cap.
const BACKOFF_BASE: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How long a write's status stays in the status bucket.
const STATUS_TTL: Duration = Duration::from_secs(24 * 3600);

pub(super) fn spawn(
    link: Arc<Link>,
    mesh: Arc<CoreMesh>,
    inbox: mpsc::Receiver<Request>,
    write_retries: u32,
) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    std::thread::Builder::new()
        .name("shardgate-cluster".to_string())
        .spawn(move || runtime.block_on(run(link, mesh, inbox, write_retries)))?;
    Ok(())
}

/// The clients, once made.
#[derive(Clone)]
struct Services {
    link: Arc<Link>,
    mesh: Arc<CoreMesh>,
    redis: Option<Redis>,
    nats: Arc<tokio::sync::OnceCell<Nats>>,
    write_retries: u32,
}

async fn run(link: Arc<Link>, mesh: Arc<CoreMesh>, mut inbox: mpsc::Receiver<Request>, write_retries: u32) {
    let redis = link.config().redis.as_deref().and_then(|url| match Redis::new(url) {
        Ok(redis) => Some(redis),
        Err(error) => {
            logging::warn("cannot use --cluster-redis", &[("error", &error)]);
            None
        }
    });
    let services = Services { link, mesh, redis, nats: Arc::new(tokio::sync::OnceCell::new()), write_retries };
    if let Some(redis) = services.redis.clone() {
        tokio::spawn(watch_redis(redis, Arc::clone(&services.link)));
    }
    if let Some(url) = services.link.config().nats.clone() {
        tokio::spawn(start_nats(url, services.clone()));
    }
    let tasks = Arc::new(Semaphore::new(TASKS_MAX));
    while let Some(request) = inbox.recv().await {
        let Ok(permit) = Arc::clone(&tasks).acquire_owned().await else { return };
        let services = services.clone();
        tokio::spawn(async move {
            handle(&services, request).await;
            drop(permit);
        });
    }
}

async fn handle(services: &Services, request: Request) {
    match request {
        Request::Lease { source, token, ticket, want, now_ms } => {
            let answer = match &services.redis {
                Some(redis) => redis.lease(&services.link, ticket, want, now_ms).await,
                None => Answer::LeaseUnavailable,
            };
            services.mesh.reply(source, Reply { token, answer });
        }
        Request::GiveBack { unused, now_ms } => {
            if let Some(redis) = &services.redis {
                redis.give_back(unused, now_ms).await;
            }
        }
        Request::Publish { id, key_hash, payload, reply } => {
            let published = match services.nats.get() {
                Some(nats) => nats.publish(&services.link, &id, key_hash, payload).await,
                None => false,
            };
            let _ = reply.send(published);
        }
        Request::Status { id, reply } => {
            let status = match services.nats.get() {
                Some(nats) => nats.status(&id).await,
                None => None,
            };
            let _ = reply.send(status);
        }
        Request::Notice(purge) => {
            if let Some(nats) = services.nats.get() {
                nats.notice(&services.link, purge).await;
            }
        }
    }
}

#[derive(Clone)]
struct Redis {
    manager: ConnectionManager,
    lease: Arc<Script>,
    give_back: Arc<Script>,
}

impl Redis {
    /// A client that connects on first use and again after a failure.
    fn new(url: &str) -> redis::RedisResult<Redis> {
        let client = redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(REDIS_TIMEOUT))
            .set_response_timeout(Some(REDIS_TIMEOUT))
            .set_number_of_retries(1);
        Ok(Redis {
            manager: ConnectionManager::new_lazy_with_config(client, config)?,
            lease: Arc::new(Script::new(LEASE_SCRIPT)),
            give_back: Arc::new(Script::new(GIVE_BACK_SCRIPT)),
        })
    }

    /// One lease, checked and charged by the script in one step.
    async fn lease(&self, link: &Link, ticket: LeaseTicket, want: u32, now_ms: u64) -> Answer {
        let LeaseTicket { identity, class, policy } = ticket;
        let mut manager = self.manager.clone();
        let mut invocation = self.lease.key(rate_key(identity, class, policy));
        invocation.arg(now_ms).arg(policy.window_ms).arg(policy.limit).arg(want).arg(SCRIPT_BUCKETS);
        let reply = tokio::time::timeout(REDIS_TIMEOUT, invocation.invoke_async::<Vec<i64>>(&mut manager)).await;
        let metrics = link.metrics.cluster();
        match reply.map(|r| r.map(|values| decision_from_reply(&values))) {
            Ok(Ok(Some(decision))) => {
                metrics.lease(if decision.granted > 0 { LeaseResult::Granted } else { LeaseResult::Refused });
                Answer::Lease(decision)
            }
            failed => {
                let error = match failed {
                    Ok(Err(error)) => error.to_string(),
                    Ok(Ok(None)) => "unexpected script reply".to_string(),
                    _ => "timed out".to_string(),
                };
                metrics.lease(LeaseResult::Unavailable);
                redis_down(link, &error);
                Answer::LeaseUnavailable
            }
        }
    }

    async fn give_back(&self, unused: shardgate_shards::ratelimit::Unused, now_ms: u64) {
        let mut manager = self.manager.clone();
        let mut invocation = self.give_back.key(rate_key(unused.identity, unused.class, unused.policy));
        invocation.arg(now_ms).arg(unused.policy.window_ms).arg(unused.permits).arg(unused.charged_ms);
        invocation.arg(SCRIPT_BUCKETS);
        let _ = tokio::time::timeout(REDIS_TIMEOUT, invocation.invoke_async::<i64>(&mut manager)).await;
    }
}

/// Marks Redis unreachable (logged once per change).
fn redis_down(link: &Link, error: &str) {
    if link.redis_up() {
        link.set_redis_up(false);
        let size = link.config().size;
        logging::warn(
            "redis unreachable: each node enforces its rate limits divided by --cluster-size until it answers",
            &[("error", &error), ("cluster_size", &size)],
        );
    }
}

/// Pings Redis: marks it reachable once a ping answers.
async fn watch_redis(redis: Redis, link: Arc<Link>) {
    loop {
        let mut manager = redis.manager.clone();
        let ping = redis::cmd("PING");
        let answered = tokio::time::timeout(REDIS_TIMEOUT, ping.query_async::<String>(&mut manager)).await;
        match answered {
            Ok(Ok(_)) if !link.redis_up() => {
                link.set_redis_up(true);
                logging::info("redis reachable: rate limits are shared by every node", &[]);
            }
            Ok(Ok(_)) => {}
            Ok(Err(error)) => redis_down(&link, &error.to_string()),
            Err(_) => redis_down(&link, "ping timed out"),
        }
        tokio::time::sleep(if link.redis_up() { REDIS_PING_UP } else { REDIS_PING_DOWN }).await;
    }
}

/// The NATS client, the JetStream context and the status bucket.
struct Nats {
    client: async_nats::Client,
    jetstream: jetstream::Context,
    statuses: kv::Store,
}

/// Connects (in the background, again after every loss), makes the stream,
/// the consumers and the bucket when missing, then runs the deliverers,
/// the purge listener and the connection watch.
async fn start_nats(url: String, services: Services) {
    let options = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(1))
        .max_reconnects(None::<usize>)
        .reconnect_delay_callback(|attempts| Duration::from_millis((100 * attempts as u64).min(1000)))
        .name(format!("shardgate {}", services.link.config().node_id));
    let client = match options.connect(url.as_str()).await {
        Ok(client) => client,
        Err(error) => {
            logging::warn("cannot use --cluster-nats", &[("error", &error)]);
            return;
        }
    };
    let jetstream = jetstream::new(client.clone());
    let statuses = loop {
        match prepare(&jetstream).await {
            Ok(statuses) => break statuses,
            Err(error) => {
                logging::warn("nats: cannot prepare the write stream yet", &[("error", &error)]);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    let _ = services.nats.set(Nats { client: client.clone(), jetstream, statuses });
    tokio::spawn(watch_nats(client.clone(), Arc::clone(&services.link)));
    tokio::spawn(listen_purges(client, services.clone()));
    for partition in 0..WRITE_PARTITIONS {
        tokio::spawn(deliverer(partition, services.clone()));
    }
}

/// Creates what is missing: the write stream and the status bucket.
async fn prepare(jetstream: &jetstream::Context) -> Result<kv::Store, async_nats::Error> {
    jetstream
        .get_or_create_stream(stream::Config {
            name: WRITES_STREAM.to_string(),
            subjects: vec![WRITES_SUBJECTS.to_string()],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await?;
    // The bucket's stream made as `create_key_value` would make it: that
    // call sends fields nats-server 2.9 (Debian's) answers in a form the
    // client cannot read.
    jetstream
        .get_or_create_stream(stream::Config {
            name: format!("KV_{STATUS_BUCKET}"),
            subjects: vec![format!("$KV.{STATUS_BUCKET}.>")],
            max_messages_per_subject: 1,
            max_age: STATUS_TTL,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: stream::DiscardPolicy::New,
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await?;
    Ok(jetstream.get_key_value(STATUS_BUCKET).await?)
}

/// Follows the connection: NATS counts as up while connected.
async fn watch_nats(client: async_nats::Client, link: Arc<Link>) {
    loop {
        let up = client.connection_state() == async_nats::connection::State::Connected;
        if up != link.nats_up() {
            link.set_nats_up(up);
            if up {
                logging::info("nats reachable: writes go to the cluster's stream", &[]);
            } else {
                logging::warn("nats unreachable: writes wait in the local log until it returns", &[]);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl Nats {
    /// Publishes a write and records it as queued; true once stored.
    async fn publish(&self, link: &Link, id: &str, key_hash: u64, payload: Bytes) -> bool {
        let Some((receipt, _)) = Receipt::decode(&payload) else { return false };
        let subject = write_subject(write_partition(key_hash));
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", id);
        let stored = tokio::time::timeout(NATS_TIMEOUT, async {
            self.jetstream.publish_with_headers(subject, headers, payload).await?.await?;
            Ok::<_, async_nats::Error>(())
        })
        .await;
        if !matches!(stored, Ok(Ok(()))) {
            return false;
        }
        link.metrics.cluster().published();
        // `create`: a deliverer that already wrote the final status wins.
        let _ = tokio::time::timeout(
            NATS_TIMEOUT,
            self.statuses.create(id, status_value(&receipt, &WriteStatus::Published)),
        )
        .await;
        true
    }

    async fn status(&self, id: &str) -> Option<Bytes> {
        tokio::time::timeout(NATS_TIMEOUT, self.statuses.get(id)).await.ok()?.ok()?
    }

    async fn notice(&self, link: &Link, purge: Purge) {
        let node = Bytes::from(link.config().node_id.clone());
        let Some(bytes) = (Notice { node, purge }).encode() else { return };
        if self.client.publish(PURGE_SUBJECT, Bytes::from(bytes)).await.is_ok() {
            link.metrics.cluster().notice_sent();
        }
    }
}

/// A status as the bucket holds it: the write's receipt, then the status.
fn status_value(receipt: &Receipt, status: &WriteStatus) -> Bytes {
    let mut value = Vec::with_capacity(64);
    receipt.encode(&mut value);
    value.extend_from_slice(&status.encode());
    Bytes::from(value)
}

/// Applies the purges other nodes send.
async fn listen_purges(client: async_nats::Client, services: Services) {
    let mut subscription = loop {
        match client.subscribe(PURGE_SUBJECT).await {
            Ok(subscription) => break subscription,
            Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    };
    let node = services.link.config().node_id.as_bytes();
    while let Some(message) = subscription.next().await {
        let Some(notice) = Notice::decode(&message.payload) else {
            logging::warn("nats: an unreadable purge notice was ignored", &[]);
            continue;
        };
        if notice.node == node {
            continue;
        }
        let mesh = &services.mesh;
        let shards = mesh.shard_count();
        let post = |shard: u32, message: Message| {
            // A full mailbox drops the purge for that shard, as for a core's own.
            let _ = mesh.forward(shard, Forward { source: shard, token: u32::MAX, message });
        };
        match notice.purge {
            Purge::Key { hash, key } => post(shard_for_hash(hash, shards), Message::Purge { hash, key }),
            Purge::Tags { tags, soft } => {
                for shard in 0..shards {
                    post(shard, Message::PurgeTags { tags: tags.clone(), soft, reply: false });
                }
            }
        }
        services.link.metrics.cluster().notice_applied();
    }
}

/// Pulls one partition's writes, one at a time across the cluster, and
/// has the core that owns each write's key deliver it.
async fn deliverer(partition: u32, services: Services) {
    let Some(nats) = services.nats.get() else { return };
    loop {
        let consumer = nats
            .jetstream
            .create_consumer_on_stream(
                pull::Config {
                    durable_name: Some(consumer_name(partition)),
                    filter_subject: write_subject(partition),
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    ack_wait: ACK_WAIT,
                    max_ack_pending: 1,
                    ..Default::default()
                },
                WRITES_STREAM,
            )
            .await;
        let consumer: jetstream::consumer::PullConsumer = match consumer {
            Ok(consumer) => consumer,
            Err(_) => {
                // The server may have come back without its store: make
                // the stream again (a no-op when it is there).
                tokio::time::sleep(Duration::from_secs(1)).await;
                let _ = prepare(&nats.jetstream).await;
                continue;
            }
        };
        loop {
            let batch = consumer.fetch().max_messages(1).expires(PULL_EXPIRES).messages().await;
            let Ok(mut batch) = batch else { break };
            let mut failed = false;
            while let Some(message) = batch.next().await {
                match message {
                    Ok(message) => deliver(&services, nats, message).await,
                    Err(_) => failed = true,
                }
            }
            if failed {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Delivers one write from the stream through its owner core, then
/// acknowledges it, or asks for it again after a backoff, or gives up
/// after `--write-retries` deliveries.
async fn deliver(services: &Services, nats: &Nats, message: jetstream::Message) {
    let metrics = services.link.metrics.cluster();
    let delivered = message.info().map_or(1, |info| info.delivered.max(1) as u32);
    let id = message.headers.as_ref().and_then(|h| h.get("Nats-Msg-Id")).map(|v| v.as_str().to_string());
    let payload = message.payload.clone();
    let opened = Receipt::decode(&payload).and_then(|(receipt, rest)| Some((receipt, QueuedWrite::decode(rest)?)));
    let (Some(id), Some((receipt, write))) = (id, opened) else {
        logging::warn("nats: an unreadable write was dropped from the stream", &[]);
        let _ = message.ack_with(AckKind::Term).await;
        return;
    };
    if let Some(value) = nats.status(&id).await {
        let finished = Receipt::decode(&value)
            .and_then(|(_, status)| WriteStatus::decode(status))
            .is_some_and(|s| !matches!(s, WriteStatus::Published));
        if finished {
            metrics.delivery(DeliveryResult::Skipped);
            let _ = message.ack().await;
            return;
        }
    }
    let (reply, answer) = oneshot::channel();
    let owner = shard_for_hash(write.key_hash, services.mesh.shard_count());
    let request = Message::Deliver { write: payload, id: id.clone(), retry: delivered > 1, reply };
    if services.mesh.forward(owner, Forward { source: owner, token: u32::MAX, message: request }).is_err() {
        let _ = message.ack_with(AckKind::Nak(Some(BACKOFF_BASE))).await;
        metrics.delivery(DeliveryResult::Retried);
        return;
    }
    let outcome = wait_with_progress(&message, answer).await;
    let reason = match outcome {
        Some(DeliveryOutcome::Answered(status)) if status < 500 => {
            let value = status_value(&receipt, &WriteStatus::Delivered(status));
            let _ = tokio::time::timeout(NATS_TIMEOUT, nats.statuses.put(&id, value)).await;
            let _ = message.double_ack().await;
            metrics.delivery(DeliveryResult::Delivered);
            return;
        }
        Some(DeliveryOutcome::Answered(status)) => format!("origin status {status}"),
        Some(DeliveryOutcome::Failed(reason)) => reason,
        // The retry budget refused, or the core is shutting down: later.
        Some(DeliveryOutcome::Refused) | None => {
            let _ = message.ack_with(AckKind::Nak(Some(backoff(delivered, write.key_hash)))).await;
            metrics.delivery(DeliveryResult::Retried);
            return;
        }
    };
    if delivered < services.write_retries.max(1) {
        let _ = message.ack_with(AckKind::Nak(Some(backoff(delivered, write.key_hash)))).await;
        metrics.delivery(DeliveryResult::Retried);
        return;
    }
    let status = WriteStatus::Failed(format!("after {delivered} tries: {reason}"));
    logging::warn("cluster write failed", &[("id", &id), ("tries", &delivered), ("reason", &reason)]);
    let _ = tokio::time::timeout(NATS_TIMEOUT, nats.statuses.put(&id, status_value(&receipt, &status))).await;
    let _ = message.ack_with(AckKind::Term).await;
    metrics.delivery(DeliveryResult::Failed);
}

/// Waits for the core's answer, telling the stream every third of the
/// ack wait that the write is still being worked on.
async fn wait_with_progress(
    message: &jetstream::Message,
    mut answer: oneshot::Receiver<DeliveryOutcome>,
) -> Option<DeliveryOutcome> {
    loop {
        tokio::select! {
            outcome = &mut answer => return outcome.ok(),
            _ = tokio::time::sleep(ACK_WAIT / 3) => {
                let _ = message.ack_with(AckKind::Progress).await;
            }
        }
    }
}

/// Exponential in the deliveries so far, with jitter from the key (writes
/// of different keys spread out; one key's redeliveries stay ordered).
fn backoff(delivered: u32, key_hash: u64) -> Duration {
    let ceiling = BACKOFF_BASE.saturating_mul(1 << delivered.min(16)).min(BACKOFF_MAX);
    ceiling.mul_f64(0.5 + (key_hash % 1000) as f64 / 2000.0)
}
