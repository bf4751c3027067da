//! One client session: a thread that serves the request ring and writes the response
//! ring, plus a watcher thread blocked on the control socket whose EOF means the client
//! is gone.
//!
//! Everything the client writes is hostile input: each request frame is copied once
//! into private memory and validated there (length and alignment by the ring, archive
//! by bytecheck) before the engine sees it. A frame the server cannot read gets an error
//! response; a ring whose indices or headers break the ring's invariants ends the
//! session. Neither touches any other session.
//!
//! Responses go out in request order. Writes are handed to the engine's writer and
//! answered when their group commit is done, without stalling the requests behind
//! them, so pipelined writes of one session reach the same commit; a read waits for
//! the session's earlier writes first (read-your-writes).

use std::collections::VecDeque;
use std::io::Read;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use interprocess::os::unix::uds_local_socket::Stream;
use ringbase_protocol::handshake::WaitMode;
use ringbase_protocol::message::{
    access_request, encode_event, encode_response, ErrorCode, Event, Response,
};
use ringbase_protocol::ring::{
    move_off_cpu, shares_cpu, Backoff, Consumer, Phase, Producer, RingError, FRAME_EVENT,
    FRAME_REQUEST, FRAME_RESPONSE,
};
use ringbase_protocol::segment::Segment;
use ringbase_protocol::trace::{self, Point};
use rkyv::util::AlignedVec;

use crate::engine::{ClientState, Engine, Reply, TransportInfo};

/// Longest a session thread sleeps before re-checking its stop flags (a backstop: the
/// watcher and shutdown wake it at once).
const SLEEP_SLICE: Duration = Duration::from_millis(500);
/// With the `trace` feature: marks a session keeps before it writes them out (when it
/// goes to sleep).
const TRACE_FLUSH_MARKS: usize = 20_000;
/// Requests served between two publications of the rings.
const BURST: usize = 256;
/// How long a session with writes in flight spins for a completion or a new request
/// before it blocks on the completion channel.
const WRITE_WAIT_SPIN: Duration = Duration::from_micros(20);
/// First slice a session with writes in flight blocks on the completion channel before
/// it looks at the request ring again; the slices double up to [`WRITE_WAIT_SLICE_MAX`].
const WRITE_WAIT_SLICE_MIN: Duration = Duration::from_micros(50);
/// Longest such slice: the most a request can wait behind a long write before the
/// session sees it.
const WRITE_WAIT_SLICE_MAX: Duration = Duration::from_millis(1);
/// How long a watcher's event ring must stay full, while the watcher is far behind,
/// before it gets an overflow marker.
const WATCH_STALL: Duration = Duration::from_millis(500);
/// How soon a session whose client has not drained its event ring looks again; the
/// pause grows with the stall up to [`EVENT_RETRY_MAX`].
const EVENT_RETRY_MIN: Duration = Duration::from_millis(2);
/// Longest pause between two looks at a full event ring.
const EVENT_RETRY_MAX: Duration = Duration::from_millis(100);
/// Most responses a session may have waiting behind an unfinished write.
const MAX_QUEUED: usize = 4096;

/// What a session is given by the handshake that created it.
pub(crate) struct SessionArgs<'a> {
    pub(crate) id: u64,
    /// The session's segment; it stays mapped until [`run`] has returned.
    pub(crate) segment: &'a Segment,
    /// The server's ends of the rings, made before the client could touch the segment.
    pub(crate) req: Consumer,
    pub(crate) resp: Producer,
    pub(crate) events: Producer,
    /// The control socket, open for the session's life.
    pub(crate) stream: &'a Stream,
    pub(crate) wait: WaitMode,
    pub(crate) engine: &'a Engine,
    /// What Status reports of the transport.
    pub(crate) transport: Arc<dyn TransportInfo>,
    /// Set (with a wake of both rings) to end this session.
    pub(crate) stop: &'a AtomicBool,
    /// Set when the whole server shuts down.
    pub(crate) shutdown: &'a AtomicBool,
}

/// Why a session ended.
#[derive(Debug)]
enum End {
    PeerGone,
    Shutdown,
    Corrupt(RingError),
}

impl From<RingError> for End {
    fn from(e: RingError) -> End {
        End::Corrupt(e)
    }
}

/// Runs a session to its end: closes the control socket and returns once no thread of
/// the session touches the segment any more (the caller unmaps it).
pub(crate) fn run(args: SessionArgs<'_>) {
    let SessionArgs {
        id,
        segment,
        req,
        resp,
        events,
        stream,
        wait,
        engine,
        transport,
        stop,
        shutdown,
    } = args;
    let peer_gone = Arc::new(AtomicBool::new(false));
    let sock: UnixStream = match stream.inner().try_clone() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ringbase: session {id}: cannot clone socket: {e}");
            return;
        }
    };
    let req_ring = segment.request_ring();
    let resp_ring = segment.response_ring();
    let gone = Arc::clone(&peer_gone);
    let watcher = std::thread::Builder::new()
        .name("ringbase-watch".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            let mut sock = sock;
            let mut buf = [0u8; 64];
            loop {
                match sock.read(&mut buf) {
                    Ok(0) => break,
                    Ok(_) => continue, // nothing is expected after the handshake; ignore
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                }
            }
            gone.store(true, Ordering::SeqCst);
            req_ring.wake_consumer();
            resp_ring.wake_producer();
        });
    let watcher = match watcher {
        Ok(w) => w,
        Err(e) => {
            eprintln!("ringbase: session {id}: cannot spawn watcher: {e}");
            return;
        }
    };

    // The feed calls this from the writer thread when the client's watch has news: it
    // wakes the session if it sleeps on its request ring (the session's readiness test
    // includes the watch; see `wait_for_request`). The client state that holds it (and
    // the feed's copy, owned by the watch) is dropped before this function returns.
    let wake = std::sync::Mutex::new(segment.request_ring());
    let notify: crate::engine::Notifier = Arc::new(move || {
        wake.lock()
            .unwrap_or_else(|p| p.into_inner())
            .notify_consumer()
    });
    let client = engine.open_client(segment.geometry().max_payload, transport, notify);
    let result = match client {
        Ok(client) => {
            let backoff = match wait {
                WaitMode::Adaptive => {
                    Backoff::new(Duration::from_micros(20), Duration::from_micros(200))
                }
                // A busy-poll client wants the server hot too, but a sidecar must not burn
                // a core for a client that went quiet: spin up to 10 ms, then sleep.
                WaitMode::BusyPoll => {
                    Backoff::new(Duration::from_millis(10), Duration::from_millis(10))
                }
            };
            let mut s = SessionLoop {
                req,
                resp,
                max_payload: segment.geometry().max_payload,
                inbuf: AlignedVec::new(),
                outbuf: AlignedVec::new(),
                backoff,
                polite: false,
                queue: VecDeque::new(),
                events,
                event_max: segment.event_ring().max_payload(),
                event_buf: AlignedVec::new(),
                event_blocked: false,
                event_buf_last: 0,
                event_stalled_since: None,
                engine,
                client,
                peer_gone: &peer_gone,
                stop,
                shutdown,
            };
            let end = s.serve();
            trace::flush("session", 1);
            end
        }
        Err(msg) => {
            eprintln!("ringbase: session {id}: cannot open engine state: {msg}");
            Err(End::Shutdown)
        }
    };
    match result {
        Ok(()) | Err(End::PeerGone) | Err(End::Shutdown) => {}
        Err(End::Corrupt(e)) => {
            eprintln!("ringbase: session {id} closed: client broke the ring protocol: {e}")
        }
    }
    // Closing our end makes the watcher's read return, and tells the client.
    let _ = stream.inner().shutdown(std::net::Shutdown::Both);
    // The watcher held copies of the ring pointers; once it has exited, only the
    // caller's registry entry does.
    let _ = watcher.join();
}

/// A response slot in request order.
enum Slot {
    Ready(u64, Response),
    Waiting(u64, u64),
}

struct SessionLoop<'a> {
    req: Consumer,
    resp: Producer,
    max_payload: u64,
    inbuf: AlignedVec<16>,
    outbuf: AlignedVec<16>,
    backoff: Backoff,
    /// The session thread has just been woken from a sleep, or has just woken the
    /// client: its next wait for a request is a polite one (see the ring docs).
    polite: bool,
    /// Responses not yet written, in request order; non-empty only while a write is
    /// outstanding (or the response ring was full).
    queue: VecDeque<Slot>,
    /// The event ring, for the client's watch.
    events: Producer,
    /// Largest payload of an event frame.
    event_max: u64,
    /// An encoded event not yet written (the ring was full) when `event_blocked`.
    event_buf: AlignedVec<16>,
    event_blocked: bool,
    /// The last change sequence number in `event_buf` (0: it holds no changes).
    event_buf_last: u64,
    /// Since when the event ring has been too full for `event_buf` (no event written).
    event_stalled_since: Option<std::time::Instant>,
    engine: &'a Engine,
    /// This client's state in the engine.
    client: ClientState,
    peer_gone: &'a AtomicBool,
    stop: &'a AtomicBool,
    shutdown: &'a AtomicBool,
}

impl SessionLoop<'_> {
    fn check(&self) -> Result<(), End> {
        if self.peer_gone.load(Ordering::Relaxed) {
            return Err(End::PeerGone);
        }
        if self.stop.load(Ordering::Relaxed) || self.shutdown.load(Ordering::Relaxed) {
            return Err(End::Shutdown);
        }
        Ok(())
    }

    fn serve(&mut self) -> Result<(), End> {
        loop {
            let mut served = 0;
            while served < BURST {
                self.check()?;
                let Some(f) = self.req.peek()? else { break };
                if served == 0 {
                    trace::mark(Point::ServerRequest);
                    // Where the client looks while it waits for the answers (ring docs,
                    // "Sharing a CPU").
                    self.resp.announce_cpu();
                }
                self.req.copy_payload(&f, &mut self.inbuf);
                self.req.advance(&f);
                served += 1;
                if f.kind != FRAME_REQUEST {
                    self.reply(
                        f.corr,
                        Reply::Now(Response::error(
                            ErrorCode::BadRequest,
                            format!("unexpected frame kind {}", f.kind),
                        )),
                    )?;
                    continue;
                }
                // Taken out of `self` while the archived request borrows it.
                let inbuf = std::mem::take(&mut self.inbuf);
                let reply = match access_request(&inbuf) {
                    Ok(req) => {
                        trace::mark(Point::ServerValidated);
                        if self.client.needs_barrier(req) {
                            self.drain_writes()?;
                        }
                        Ok(self.engine.handle(&mut self.client, req))
                    }
                    Err(e) => Err(format!("invalid request: {e}")),
                };
                self.inbuf = inbuf;
                let reply = reply
                    .unwrap_or_else(|msg| Reply::Now(Response::error(ErrorCode::BadRequest, msg)));
                trace::mark(Point::ServerHandled);
                self.reply(f.corr, reply)?;
                trace::mark(Point::ServerWritten);
                if self.queue.len() >= MAX_QUEUED || self.client.over_write_budget(self.engine) {
                    self.drain_writes()?;
                }
            }
            // The burst's writes go to the writer together.
            self.client.flush();
            // Hand the request space back and publish what we wrote.
            self.req.flush();
            self.collect(false)?;
            if served > 0 {
                trace::mark(Point::ServerAnswered);
            }
            self.polite |= self.resp.flush();
            if served > 0 {
                trace::mark(Point::ServerPublished);
            }
            self.pump_events()?;
            if served > 0 {
                continue;
            }
            if !self.queue.is_empty() {
                // Nothing new to read, but writes are in flight: wait for one to finish
                // or for a new request, whichever comes first. (Waiting for the write
                // alone would leave a pipelining client's next requests in the ring
                // until then, and the writer idle once it is done.)
                self.wait_for_completion_or_request()?;
                continue;
            }
            self.wait_for_request()?;
        }
    }

    /// With writes in flight: spins briefly (a small write commits in microseconds), then
    /// blocks on the completion channel in slices that grow from
    /// [`WRITE_WAIT_SLICE_MIN`] to [`WRITE_WAIT_SLICE_MAX`], looking at the request ring
    /// between slices. Returns when a completion is ready or a request arrived.
    fn wait_for_completion_or_request(&mut self) -> Result<(), End> {
        let start = std::time::Instant::now();
        let mut slice = WRITE_WAIT_SLICE_MIN;
        let mut spins = 0u32;
        loop {
            if self.client.completion_ready() || self.req.has_data()? {
                return Ok(());
            }
            self.check()?;
            if start.elapsed() < WRITE_WAIT_SPIN {
                spins = spins.wrapping_add(1);
                if spins.is_multiple_of(64) {
                    std::thread::yield_now();
                } else {
                    std::hint::spin_loop();
                }
                continue;
            }
            if self.client.wait_completion_ready(slice) {
                return Ok(());
            }
            slice = (slice * 2).min(WRITE_WAIT_SLICE_MAX);
        }
    }

    /// Writes the watch's pending events into the event ring while there is room. An
    /// event that does not fit now stays encoded for the next call.
    fn pump_events(&mut self) -> Result<(), End> {
        let mut wrote = false;
        loop {
            if !self.event_blocked {
                // Half the frame limit: room for the archive's overhead per change.
                let Some(ev) = self.client.next_event((self.event_max / 2) as usize) else {
                    break;
                };
                encode_event(&ev, &mut self.event_buf).expect("encoding an event");
                self.event_buf_last = match &ev {
                    Event::Changes { changes, .. } => changes[changes.len() - 1].seq,
                    Event::Overflow { .. } => 0,
                };
                if self.event_buf.len() as u64 > self.event_max {
                    // One change that cannot fit this session's event ring (a huge key
                    // in a tiny ring): end the watch rather than wedge the ring.
                    let (watch, last_seq) = match &ev {
                        Event::Changes { watch, changes } => (*watch, changes[0].seq - 1),
                        Event::Overflow { watch, last_seq } => (*watch, *last_seq),
                    };
                    self.client.end_watch();
                    encode_event(&Event::Overflow { watch, last_seq }, &mut self.event_buf)
                        .expect("encoding an event");
                }
                self.event_blocked = true;
            }
            if !self.events.try_write(FRAME_EVENT, 0, 0, &self.event_buf)? {
                // Full. A watcher that has stopped reading (its ring stayed full for
                // WATCH_STALL) while it is far behind gets the overflow marker in place
                // of the frame it could not take. One that reads, even far behind
                // (catching up), frees room within microseconds and goes on.
                let since = *self
                    .event_stalled_since
                    .get_or_insert_with(std::time::Instant::now);
                if since.elapsed() >= WATCH_STALL {
                    if let Some(ev) = self.client.overflow_if_lagging() {
                        encode_event(&ev, &mut self.event_buf).expect("encoding an event");
                        self.event_buf_last = 0;
                    }
                }
                break; // the client reads on; retried on the next pass
            }
            self.event_blocked = false;
            self.event_stalled_since = None;
            if self.event_buf_last != 0 {
                self.client.event_delivered(self.event_buf_last);
            }
            wrote = true;
        }
        if wrote {
            self.events.flush();
        }
        Ok(())
    }

    /// Whether the watch has events to write and the last write did not find the event
    /// ring full.
    fn events_ready(&self) -> bool {
        !self.event_blocked && self.client.events_ready()
    }

    /// Waits (spin, yield, then futex sleep) until a request frame is published, or the
    /// watch has new changes to deliver.
    fn wait_for_request(&mut self) -> Result<(), End> {
        // Just woken, or just woke the client: the thread that sends the next request
        // (or reads this response) may be queued behind us on this CPU.
        let polite = std::mem::take(&mut self.polite);
        let mut w = if polite {
            self.backoff.start_polite()
        } else {
            self.backoff.start()
        };
        let mut slept = false;
        loop {
            if self.req.has_data()? || self.events_ready() {
                if !polite {
                    self.backoff.finish(slept, w.elapsed());
                }
                // Woken by the client: it may share this CPU (see above).
                self.polite = slept;
                return Ok(());
            }
            if self.event_blocked {
                // The client has not drained the event ring: look again soon (its reads
                // do not wake this thread), less often the longer it stays full.
                self.check()?;
                let stalled = self
                    .event_stalled_since
                    .map_or(Duration::ZERO, |t| t.elapsed());
                self.req
                    .sleep((stalled / 4).clamp(EVENT_RETRY_MIN, EVENT_RETRY_MAX))?;
                self.pump_events()?;
                continue;
            }
            self.check()?;
            // The client on this very CPU: move to another one and spin on there (or
            // yield to it, if there is none) while it prepares the next request.
            let req = &self.req;
            let shares = || shares_cpu(req.producer_cpu()) && !move_off_cpu();
            if w.step_sharing(shares) == Phase::Sleep {
                slept = true;
                // Not blocked here (handled above): the watch's news is a wake-up reason.
                let client = &self.client;
                // Written while idle, never between a request and its answer.
                trace::flush("session", TRACE_FLUSH_MARKS);
                trace::mark(Point::ServerSleeps);
                self.req.sleep_or(SLEEP_SLICE, || client.events_ready())?;
                trace::mark(Point::ServerWoke);
            }
        }
    }

    fn reply(&mut self, corr: u64, reply: Reply) -> Result<(), End> {
        match reply {
            Reply::Now(r) if self.queue.is_empty() => self.write(corr, &r),
            Reply::Now(r) => {
                self.queue.push_back(Slot::Ready(corr, r));
                Ok(())
            }
            Reply::Pending(ticket) => {
                self.queue.push_back(Slot::Waiting(corr, ticket));
                Ok(())
            }
        }
    }

    /// Takes finished writes from the engine (blocking for at least one if `block`) and
    /// writes out every response at the front of the queue that is ready.
    fn collect(&mut self, block: bool) -> Result<(), End> {
        if !self.queue.is_empty() {
            let mut block = block;
            loop {
                let done = if block {
                    self.client.wait_completion(SLEEP_SLICE)
                } else {
                    self.client.try_completion()
                };
                let Some((ticket, resp)) = done else {
                    if block {
                        self.check()?;
                        continue;
                    }
                    break;
                };
                block = false;
                for slot in self.queue.iter_mut() {
                    if let Slot::Waiting(corr, t) = *slot {
                        if t == ticket {
                            *slot = Slot::Ready(corr, resp);
                            break;
                        }
                    }
                }
            }
        }
        while let Some(Slot::Ready(..)) = self.queue.front() {
            let Some(Slot::Ready(corr, r)) = self.queue.pop_front() else {
                unreachable!()
            };
            self.write(corr, &r)?;
        }
        Ok(())
    }

    /// Waits until every queued response has been written (read-your-writes barrier).
    fn drain_writes(&mut self) -> Result<(), End> {
        self.collect(false)?;
        while !self.queue.is_empty() {
            self.collect(true)?;
        }
        Ok(())
    }

    /// Encodes and writes one response frame, waiting for space if the client is slow.
    fn write(&mut self, corr: u64, resp: &Response) -> Result<(), End> {
        if let Err(e) = encode_response(resp, &mut self.outbuf) {
            encode_response(
                &Response::error(ErrorCode::Internal, format!("cannot encode response: {e}")),
                &mut self.outbuf,
            )
            .expect("encoding an error response");
        }
        if self.outbuf.len() as u64 > self.max_payload {
            let msg = format!(
                "response of {} bytes exceeds the session's maximum frame payload of {} bytes",
                self.outbuf.len(),
                self.max_payload
            );
            encode_response(&Response::error(ErrorCode::TooLarge, msg), &mut self.outbuf)
                .expect("encoding an error response");
        }
        loop {
            if self.resp.try_write(FRAME_RESPONSE, 0, corr, &self.outbuf)? {
                return Ok(());
            }
            // Full: publish what we have so the client can drain it, then wait.
            self.resp.flush();
            self.req.flush();
            let len = self.outbuf.len() as u64;
            let mut w = self.backoff.start();
            loop {
                self.check()?;
                if self.resp.has_space(len)? {
                    break;
                }
                if w.step() == Phase::Sleep && self.resp.sleep_for_space(len, SLEEP_SLICE)? {
                    break;
                }
            }
        }
    }
}
