//! Start-up and the per-core tasks: one pinned thread per shard, each with
//! its own monoio runtime, its own `SO_REUSEPORT` listener and its own shard.
//!
//! Per core, four kinds of task share one [`Dispatcher`]: the acceptor, one
//! task per connection, the mailbox task (serves other cores' requests and
//! delivers their replies) and the ticker (deadlines, expiry sweep, leases,
//! gauges). Each marks its stretches of work for the stall watchdog.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use monoio::net::TcpListener;
use monoio::{IoUringDriver, LegacyDriver, RuntimeBuilder};
use shardgate_shards::compaction::SegmentBook;
use shardgate_shards::kv::KvShard;

use crate::cluster::Link;
use crate::config::{Driver, GatewayConfig, OriginLimit, ServerConfig};
use crate::conn;
use crate::core::{Answer, Core, CoreMesh, Reply, Shared};
use crate::dispatch::Dispatcher;
use crate::gateway;
use crate::origin::Health;
use crate::runtime::access_log::AccessLog;
use crate::runtime::driver::{uring_builder, RING_ENTRIES};
use crate::runtime::metrics::Metrics;
use crate::runtime::slots::{self, Slots};
use crate::runtime::watchdog::{self, Heartbeats};
use crate::runtime::{fds, install_io_poke, listener, logging, offload, pin_to_cpu, unix_ms, YieldNow};
use crate::storage::compact::{Compactor, Gate};
use crate::storage::durable::{self, CoreLog, LogBounds};
use crate::storage::reader::Reader;
use crate::storage::segments::{self, Flushed};

/// Messages the mailbox task handles before yielding to other tasks.
const MAILBOX_BATCH_MAX: usize = 256;
/// How often the ticker checks deadlines and sweeps expired keys.
const TICK: Duration = Duration::from_millis(250);
/// Expired keys reclaimed per tick, bounding the tick's work.
const SWEEP_PER_TICK_MAX: usize = 1024;
/// How long shutdown waits for connections to finish (SIGTERM → exit ≤ 5 s).
const DRAIN_MAX: Duration = Duration::from_millis(4500);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0} is already in use: another process is serving it")]
    AddressInUse(SocketAddr),
    #[error("cannot bind {address}: {source}")]
    Bind { address: SocketAddr, source: io::Error },
    #[error("shard {shard}: {source}")]
    Shard { shard: u32, source: io::Error },
    #[error("cannot open --access-log: {source}")]
    AccessLog { source: io::Error },
    #[error("cannot start the cluster thread: {source}")]
    Cluster { source: io::Error },
}

/// What one shard reported at start.
#[derive(Clone, Copy, Debug)]
pub struct ShardInfo {
    pub shard: u32,
    pub cpu: usize,
    pub driver: Driver,
}

/// A running server.
pub struct Server {
    pub local_addr: SocketAddr,
    pub shards: Vec<ShardInfo>,
    mesh: Arc<CoreMesh>,
    threads: Vec<JoinHandle<()>>,
    access_log: Option<Arc<AccessLog>>,
}

impl Server {
    /// Stops accepting and drains; returns at once. `join` waits.
    pub fn shutdown(&self) {
        self.mesh.request_shutdown();
    }

    /// Reopens the access log file (SIGHUP, after logrotate moved it).
    pub fn reopen_logs(&self) {
        if let Some(log) = &self.access_log {
            log.reopen();
        }
    }

    pub fn join(self) {
        for thread in self.threads {
            let _ = thread.join();
        }
        if let Some(log) = &self.access_log {
            log.stop();
        }
    }
}

/// Client connections a shard may hold, and the origin connections it may
/// keep idle or have in flight.
pub fn descriptors_per_shard(config: &ServerConfig) -> u64 {
    let origin = config.gateway.as_ref().map_or(0, |g| {
        let in_flight = match g.overload.origin_limit {
            OriginLimit::Fixed(n) => n as usize,
            OriginLimit::Auto => slots::AUTO_CEILING as usize,
        };
        g.origins.len() * (g.pool_connections_max + in_flight)
    });
    (config.connections_max + origin) as u64
}

/// Binds every core's listener, starts every core, and returns once all
/// serve. If any core fails to start, the others are stopped.
pub fn start(config: ServerConfig) -> Result<Server, StartError> {
    let listen = config.listen;
    let address = listener::resolve(listen).map_err(|source| match source.kind() {
        io::ErrorKind::AddrInUse => StartError::AddressInUse(listen),
        _ => StartError::Bind { address: listen, source },
    })?;
    let shard_count = config.shard_count;
    reserve_descriptors(&config);
    let listeners = (0..shard_count)
        .map(|_| listener::bind_reuseport(address, config.backlog, config.driver == Driver::Epoll))
        .collect::<io::Result<Vec<_>>>()
        .map_err(|source| StartError::Bind { address, source })?;
    let access_log = AccessLog::start(&config.access_log).map_err(|source| StartError::AccessLog { source })?;
    let shared = shared_state(config, access_log.clone());
    let cluster = start_cluster(&shared)?;
    watchdog::spawn(Arc::clone(&shared.heartbeats)).map_err(|source| StartError::Shard { shard: 0, source })?;
    let (report_tx, report_rx) = mpsc::channel();
    let mut threads = Vec::new();
    for (shard, listener) in (0..shard_count).zip(listeners) {
        let cpu = shared.config.cpus[shard as usize];
        let (shared, report_tx, cluster) = (shared.clone(), report_tx.clone(), cluster.clone());
        let thread = std::thread::Builder::new()
            .name(format!("shardgate-{shard}"))
            .spawn(move || run_thread(shard, cpu, (shared, cluster), listener, report_tx))
            .map_err(|source| StartError::Shard { shard, source })?;
        threads.push(thread);
    }
    drop(report_tx);
    let mut shards = Vec::new();
    let mut failure = None;
    for report in report_rx.iter().take(shard_count as usize) {
        match report {
            Ok(info) => shards.push(info),
            Err(error) => failure = failure.or(Some(error)),
        }
    }
    if shards.len() != shard_count as usize {
        shared.mesh.request_shutdown();
        for thread in threads {
            let _ = thread.join();
        }
        let source = io::Error::other("a shard thread exited during start-up");
        return Err(failure.unwrap_or(StartError::Shard { shard: 0, source }));
    }
    shards.sort_by_key(|info| info.shard);
    Ok(Server { local_addr: address, shards, mesh: shared.mesh, threads, access_log })
}

/// Grows the descriptor table before any core runs: a table grown later
/// stalls the accepting core.
fn reserve_descriptors(config: &ServerConfig) {
    let needed = fds::needed(config.shard_count, descriptors_per_shard(config));
    match fds::reserve(needed) {
        Ok(size) if size >= needed => {}
        Ok(size) => logging::warn(
            "the open-file limit is below what the connection limits need; accepts past it fail",
            &[("nofile", &size), ("needed", &needed)],
        ),
        Err(error) => logging::warn("cannot size the descriptor table", &[("error", &error)]),
    }
}

/// What every core shares: the configuration, the mesh, the metrics and
/// the per-origin state.
fn shared_state(config: ServerConfig, access_log: Option<Arc<AccessLog>>) -> Shared {
    let shard_count = config.shard_count;
    let origin_urls = config.gateway.as_ref().map(|g| g.origins.iter().map(|o| o.url.clone()).collect());
    let origin_slots = origin_slots(config.gateway.as_ref(), shard_count);
    let origin_health = config.gateway.as_ref().map_or_else(
        || Arc::from([]),
        |g| g.origins.iter().map(|_| Arc::new(Health::new(g.health.interval))).collect(),
    );
    let mut metrics = Metrics::new(shard_count).with_origins(origin_urls.unwrap_or_default());
    if config.cluster.is_some() {
        metrics = metrics.with_cluster();
    }
    Shared {
        access_log,
        config: Arc::new(config),
        mesh: Arc::new(CoreMesh::new(shard_count)),
        metrics: Arc::new(metrics),
        heartbeats: Arc::new(Heartbeats::new(shard_count)),
        origin_slots,
        origin_health,
    }
}

/// The cluster thread (Redis and NATS clients), when the cluster flags ask
/// for one.
fn start_cluster(shared: &Shared) -> Result<Option<Arc<Link>>, StartError> {
    let Some(cluster) = shared.config.cluster.clone() else {
        return Ok(None);
    };
    let write_retries = shared.config.gateway.as_ref().map_or(1, |g| g.write_retries);
    let mesh = Arc::clone(&shared.mesh);
    let link = Link::start(cluster, mesh, Arc::clone(&shared.metrics), write_retries);
    link.map(Some).map_err(|source| StartError::Cluster { source })
}

/// One [`Slots`] per `--origin`, shared by every core.
fn origin_slots(gateway: Option<&GatewayConfig>, shard_count: u32) -> Arc<[Arc<Slots>]> {
    let Some(gateway) = gateway else {
        return Arc::new([]);
    };
    let limit = match gateway.overload.origin_limit {
        OriginLimit::Fixed(limit) => Some(limit),
        OriginLimit::Auto => None,
    };
    gateway.origins.iter().map(|_| Arc::new(Slots::new(limit, shard_count))).collect()
}

type Report = Result<ShardInfo, StartError>;

/// What every core starts from: the shared state and the cluster link.
type Common = (Shared, Option<Arc<Link>>);

fn run_thread(shard: u32, cpu: usize, common: Common, listener: std::net::TcpListener, report: mpsc::Sender<Report>) {
    if let Err(source) = pin_to_cpu(cpu) {
        let _ = report.send(Err(StartError::Shard { shard, source }));
        return;
    }
    let driver = common.0.config.driver;
    let main = core_main(shard, cpu, common, listener, report.clone());
    let built = match driver {
        Driver::Uring(flags) => RuntimeBuilder::<IoUringDriver>::new()
            .with_entries(RING_ENTRIES)
            .uring_builder(uring_builder(flags))
            .enable_timer()
            .build()
            .map(|mut runtime| runtime.block_on(main)),
        Driver::Epoll => {
            RuntimeBuilder::<LegacyDriver>::new().enable_timer().build().map(|mut runtime| runtime.block_on(main))
        }
    };
    if let Err(source) = built {
        let _ = report.send(Err(StartError::Shard { shard, source }));
    }
}

async fn core_main(
    shard: u32,
    cpu: usize,
    (shared, cluster): Common,
    listener: std::net::TcpListener,
    report: mpsc::Sender<Report>,
) {
    let driver = shared.config.driver;
    let listener_fd = listener.as_raw_fd();
    let listener = match TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(source) => {
            let _ = report.send(Err(StartError::Shard { shard, source }));
            return;
        }
    };
    // The core serves at once: /healthz, and 503 everywhere else until every
    // shard has recovered (docs/spec.md §3). Until then its store is empty
    // and takes no writes (dispatch refuses them before `ready`).
    if matches!(driver, Driver::Uring(_)) {
        if let Err(error) = install_io_poke() {
            logging::warn("no socket pair for I/O polls during bursts; using the timer", &[("error", &error)]);
        }
    }
    let core = Rc::new(Core::new(shard, shared));
    core.conns().set_listener(listener_fd);
    let dispatcher = Rc::new(Dispatcher::new(Rc::clone(&core), cluster));
    monoio::spawn(mailbox_loop(Rc::clone(&dispatcher)));
    monoio::spawn(ticker_loop(Rc::clone(&dispatcher)));
    monoio::spawn(recover_in_background(Rc::clone(&dispatcher), cpu));
    if let Some(gateway) = dispatcher.gateway() {
        // One prober for the process: the first core runs it for all.
        if shard == 0 {
            monoio::spawn(gateway::health_loop(Rc::clone(gateway)));
        }
        gateway::start_admission(gateway);
    }
    let _ = report.send(Ok(ShardInfo { shard, cpu, driver }));
    drop(report);
    accept_loop(&dispatcher, &listener).await;
    drop(listener);
    drain(&core).await;
}

/// Replays the shard's segments on a thread pinned to the core's CPU (so the
/// shard's memory is first touched on the core's NUMA node) while the event
/// loop keeps answering /healthz and /readyz; then installs the recovered
/// shard and log and reports the shard ready. A shard that cannot recover
/// ends the process: serving without its data would lose writes.
async fn recover_in_background(dispatcher: Rc<Dispatcher>, cpu: usize) {
    let core = dispatcher.core();
    let (shard, shared) = (core.id(), core.shared().clone());
    let recovered = offload::run(format!("shardgate-recover-{shard}"), move || {
        let _ = pin_to_cpu(cpu);
        recover(shard, &shared.config, &shared.metrics)
    })
    .await;
    let (kv, log, reader) = match recovered {
        Ok(recovered) => recovered,
        Err(error) => {
            logging::error("recovery failed; exiting", &[("shard", &shard), ("error", &error)]);
            std::process::exit(1);
        }
    };
    let store = core.store();
    store.install(kv, log, reader);
    monoio::spawn(durable::flusher(Rc::clone(store.log())));
    let mesh = Arc::clone(core.mesh());
    let reply = move |source, token, outcome| mesh.reply(source, Reply { token, answer: Answer::Kv(Ok(outcome)) });
    monoio::spawn(durable::completions(Rc::clone(store.log()), reply));
    let shared = core.shared();
    let compactor =
        Compactor::new(shard, Rc::clone(store), Arc::clone(&shared.metrics), Arc::clone(&shared.heartbeats));
    match compactor {
        Ok(compactor) => {
            let core = Rc::clone(core);
            monoio::spawn(compactor.run(move || match () {
                _ if core.conns().shutting_down() => Gate::Stop,
                _ if !core.mesh().is_ready() => Gate::Closed,
                _ => Gate::Open,
            }));
        }
        Err(error) => logging::error("no compaction thread; segments are not compacted", &[("error", &error)]),
    }
    if let Some(gateway) = dispatcher.gateway() {
        gateway::writes::recover(gateway);
    }
    core.mesh().shard_recovered();
}

/// Rebuilds the shard from its segments and starts its log's I/O thread
/// and its reader thread.
fn recover(shard: u32, config: &ServerConfig, metrics: &Arc<Metrics>) -> io::Result<(KvShard, CoreLog, Reader)> {
    let log_config = &config.log;
    std::thread::sleep(log_config.recovery_delay);
    let dir = segments::shard_dir(&log_config.data_dir, shard);
    let now_ms = unix_ms(SystemTime::now());
    let mut kv = KvShard::new(config.kv_bytes_per_shard());
    let started = Instant::now();
    let mut live = Vec::new();
    let replayed = segments::replay(&dir, now_ms, |key, item| {
        let (key, content_type) = (Bytes::copy_from_slice(key), Bytes::copy_from_slice(item.content_type));
        match item.value {
            Some(value) => {
                let value = Bytes::copy_from_slice(value);
                kv.restore(now_ms, key, value, content_type, item.expires_at_ms, item.location);
            }
            None => kv.restore_cold(now_ms, key, content_type, item.etag, item.expires_at_ms, item.location),
        }
        live.push(item.location);
    })?;
    let mut book = SegmentBook::recovered(log_config.segment_bytes_max, &replayed.segments);
    for location in live {
        book.restore_live(location);
    }
    logging::info(
        "recovered",
        &[
            ("shard", &shard),
            ("records", &replayed.records),
            ("keys", &kv.keys()),
            ("truncated_bytes", &replayed.truncated_bytes),
            ("skipped_bytes", &replayed.skipped_bytes),
            ("segments", &replayed.segments.len()),
            ("hinted_segments", &replayed.hinted_segments),
            ("log_bytes", &replayed.end),
            ("millis", &started.elapsed().as_millis()),
        ],
    );
    let (jobs, job_queue) = mpsc::sync_channel(1);
    let flushed = Arc::new(Flushed::default());
    let storage = segments::storage_for(log_config);
    segments::spawn_writer(shard, dir, replayed.end, job_queue, Arc::clone(&flushed), Arc::clone(metrics), storage)?;
    let log = CoreLog::new(
        log_config.durability,
        log_config.flush_interval,
        LogBounds {
            backlog_bytes_max: log_config.backlog_bytes_max,
            disk_queue_timeout: log_config.disk_queue_timeout,
        },
        book,
        replayed.sequence_max,
        jobs,
        flushed,
    );
    let stall = log_config.stall_disk_switch.clone();
    Ok((kv, log, Reader::spawn(shard, log_config.disk_queue_timeout, stall)?))
}

async fn accept_loop(dispatcher: &Rc<Dispatcher>, listener: &TcpListener) {
    let core = dispatcher.core();
    loop {
        let accepted = listener.accept().await;
        if core.conns().shutting_down() {
            return;
        }
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(error) => {
                // EMFILE and friends: back off instead of spinning on accept.
                logging::warn("accept failed", &[("shard", &core.id()), ("error", &error)]);
                monoio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(key) = core.conns().open(stream.as_raw_fd(), core.now_ms()) else {
            core.metrics().connection_refused();
            conn::refuse(core, &stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        core.metrics().connections(core.conns().len());
        monoio::spawn(conn::serve(Rc::clone(dispatcher), stream, key));
    }
}

/// Serves the mailbox forever; on the first wake after shutdown was
/// requested, starts this core's shutdown.
async fn mailbox_loop(dispatcher: Rc<Dispatcher>) {
    let core = dispatcher.core();
    let mut shutdown_seen = false;
    loop {
        core.mesh().wait(core.id(), shutdown_seen).await;
        if !shutdown_seen && core.mesh().shutdown_requested() {
            shutdown_seen = true;
            core.conns().begin_shutdown();
        }
        let handled = {
            let _busy = core.busy();
            let now_ms = unix_ms(SystemTime::now());
            dispatcher.drain_mailbox(now_ms, MAILBOX_BATCH_MAX)
        };
        if handled >= MAILBOX_BATCH_MAX {
            YieldNow::new().await;
        }
    }
}

async fn ticker_loop(dispatcher: Rc<Dispatcher>) {
    let core = dispatcher.core();
    loop {
        monoio::time::sleep(TICK).await;
        let _busy = core.busy();
        let now_ms = core.tick(SystemTime::now());
        core.conns().cut_expired(now_ms);
        dispatcher.limiter().expire(now_ms);
        core.store().sweep_expired(now_ms, SWEEP_PER_TICK_MAX);
    }
}

/// Waits for this core's connections and forwards to finish, then for every
/// other core, so no core stops answering a peer that still needs it.
async fn drain(core: &Core) {
    let deadline = Instant::now() + DRAIN_MAX;
    while (!core.conns().is_empty() || core.forwards().in_flight() > 0) && Instant::now() < deadline {
        monoio::time::sleep(Duration::from_millis(5)).await;
    }
    durable::settle(core.store().log()).await;
    core.mesh().core_drained();
    while !core.mesh().all_drained() && Instant::now() < deadline {
        monoio::time::sleep(Duration::from_millis(5)).await;
    }
    // Other cores' last forwards may have appended here meanwhile.
    durable::settle(core.store().log()).await;
}
