//! Running a phase of load: threads, connections, the open-loop scheduler,
//! the closed loop, preloading, progress, and the server's CPU and RSS.
//!
//! Open loop, per generator thread: one scheduler task walks the thread's
//! share of the schedule (request `k` of the profile belongs to thread
//! `k mod threads`), sleeps on the timer until about a millisecond before the
//! next due time and then yields in a loop, so requests leave within
//! microseconds of their due time. It hands each request to the next
//! connection round-robin. Each connection has a writer (sends queued
//! requests, at most `pipeline` unanswered) and a reader (parses responses in
//! order). Latency runs from the due time, so a request that waited behind a
//! slow response is charged for the wait (no coordinated omission).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::poll_fn;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, OnceLock};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt, OwnedReadHalf, OwnedWriteHalf, Splitable};
use monoio::net::TcpStream;

use crate::conn::{is_error, parse_response, Class, Conn, Stats, CLASSES, LATENCY_US_MAX};
use crate::procfs;
use crate::schedule::RateProfile;
use crate::workload::{Api, RequestGen, Workload};

/// Where the load goes.
#[derive(Clone, Debug)]
pub struct Target {
    pub addr: SocketAddr,
    pub api: Api,
    /// The server's processes (webdis and redis-server count together),
    /// for CPU time and RSS; empty: not measured.
    pub server_pids: Vec<u32>,
}

/// How the generator runs.
#[derive(Clone, Debug)]
pub struct Options {
    pub threads: usize,
    /// CPUs to pin generator threads to, round-robin; empty: no pinning.
    pub cpus: Vec<usize>,
    /// Print a progress line every second (only on a terminal).
    pub progress: bool,
    pub seed: u64,
}

/// The load of one phase.
#[derive(Clone, Debug)]
pub enum Offered {
    Open(RateProfile),
    Closed(Duration),
}

/// What one second of a phase looked like (by due time for the open loop).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Second {
    pub offered: u64,
    pub responses: u64,
    pub errors: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
    /// Responses by [`Class`], in [`CLASSES`] order.
    pub classes: [u64; CLASSES.len()],
}

/// The responses of one [`Class`] over a phase.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ClassSummary {
    pub class: &'static str,
    pub count: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

/// The outcome of one phase.
#[derive(Clone, Debug)]
pub struct PhaseResult {
    /// Requests the phase issued (scheduled, for the open loop).
    pub issued: u64,
    pub stats: Stats,
    pub elapsed: Duration,
    pub series: Vec<Second>,
    /// How late the scheduler sent requests (open loop), microseconds.
    pub lag_us: Histogram<u64>,
    pub server_cpu: Option<Duration>,
    pub server_rss_peak: Option<u64>,
    /// Responses by class, with their latencies.
    pub classes: Vec<ClassSummary>,
}

/// Counters the threads publish for the progress line.
#[derive(Default)]
struct Progress {
    issued: AtomicU64,
    responses: AtomicU64,
    errors: AtomicU64,
    p99_us: AtomicU64,
}

/// Runs one phase against `target`.
pub fn run_phase(
    target: &Target,
    offered: &Offered,
    connections: usize,
    pipeline: usize,
    timeout: Duration,
    workload: &Workload,
    options: &Options,
) -> Result<PhaseResult> {
    let threads = options.threads.clamp(1, connections);
    let progress = Arc::new(Progress::default());
    let cpu_before = server_cpu(&target.server_pids)?;
    let start = Arc::new(StartGate { barrier: Barrier::new(threads), at: OnceLock::new() });
    let handles: Vec<_> = (0..threads)
        .map(|thread| {
            let spec = ThreadSpec {
                thread,
                threads,
                connections: (thread..connections).step_by(threads).collect(),
                pipeline,
                timeout,
                offered: offered.clone(),
                workload: workload.clone(),
                target: target.clone(),
                seed: options.seed,
                start: Arc::clone(&start),
                cpu: (!options.cpus.is_empty()).then(|| options.cpus[thread % options.cpus.len()]),
                progress: Arc::clone(&progress),
            };
            std::thread::Builder::new().name(format!("bench-{thread}")).spawn(move || run_thread(spec))
        })
        .collect::<std::io::Result<_>>()?;
    let rss_peak = watch(&handles, target, &progress, &start, options.progress);
    let mut total = ThreadResult::new();
    for handle in handles {
        let result = handle.join().map_err(|_| anyhow::anyhow!("a generator thread panicked"))??;
        total.merge(result);
    }
    let elapsed = start.at.get().map_or(Duration::ZERO, Instant::elapsed);
    let server_cpu = match (server_cpu(&target.server_pids)?, cpu_before) {
        (Some(after), Some(before)) => Some(after - before),
        _ => None,
    };
    Ok(PhaseResult {
        issued: total.issued,
        series: total.seconds.iter().map(SecondAcc::summary).collect(),
        stats: total.stats,
        elapsed,
        lag_us: total.lag_us,
        server_cpu,
        server_rss_peak: rss_peak,
        classes: CLASSES
            .iter()
            .zip(&total.class_latency_us)
            .map(|((_, name), h)| {
                let q = |q: f64| if h.is_empty() { 0 } else { h.value_at_quantile(q) };
                ClassSummary { class: name, count: h.len(), p50_us: q(0.5), p99_us: q(0.99), max_us: h.max() }
            })
            .collect(),
    })
}

/// Samples the server's RSS every 100 ms while the generator threads run,
/// and prints a progress line each second when stderr is a terminal.
/// Returns the peak RSS.
fn watch<T>(
    handles: &[std::thread::JoinHandle<T>],
    target: &Target,
    progress: &Progress,
    start: &StartGate,
    show_progress: bool,
) -> Option<u64> {
    let mut rss_peak = None;
    let show = show_progress && std::io::stderr().is_terminal();
    let mut next_line = Instant::now() + Duration::from_secs(1);
    let mut last_responses = 0;
    while handles.iter().any(|h| !h.is_finished()) {
        std::thread::sleep(Duration::from_millis(100));
        if !target.server_pids.is_empty() {
            let rss: Result<u64> = target.server_pids.iter().map(|&pid| procfs::rss_bytes(pid)).sum();
            if let Ok(rss) = rss {
                rss_peak = Some(rss_peak.unwrap_or(0).max(rss));
            }
        }
        let Some(&started) = start.at.get() else { continue };
        if show && Instant::now() >= next_line {
            next_line += Duration::from_secs(1);
            let responses = progress.responses.load(Ordering::Relaxed);
            eprint!(
                "\r{:>6.1}s  offered {:>9}  achieved {:>9}/s  p99 {:>8} µs  errors {:>6}   ",
                started.elapsed().as_secs_f64(),
                progress.issued.load(Ordering::Relaxed),
                responses - last_responses,
                progress.p99_us.load(Ordering::Relaxed),
                progress.errors.load(Ordering::Relaxed),
            );
            last_responses = responses;
        }
    }
    if show {
        eprintln!();
    }
    rss_peak
}

/// CPU time of all the server's processes together; `None` when unmeasured.
fn server_cpu(pids: &[u32]) -> Result<Option<Duration>> {
    if pids.is_empty() {
        return Ok(None);
    }
    pids.iter().map(|&pid| procfs::cpu_time(pid)).sum::<Result<Duration>>().map(Some)
}

struct ThreadSpec {
    thread: usize,
    threads: usize,
    /// Global indexes of this thread's connections.
    connections: Vec<usize>,
    pipeline: usize,
    timeout: Duration,
    offered: Offered,
    workload: Workload,
    target: Target,
    seed: u64,
    start: Arc<StartGate>,
    cpu: Option<usize>,
    progress: Arc<Progress>,
}

/// Where the generator threads meet once every connection is open, so
/// that the schedule's first due time comes after the connects: opening
/// 4,096 connections takes 100 ms and more here, and requests due during it
/// were counted as that much latency.
struct StartGate {
    barrier: Barrier,
    at: OnceLock<Instant>,
}

impl StartGate {
    /// Blocks until every thread arrives; returns the common start time,
    /// shortly after the last arrival.
    fn wait(&self) -> Instant {
        if self.barrier.wait().is_leader() {
            let _ = self.at.set(Instant::now() + Duration::from_millis(20));
        }
        self.barrier.wait();
        *self.at.get().expect("the leader set it before the second wait")
    }
}

/// Per-second accumulation.
struct SecondAcc {
    offered: u64,
    responses: u64,
    errors: u64,
    latency_us: Histogram<u64>,
    classes: [u64; CLASSES.len()],
}

impl SecondAcc {
    fn new() -> SecondAcc {
        SecondAcc {
            offered: 0,
            responses: 0,
            errors: 0,
            latency_us: Histogram::new_with_bounds(1, LATENCY_US_MAX, 2).expect("bounds"),
            classes: [0; CLASSES.len()],
        }
    }

    fn summary(&self) -> Second {
        let h = &self.latency_us;
        let q = |q: f64| if h.is_empty() { 0 } else { h.value_at_quantile(q) };
        Second {
            offered: self.offered,
            responses: self.responses,
            errors: self.errors,
            p50_us: q(0.5),
            p99_us: q(0.99),
            max_us: h.max(),
            classes: self.classes,
        }
    }
}

/// One thread's results, merged across threads at the end.
struct ThreadResult {
    issued: u64,
    stats: Stats,
    seconds: Vec<SecondAcc>,
    lag_us: Histogram<u64>,
    class_latency_us: Vec<Histogram<u64>>,
}

impl ThreadResult {
    fn new() -> ThreadResult {
        ThreadResult {
            issued: 0,
            stats: Stats::new(),
            seconds: Vec::new(),
            lag_us: Histogram::new_with_bounds(1, LATENCY_US_MAX, 2).expect("bounds"),
            class_latency_us: CLASSES
                .iter()
                .map(|_| Histogram::new_with_bounds(1, LATENCY_US_MAX, 2).expect("bounds"))
                .collect(),
        }
    }

    fn second(&mut self, at: Duration) -> &mut SecondAcc {
        let index = at.as_secs() as usize;
        while self.seconds.len() <= index {
            self.seconds.push(SecondAcc::new());
        }
        &mut self.seconds[index]
    }

    fn merge(&mut self, other: ThreadResult) {
        self.issued += other.issued;
        self.stats.merge(&other.stats);
        self.lag_us.add(&other.lag_us).expect("same bounds");
        for (mine, theirs) in self.class_latency_us.iter_mut().zip(&other.class_latency_us) {
            mine.add(theirs).expect("same bounds");
        }
        for (i, second) in other.seconds.into_iter().enumerate() {
            let mine = self.second(Duration::from_secs(i as u64));
            mine.offered += second.offered;
            mine.responses += second.responses;
            mine.errors += second.errors;
            mine.latency_us.add(&second.latency_us).expect("same bounds");
            for (count, theirs) in mine.classes.iter_mut().zip(second.classes) {
                *count += theirs;
            }
        }
    }
}

/// Records results for one thread; shared by its tasks.
struct Recorder {
    started: Instant,
    result: ThreadResult,
    progress: Arc<Progress>,
    recorded: u64,
}

impl Recorder {
    fn issue(&mut self, due: Instant) {
        self.result.issued += 1;
        self.result.second(due.saturating_duration_since(self.started)).offered += 1;
        self.progress.issued.fetch_add(1, Ordering::Relaxed);
    }

    fn response(&mut self, due: Instant, status: u16, class: Class, now: Instant) {
        let latency = now.saturating_duration_since(due);
        self.result.stats.record(status, latency);
        let bad = is_error(status);
        let micros = (latency.as_micros() as u64).max(1);
        self.result.class_latency_us[class as usize].saturating_record(micros);
        let second = self.result.second(due.saturating_duration_since(self.started));
        second.responses += 1;
        second.errors += u64::from(bad);
        second.classes[class as usize] += 1;
        second.latency_us.saturating_record(micros);
        self.progress.responses.fetch_add(1, Ordering::Relaxed);
        self.progress.errors.fetch_add(u64::from(bad), Ordering::Relaxed);
        self.recorded += 1;
        if self.recorded.is_multiple_of(1024) {
            let p99 = self.result.stats.latency_us.value_at_quantile(0.99);
            self.progress.p99_us.fetch_max(p99, Ordering::Relaxed);
        }
    }

    fn failure(&mut self, due: Instant) {
        self.result.stats.failures += 1;
        self.result.second(due.saturating_duration_since(self.started)).errors += 1;
        self.progress.errors.fetch_add(1, Ordering::Relaxed);
    }
}

fn run_thread(spec: ThreadSpec) -> Result<ThreadResult> {
    if let Some(cpu) = spec.cpu {
        shardgate_io::runtime::pin_to_cpu(cpu).with_context(|| format!("pinning to CPU {cpu}"))?;
    }
    let mut runtime = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new().enable_timer().build()?;
    runtime.block_on(thread_main(spec))
}

async fn thread_main(spec: ThreadSpec) -> Result<ThreadResult> {
    let mut conns = Vec::new();
    for &index in &spec.connections {
        let conn = Conn::connect(spec.target.addr).await;
        let conn = match conn {
            Ok(conn) => conn,
            Err(error) => {
                // The other threads wait at the gate: meet them, then fail.
                spec.start.wait();
                return Err(error);
            }
        };
        let generator = RequestGen::new(&spec.workload, spec.target.api, spec.seed, index);
        conns.push((conn, generator));
    }
    let started = spec.start.wait();
    let recorder = Rc::new(RefCell::new(Recorder {
        started,
        result: ThreadResult::new(),
        progress: Arc::clone(&spec.progress),
        recorded: 0,
    }));
    // The phase runs as a spawned task, not inline in `block_on`: monoio
    // re-polls a self-woken main future in a tight loop without polling I/O,
    // which would starve every connection while the scheduler yields.
    let spec = Rc::new(spec);
    let phase = {
        let (spec, recorder) = (Rc::clone(&spec), Rc::clone(&recorder));
        monoio::spawn(async move {
            match &spec.offered {
                Offered::Closed(duration) => closed(&spec, started, conns, *duration, &recorder).await,
                Offered::Open(profile) => open(&spec, started, conns, profile, &recorder).await,
            }
        })
    };
    phase.await;
    let recorder = Rc::try_unwrap(recorder).map_err(|_| anyhow::anyhow!("tasks outlived the phase"))?;
    Ok(recorder.into_inner().result)
}

async fn closed(
    spec: &ThreadSpec,
    started: Instant,
    conns: Vec<(Conn, RequestGen)>,
    duration: Duration,
    recorder: &Rc<RefCell<Recorder>>,
) {
    monoio::time::sleep_until(started.into()).await;
    let until = started + duration;
    let handles: Vec<_> = conns
        .into_iter()
        .map(|(mut conn, mut generator)| {
            let recorder = Rc::clone(recorder);
            let depth = spec.pipeline;
            let timeout = spec.timeout;
            monoio::spawn(async move { closed_conn(&mut conn, &mut generator, depth, until, timeout, &recorder).await })
        })
        .collect();
    for handle in handles {
        handle.await;
    }
}

/// Closed loop on one connection: `depth` requests in flight until `until`,
/// then the outstanding ones are awaited. Latency runs from the send time.
async fn closed_conn(
    conn: &mut Conn,
    generator: &mut RequestGen,
    depth: usize,
    until: Instant,
    timeout: Duration,
    recorder: &Rc<RefCell<Recorder>>,
) {
    let mut sent: VecDeque<Instant> = VecDeque::with_capacity(depth);
    let mut output = Vec::with_capacity(4096);
    let mut due = depth;
    loop {
        if due > 0 && Instant::now() < until {
            output.clear();
            for _ in 0..due {
                generator.next(&mut output);
            }
            let now = Instant::now();
            for _ in 0..due {
                recorder.borrow_mut().issue(now);
                sent.push_back(now);
            }
            let (written, returned) = conn.stream.write_all(output).await;
            output = returned;
            if written.is_err() {
                break;
            }
        }
        due = 0;
        let Some(&oldest) = sent.front() else { return };
        let remaining = (oldest + timeout).saturating_duration_since(Instant::now());
        match monoio::time::timeout(remaining, conn.fill()).await {
            Ok(Ok(())) => {}
            _ => break,
        }
        let now = Instant::now();
        loop {
            match conn.next_classified() {
                Ok(Some((status, class))) => {
                    let started = sent.pop_front().expect("a response answers a request we sent");
                    recorder.borrow_mut().response(started, status, class, now);
                    due += 1;
                }
                Ok(None) => break,
                Err(_) => {
                    let mut recorder = recorder.borrow_mut();
                    sent.drain(..).for_each(|at| recorder.failure(at));
                    return;
                }
            }
        }
    }
    let mut recorder = recorder.borrow_mut();
    sent.drain(..).for_each(|at| recorder.failure(at));
}

/// A connection's side of the open loop, shared by its scheduler, writer and reader.
struct Lane {
    /// Due times of requests handed over but not yet written.
    queued: VecDeque<Instant>,
    /// Due times of requests written and not yet answered, oldest first.
    in_flight: VecDeque<Instant>,
    /// Whether each of `in_flight` is a write (a 200 to it is no hit).
    writes: VecDeque<bool>,
    /// The scheduler is done: finish what is queued and stop.
    finished: bool,
    /// The connection failed; everything on it counts as a failure.
    dead: bool,
    writer: Option<Waker>,
    reader: Option<Waker>,
}

impl Lane {
    fn wake_writer(&mut self) {
        if let Some(waker) = self.writer.take() {
            waker.wake();
        }
    }

    fn wake_reader(&mut self) {
        if let Some(waker) = self.reader.take() {
            waker.wake();
        }
    }
}

async fn open(
    spec: &ThreadSpec,
    started: Instant,
    conns: Vec<(Conn, RequestGen)>,
    profile: &RateProfile,
    recorder: &Rc<RefCell<Recorder>>,
) {
    let mut lanes = Vec::new();
    let (mut readers, mut writers) = (Vec::new(), Vec::new());
    for (conn, generator) in conns {
        let lane = Rc::new(RefCell::new(Lane {
            queued: VecDeque::new(),
            in_flight: VecDeque::new(),
            writes: VecDeque::new(),
            finished: false,
            dead: false,
            writer: None,
            reader: None,
        }));
        let (reader, writer) = conn.stream.into_split();
        let pipeline = spec.pipeline;
        writers.push(monoio::spawn(write_lane(writer, generator, Rc::clone(&lane), pipeline, Rc::clone(recorder))));
        readers.push(monoio::spawn(read_lane(reader, Rc::clone(&lane), spec.timeout, Rc::clone(recorder))));
        lanes.push(lane);
    }
    let mut next = 0;
    for k in (spec.thread as u64..).step_by(spec.threads) {
        let Some(due) = profile.due(k) else { break };
        let due_at = started + due;
        wait_until(due_at).await;
        let now = Instant::now();
        let mut recorder_ref = recorder.borrow_mut();
        recorder_ref.issue(due_at);
        recorder_ref.result.lag_us.saturating_record((now.saturating_duration_since(due_at).as_micros() as u64).max(1));
        // The next connection in turn that has room (each connection is one
        // client: a request does not queue behind another client's slow one
        // while any connection idles); only when none has room, the next
        // live one. Looking at 8 was not enough: with sync PUTs holding
        // 60% of the connections for 0.5 s, one GET in 40 found all 8 busy
        // and waited behind a PUT, which the GETs' p99 then showed.
        let order = (0..lanes.len()).map(|i| (next + i) % lanes.len());
        let roomy = order.clone().find(|&i| {
            let lane = lanes[i].borrow();
            !lane.dead && lane.queued.is_empty() && lane.in_flight.len() < spec.pipeline
        });
        let live = roomy.or_else(|| order.clone().find(|&i| !lanes[i].borrow().dead));
        match live {
            Some(i) => {
                next = i + 1;
                let mut lane = lanes[i].borrow_mut();
                lane.queued.push_back(due_at);
                lane.wake_writer();
            }
            None => recorder_ref.failure(due_at),
        }
    }
    for lane in &lanes {
        let mut lane = lane.borrow_mut();
        lane.finished = true;
        lane.wake_writer();
        lane.wake_reader();
    }
    // Every connection stays open until all have their answers: 4,096
    // connections closing at once while the last requests wait is a burst
    // of work for the server that no client population does, and it showed
    // as a 35-60 ms maximum in the last second of every run.
    // (Dropping a write half sends FIN, so the writers are kept too.)
    let mut open = Vec::with_capacity(readers.len());
    for (reader, writer) in readers.into_iter().zip(writers) {
        open.push((reader.await, writer.await));
    }
    drop(open);
}

/// Sleeps on the timer until about a millisecond before `due`, then yields
/// until it: the timer alone is only millisecond-accurate.
async fn wait_until(due: Instant) {
    loop {
        let now = Instant::now();
        if now >= due {
            return;
        }
        if due - now > Duration::from_millis(2) {
            monoio::time::sleep(due - now - Duration::from_millis(1)).await;
        } else {
            yield_now().await;
        }
    }
}

/// Lets every other ready task run before this one continues. Waking
/// oneself is no yield in monoio: a task notified during its own poll is
/// re-queued at the front. A spawned no-op task goes to the back, and its
/// completion wakes this one from another task, which queues it at the back.
async fn yield_now() {
    monoio::spawn(async {}).await;
}

async fn write_lane(
    mut writer: OwnedWriteHalf<TcpStream>,
    mut generator: RequestGen,
    lane: Rc<RefCell<Lane>>,
    pipeline: usize,
    recorder: Rc<RefCell<Recorder>>,
) -> OwnedWriteHalf<TcpStream> {
    let mut output = Vec::with_capacity(4096);
    loop {
        // Take every queued request that fits within the pipeline depth.
        let batch: Vec<Instant> = poll_fn(|cx| {
            let mut lane = lane.borrow_mut();
            let room = pipeline.saturating_sub(lane.in_flight.len());
            if lane.dead || (lane.finished && lane.queued.is_empty()) {
                return Poll::Ready(Vec::new());
            }
            if room > 0 && !lane.queued.is_empty() {
                let take = room.min(lane.queued.len());
                return Poll::Ready(lane.queued.drain(..take).collect());
            }
            lane.writer = Some(cx.waker().clone());
            Poll::Pending
        })
        .await;
        if batch.is_empty() {
            break;
        }
        output.clear();
        let mut writes = Vec::with_capacity(batch.len());
        for _ in &batch {
            let start = output.len();
            generator.next(&mut output);
            writes.push(output[start..].starts_with(b"PUT "));
        }
        lane.borrow_mut().in_flight.extend(batch.iter().copied());
        lane.borrow_mut().writes.extend(writes);
        lane.borrow_mut().wake_reader();
        let (written, returned) = writer.write_all(output).await;
        output = returned;
        if written.is_err() {
            lane.borrow_mut().dead = true;
            break;
        }
    }
    // A dead lane's unsent requests are failures.
    let mut lane = lane.borrow_mut();
    if lane.dead {
        let mut recorder = recorder.borrow_mut();
        for due in lane.queued.drain(..) {
            recorder.failure(due);
        }
    }
    lane.wake_reader();
    writer
}

/// Records every complete response at the front of `input` against the
/// oldest request in flight. Returns the bytes they took; a malformed or
/// unexpected response marks the lane dead.
fn record_responses(input: &[u8], lane: &RefCell<Lane>, recorder: &RefCell<Recorder>) -> usize {
    let now = Instant::now();
    let mut consumed = 0;
    loop {
        match parse_response(&input[consumed..]) {
            Ok(Some(parsed)) => {
                consumed += parsed.length;
                let (due, write) = {
                    let mut lane = lane.borrow_mut();
                    (lane.in_flight.pop_front(), lane.writes.pop_front().unwrap_or(false))
                };
                let Some(due) = due else {
                    lane.borrow_mut().dead = true;
                    return consumed;
                };
                // A write answered below 500 is counted with the origin-served.
                let class = if write && parsed.class == Class::Hit { Class::Miss } else { parsed.class };
                recorder.borrow_mut().response(due, parsed.status, class, now);
            }
            Ok(None) => return consumed,
            Err(_) => {
                lane.borrow_mut().dead = true;
                return consumed;
            }
        }
    }
}

async fn read_lane(
    mut reader: OwnedReadHalf<TcpStream>,
    lane: Rc<RefCell<Lane>>,
    timeout: Duration,
    recorder: Rc<RefCell<Recorder>>,
) -> OwnedReadHalf<TcpStream> {
    let mut input: Vec<u8> = Vec::with_capacity(64 * 1024);
    loop {
        // Wait until something is in flight (or the lane is over).
        let oldest = poll_fn(|cx| {
            let mut lane = lane.borrow_mut();
            if let Some(&due) = lane.in_flight.front() {
                return Poll::Ready(Some(due));
            }
            if lane.dead || (lane.finished && lane.queued.is_empty()) {
                return Poll::Ready(None);
            }
            lane.reader = Some(cx.waker().clone());
            Poll::Pending
        })
        .await;
        let Some(oldest) = oldest else { break };
        // The oldest request's deadline, counted from its due time.
        let remaining = (oldest + timeout).saturating_duration_since(Instant::now());
        if input.capacity() - input.len() < 16 * 1024 {
            input.reserve(64 * 1024);
        }
        let length = input.len();
        let read = monoio::time::timeout(remaining, reader.read(input.slice_mut(length..))).await;
        let (result, buffer) = match read {
            Ok(done) => done,
            Err(_elapsed) => {
                lane.borrow_mut().dead = true;
                break;
            }
        };
        input = buffer.into_inner();
        match result {
            Ok(n) if n > 0 => {}
            _ => {
                lane.borrow_mut().dead = true;
                break;
            }
        }
        let consumed = record_responses(&input, &lane, &recorder);
        input.drain(..consumed);
        let mut lane_ref = lane.borrow_mut();
        if lane_ref.dead {
            break;
        }
        lane_ref.wake_writer();
    }
    let mut lane = lane.borrow_mut();
    lane.dead = lane.dead || !lane.in_flight.is_empty();
    let mut recorder = recorder.borrow_mut();
    lane.writes.clear();
    let unanswered: Vec<Instant> = lane.in_flight.drain(..).collect();
    let unsent: Vec<Instant> = lane.queued.drain(..).collect();
    unanswered.into_iter().chain(unsent).for_each(|due| recorder.failure(due));
    lane.wake_writer();
    reader
}

/// Writes `workload.preload` keys (ids 0.., the most popular first) with
/// pipelined PUTs over `connections` connections, before measuring.
pub fn preload(target: &Target, workload: &Workload, connections: usize) -> Result<u64> {
    if workload.preload == 0 {
        return Ok(0);
    }
    let mut runtime = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new().enable_timer().build()?;
    runtime
        .block_on(async {
            let failed = Rc::new(AtomicBool::new(false));
            let mut handles = Vec::new();
            for index in 0..connections.min(workload.preload as usize) {
                let mut conn = Conn::connect(target.addr).await?;
                let mut generator = RequestGen::new(workload, target.api, 0, index);
                let ids: Vec<u64> = (index as u64..workload.preload).step_by(connections).collect();
                let api = target.api;
                let failed = Rc::clone(&failed);
                handles.push(monoio::spawn(async move {
                    for chunk in ids.chunks(16) {
                        let mut batch = Vec::new();
                        for &id in chunk {
                            if api == Api::Gateway {
                                generator.read(id, &mut batch); // A cache is filled by reading.
                            } else {
                                let length = generator.value_len();
                                generator.write(id, length, &mut batch);
                            }
                        }
                        match conn.send_batch(&batch, chunk.len()).await {
                            Ok(statuses) if statuses.iter().all(|s| (200..300).contains(s)) => {}
                            _ => {
                                failed.store(true, Ordering::Relaxed);
                                return;
                            }
                        }
                    }
                }));
            }
            for handle in handles {
                handle.await;
            }
            if failed.load(Ordering::Relaxed) {
                bail!("preloading failed: a PUT was refused or a connection broke");
            }
            Ok(workload.preload)
        })
        .context("preloading keys")
}
