//! The session: connect, send, receive.

use std::collections::VecDeque;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use interprocess::local_socket::traits::Stream as _;
use interprocess::local_socket::{GenericFilePath, ToFsName};
use interprocess::os::unix::uds_local_socket::Stream;
use ringbase_protocol::handshake::{self, Hello, WaitMode, Welcome, WelcomeStatus, WELCOME_SIZE};
use ringbase_protocol::layout::RingSizes;
use ringbase_protocol::message::{
    access_response, encode_request, to_owned_response, ArchivedResponse, Request, Response,
};
use ringbase_protocol::paths::{self, ServerPaths};
use ringbase_protocol::ring::{
    shares_cpu, Backoff, Consumer, FrameRef, Phase, Producer, FRAME_REQUEST, FRAME_RESPONSE,
};
use ringbase_protocol::segment::Segment;
use ringbase_protocol::trace::{self, Point};
use ringbase_protocol::PROTOCOL_VERSION;
use rkyv::util::AlignedVec;

use crate::error::{Error, Result};

/// The least an adaptive wait for an answer spins before it sleeps.
const MIN_SPIN: Duration = Duration::from_micros(20);

/// The most an adaptive wait for an answer spins before it sleeps. The caller's thread
/// waits for the answer anyway; a sleep costs the answer ~30 µs more (the server's wake
/// syscall, then the scheduler) and the server's session ~12 µs of its own time. So
/// answers that keep taking up to a millisecond (vector searches at a high ef) are spun
/// through, while a run of slower ones (durable writes waiting for a disk) brings the
/// spin back down to [`MIN_SPIN`] (see [`Backoff`]).
const MAX_SPIN: Duration = Duration::from_millis(1);

/// How long one futex sleep lasts before the client checks that the server still lives.
const LIVENESS_SLICE: Duration = Duration::from_millis(20);

/// Connection settings.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Server name (`default` unless set).
    pub name: String,
    /// Runtime dir; `None` = from the environment (see `ringbase_protocol::paths`).
    pub runtime_dir: Option<PathBuf>,
    /// Wanted ring sizes (0 = server default). The server rounds them to powers of two
    /// within its bounds; the largest request or response is half the smaller ring.
    pub rings: RingSizes,
    /// How to wait for responses.
    pub wait: WaitMode,
    /// Longest a call waits for the server (checked about every 20 ms); `None` (the
    /// default) waits as long as the server lives. A call that times out returns
    /// [`Error::TimedOut`] and ends the session: its response may still come, so the
    /// client must reconnect.
    pub call_timeout: Option<Duration>,
}

impl ConnectOptions {
    /// Defaults for `name`.
    pub fn new(name: &str) -> ConnectOptions {
        ConnectOptions {
            name: name.to_string(),
            runtime_dir: None,
            rings: RingSizes {
                request: 0,
                response: 0,
                event: 0,
            },
            wait: WaitMode::Adaptive,
            call_timeout: None,
        }
    }

    /// Sets the runtime dir.
    pub fn runtime_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.runtime_dir = Some(dir.into());
        self
    }

    /// Sets the wanted ring sizes.
    pub fn rings(mut self, rings: RingSizes) -> Self {
        self.rings = rings;
        self
    }

    /// Sets the wait mode.
    pub fn wait(mut self, wait: WaitMode) -> Self {
        self.wait = wait;
        self
    }

    /// Sets the call timeout (see [`ConnectOptions::call_timeout`]).
    pub fn call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = Some(timeout);
        self
    }

    /// The control socket and lock paths these options point at.
    pub fn paths(&self) -> Result<ServerPaths> {
        let dir = self.runtime_dir.clone().unwrap_or_else(paths::runtime_dir);
        ServerPaths::new(&dir, &self.name).map_err(|e| Error::Invalid(e.to_string()))
    }
}

/// One session with a Ringbase server. See the crate docs.
#[derive(Debug)]
pub struct Client {
    // Field order matters for Drop: rings before the segment that maps them.
    req: Producer,
    resp: Consumer,
    /// The event ring (change feed), read by `watch.rs`.
    pub(crate) events: Consumer,
    /// Events read from the event ring and not yet handed out.
    pub(crate) event_queue: VecDeque<crate::event::WatchEvent>,
    /// The current watch's id (events of other watches are dropped).
    pub(crate) watch_id: Option<u64>,
    /// Keeps the mapping alive for `req`, `resp` and `events`.
    _segment: Segment,
    sock: Stream,
    max_payload: u64,
    session_id: u64,
    next_corr: u64,
    /// Correlation ids sent and not yet received, oldest first.
    in_flight: VecDeque<u64>,
    /// Responses taken out of the ring while the request ring was full (so that the
    /// server never blocks on a full response ring while we block on a full request
    /// ring), oldest first.
    stash: VecDeque<(u64, AlignedVec<16>)>,
    /// A response frame left in the ring for a zero-copy view; released by the next call.
    held: Option<FrameRef>,
    scratch: AlignedVec<16>,
    backoff: Backoff,
    /// A request published since the last response had to wake the server's session
    /// thread: the next wait for a response is a polite one (see the ring docs).
    woke_server: bool,
    call_timeout: Option<Duration>,
    dead: bool,
}

// SAFETY: the raw ring pointers inside Producer/Consumer point into `segment`, which the
// Client owns and moves with it; nothing else in this process uses them.
unsafe impl Send for Client {}

impl Client {
    /// Connects to the server `name` with default options.
    ///
    /// # Errors
    ///
    /// [`Error::NotRunning`] if no server listens; [`Error::ProtocolMismatch`] or
    /// [`Error::Refused`] if it refuses the session.
    pub fn connect(name: &str) -> Result<Client> {
        Client::connect_with(ConnectOptions::new(name))
    }

    /// Connects with explicit options. Errors as for [`Client::connect`].
    pub fn connect_with(opts: ConnectOptions) -> Result<Client> {
        let paths = opts.paths()?;
        let name = paths
            .socket
            .as_path()
            .to_fs_name::<GenericFilePath>()
            .map_err(|e| Error::Invalid(e.to_string()))?;
        let sock = Stream::connect(name).map_err(|source| Error::NotRunning {
            path: paths.socket.display().to_string(),
            source,
        })?;
        sock.inner()
            .set_read_timeout(Some(Duration::from_secs(10)))?;
        let hello = Hello {
            protocol: PROTOCOL_VERSION,
            pid: std::process::id(),
            rings: opts.rings,
            wait: opts.wait,
        };
        handshake::send_with_fd(sock.inner().as_fd(), &hello.encode(), None)
            .map_err(|_| Error::Disconnected)?;
        let mut head = [0u8; WELCOME_SIZE];
        let fd = handshake::recv_with_fd(sock.inner().as_fd(), &mut head).map_err(|e| {
            match e.kind() {
                std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset => {
                    Error::Disconnected
                }
                _ => Error::Io(e),
            }
        })?;
        let n = Welcome::message_len(&head).map_err(|e| Error::Protocol(e.to_string()))?;
        let mut full = head.to_vec();
        full.resize(WELCOME_SIZE + n, 0);
        if n > 0 {
            handshake::recv_with_fd(sock.inner().as_fd(), &mut full[WELCOME_SIZE..])
                .map_err(|_| Error::Disconnected)?;
        }
        let welcome = Welcome::decode(&full).map_err(|e| Error::Protocol(e.to_string()))?;
        match welcome.status {
            WelcomeStatus::Ok => {}
            WelcomeStatus::VersionMismatch => {
                return Err(Error::ProtocolMismatch {
                    client: PROTOCOL_VERSION,
                    server: welcome.protocol,
                    message: welcome.message,
                })
            }
            status => {
                return Err(Error::Refused {
                    status,
                    message: welcome.message,
                })
            }
        }
        if welcome.protocol != PROTOCOL_VERSION {
            return Err(Error::ProtocolMismatch {
                client: PROTOCOL_VERSION,
                server: welcome.protocol,
                message: "server accepted a session in another protocol version".into(),
            });
        }
        let fd =
            fd.ok_or_else(|| Error::Protocol("welcome without a segment descriptor".into()))?;
        let segment = Segment::open(fd, welcome.segment_size, welcome.rings, welcome.session_id)
            .map_err(|e| Error::Protocol(e.to_string()))?;
        sock.inner().set_read_timeout(None)?;
        let backoff = match opts.wait {
            WaitMode::Adaptive => Backoff::new(MIN_SPIN, MAX_SPIN),
            WaitMode::BusyPoll => Backoff::busy(),
        };
        let ring_err = |e: ringbase_protocol::ring::RingError| {
            Error::Protocol(format!("new session segment: {e}"))
        };
        Ok(Client {
            req: segment.request_ring().producer().map_err(ring_err)?,
            resp: segment.response_ring().consumer().map_err(ring_err)?,
            events: segment.event_ring().consumer().map_err(ring_err)?,
            event_queue: VecDeque::new(),
            watch_id: None,
            max_payload: segment.geometry().max_payload,
            session_id: welcome.session_id,
            _segment: segment,
            sock,
            next_corr: 1,
            in_flight: VecDeque::new(),
            stash: VecDeque::new(),
            held: None,
            scratch: AlignedVec::new(),
            backoff,
            woke_server: false,
            call_timeout: opts.call_timeout,
            dead: false,
        })
    }

    /// The session id the server gave us.
    pub fn session_id(&self) -> u64 {
        self.session_id
    }

    /// Largest encoded request or response this session carries.
    pub fn max_payload(&self) -> u64 {
        self.max_payload
    }

    /// Requests sent and not yet received.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Round trip with no work on the server.
    pub fn ping(&mut self) -> Result<()> {
        match self.call(&Request::Ping)? {
            Response::Pong => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    /// Sends bytes and returns what the server echoed.
    pub fn echo(&mut self, bytes: &[u8]) -> Result<Vec<u8>> {
        match self.call(&Request::Echo(bytes.to_vec()))? {
            Response::Echo(b) => Ok(b),
            other => Err(unexpected(&other)),
        }
    }

    /// Sends one request and waits for its response. Responses of type
    /// [`Response::Error`] are returned as [`Error::Server`].
    ///
    /// # Errors
    ///
    /// [`Error::Disconnected`] if the server is gone; [`Error::TooLarge`] if the request
    /// does not fit the session's rings; [`Error::Server`] if the server refused it.
    pub fn call(&mut self, req: &Request) -> Result<Response> {
        if self.dead {
            return Err(Error::Disconnected);
        }
        if !self.in_flight.is_empty() {
            return Err(Error::Invalid(format!(
                "{} pipelined responses must be received before a blocking call",
                self.in_flight.len()
            )));
        }
        self.send(req)?;
        let (_, resp) = self.recv()?;
        match resp {
            Response::Error { code, message } => Err(Error::server(code, &message)),
            r => Ok(r),
        }
    }

    /// Pipelining: sends a request without waiting and returns its correlation id. Call
    /// [`Client::recv`] once per request sent; responses come in request order.
    pub fn send(&mut self, req: &Request) -> Result<u64> {
        trace::mark(Point::ClientSend);
        self.release_held();
        if self.dead {
            return Err(Error::Disconnected);
        }
        encode_request(req, &mut self.scratch)
            .map_err(|e| Error::Protocol(format!("encoding request: {e}")))?;
        let len = self.scratch.len() as u64;
        if len > self.max_payload {
            return Err(Error::TooLarge {
                what: "request",
                len,
                max: self.max_payload,
            });
        }
        trace::mark(Point::ClientEncoded);
        let corr = self.next_corr;
        loop {
            let ok = self
                .req
                .try_write(FRAME_REQUEST, 0, corr, &self.scratch)
                .map_err(|e| self.violation(e.to_string()))?;
            if ok {
                break;
            }
            self.wait_for_space(len)?;
        }
        trace::mark(Point::ClientWritten);
        // Where the session looks before spinning for the next request (ring docs,
        // "Sharing a CPU").
        self.req.announce_cpu();
        self.woke_server |= self.req.flush();
        trace::mark(Point::ClientPublished);
        self.next_corr += 1;
        self.in_flight.push_back(corr);
        Ok(corr)
    }

    /// Pipelining: receives the next response (in request order) with its correlation id.
    /// A [`Response::Error`] is returned as a value here, so a pipeline can go on.
    pub fn recv(&mut self) -> Result<(u64, Response)> {
        self.release_held();
        if let Some((corr, buf)) = self.stash.pop_front() {
            self.expect_corr(corr)?;
            let a = access_response(&buf)
                .map_err(|e| self.violation(format!("invalid response: {e}")))?;
            return Ok((corr, to_owned_response(a)));
        }
        let f = self.wait_frame()?;
        self.take_frame(f)
    }

    /// Checks, decodes and releases the response frame `f` (just peeked).
    fn take_frame(&mut self, f: FrameRef) -> Result<(u64, Response)> {
        self.expect_corr(f.corr)?;
        // SAFETY: the server (a process following the protocol) does not modify a
        // published frame before we release it, and we release it below, after the
        // last use of the borrowed payload.
        let payload = unsafe { self.resp.payload(&f) };
        let owned = match access_response(payload) {
            Ok(a) => Ok(to_owned_response(a)),
            Err(e) => Err(format!("invalid response: {e}")),
        };
        self.resp.release(&f);
        match owned {
            Ok(r) => Ok((f.corr, r)),
            Err(msg) => Err(self.violation(msg)),
        }
    }

    /// Pipelining without waiting: the next response (in request order) if it has
    /// already arrived, `Ok(None)` if it has not or if nothing is in flight. Never spins
    /// or sleeps; when nothing is ready it checks with one non-blocking syscall that the
    /// server still lives. A [`Response::Error`] is returned as a value, as by
    /// [`Client::recv`].
    ///
    /// # Errors
    ///
    /// [`Error::Disconnected`] if the server is gone; [`Error::Protocol`] if it sent
    /// something this client cannot read.
    pub fn try_recv(&mut self) -> Result<Option<(u64, Response)>> {
        if !self.stash.is_empty() {
            // Already copied out of the ring: `recv` returns it without waiting.
            return self.recv().map(Some);
        }
        self.release_held();
        if self.dead {
            return Err(Error::Disconnected);
        }
        if self.in_flight.is_empty() {
            return Ok(None);
        }
        let f = match self.resp.peek() {
            Ok(Some(f)) => f,
            Ok(None) => {
                if !self.server_alive() && !self.resp.has_data().unwrap_or(true) {
                    self.dead = true;
                    return Err(Error::Disconnected);
                }
                return Ok(None);
            }
            Err(e) => return Err(self.violation(e.to_string())),
        };
        if f.kind != FRAME_RESPONSE {
            return Err(self.violation(format!("unexpected frame kind {}", f.kind)));
        }
        self.take_frame(f).map(Some)
    }

    /// Receives the next response as a zero-copy view into the response ring. The view
    /// borrows the client, so it is valid until the next call on this client.
    pub fn recv_view(&mut self) -> Result<(u64, &ArchivedResponse)> {
        self.release_held();
        if let Some((corr, buf)) = self.stash.pop_front() {
            // A stashed response was already copied out of the ring; keep the copy alive
            // in `scratch` so the view can borrow it.
            self.expect_corr(corr)?;
            self.scratch = buf;
            let a = access_response(&self.scratch)
                .map_err(|e| Error::Protocol(format!("invalid response: {e}")))?;
            return Ok((corr, a));
        }
        let f = self.wait_frame()?;
        self.expect_corr(f.corr)?;
        // SAFETY: as in `recv`; the frame stays unreleased (`held`) until the next call
        // on this client, and the returned view borrows `self` mutably, so it ends before
        // that call can happen. The slice is re-made from raw parts only to detach its
        // lifetime from the `self.resp` borrow (the error path needs `self.resp` again).
        let payload: &[u8] = unsafe {
            let p = self.resp.payload(&f);
            std::slice::from_raw_parts(p.as_ptr(), p.len())
        };
        match access_response(payload) {
            Ok(a) => {
                self.held = Some(f);
                Ok((f.corr, a))
            }
            Err(e) => {
                self.resp.release(&f);
                self.dead = true;
                Err(Error::Protocol(format!("invalid response: {e}")))
            }
        }
    }

    fn release_held(&mut self) {
        if let Some(f) = self.held.take() {
            self.resp.release(&f);
        }
    }

    fn expect_corr(&mut self, corr: u64) -> Result<()> {
        match self.in_flight.pop_front() {
            Some(c) if c == corr => Ok(()),
            Some(c) => Err(self.violation(format!("response for request {corr}, expected {c}"))),
            None => Err(self.violation(format!("unsolicited response {corr}"))),
        }
    }

    pub(crate) fn violation(&mut self, msg: String) -> Error {
        self.dead = true;
        Error::Protocol(msg)
    }

    /// Whether the server end of the control socket is still open.
    pub(crate) fn server_alive(&self) -> bool {
        let mut b = [0u8; 1];
        // SAFETY: recv into a 1-byte buffer we own; MSG_PEEK leaves data in place and
        // MSG_DONTWAIT never blocks.
        let n = unsafe {
            libc::recv(
                std::os::fd::AsRawFd::as_raw_fd(self.sock.inner()),
                b.as_mut_ptr() as *mut libc::c_void,
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        if n == 0 {
            return false;
        }
        if n < 0 {
            let e = std::io::Error::last_os_error();
            return matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
            );
        }
        true
    }

    /// Called between waiting slices of a call that started at `started`: fails (and
    /// ends the session) if the server is gone or the call timeout has passed.
    fn check_server(&mut self, started: Instant) -> Result<()> {
        if !self.server_alive() {
            self.dead = true;
            return Err(Error::Disconnected);
        }
        if let Some(t) = self.call_timeout {
            if started.elapsed() >= t {
                self.dead = true;
                return Err(Error::TimedOut(t));
            }
        }
        Ok(())
    }

    /// Waits for the next response frame: spin, then futex sleep in slices, checking
    /// between slices that the server is alive.
    fn wait_frame(&mut self) -> Result<FrameRef> {
        if self.dead {
            return Err(Error::Disconnected);
        }
        if self.in_flight.is_empty() {
            return Err(Error::Invalid("no request in flight".into()));
        }
        let started = Instant::now();
        // The server's session thread was asleep and has just been woken, possibly onto
        // this CPU: spin politely, yielding the CPU it may need to answer.
        let polite = std::mem::take(&mut self.woke_server);
        let mut w = if polite {
            self.backoff.start_polite()
        } else {
            self.backoff.start()
        };
        let mut slept = false;
        // Reading the clock costs ~20 ns: while spinning, look at it (to notice a dead
        // busy-polled server) only every 1024 iterations.
        let mut spins: u32 = 0;
        let mut last_check: Option<Instant> = None;
        loop {
            match self.resp.peek() {
                Ok(Some(f)) => {
                    trace::mark(Point::ClientResponse);
                    if f.kind != FRAME_RESPONSE {
                        return Err(self.violation(format!("unexpected frame kind {}", f.kind)));
                    }
                    if !polite {
                        // A polite wait says nothing about how long the server takes
                        // when it is awake: the spin budget learns from the others.
                        self.backoff.finish(slept, started.elapsed());
                    }
                    return Ok(f);
                }
                Ok(None) => {}
                Err(e) => return Err(self.violation(e.to_string())),
            }
            // The session thread working on this request on this very CPU: yield to it.
            let resp = &self.resp;
            if w.step_sharing(|| shares_cpu(resp.producer_cpu())) == Phase::Sleep {
                slept = true;
                trace::mark(Point::ClientSleeps);
                let _ = self.resp.sleep(LIVENESS_SLICE);
                trace::mark(Point::ClientWoke);
                if !self.resp.has_data().unwrap_or(true) {
                    self.check_server(started)?;
                }
                continue;
            }
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(1024) {
                let now = Instant::now();
                let since = *last_check.get_or_insert(now);
                if now - since >= LIVENESS_SLICE {
                    // Busy-polling: still notice a dead server (or a timeout).
                    if !self.resp.has_data().unwrap_or(true) {
                        self.check_server(started)?;
                    }
                    last_check = Some(now);
                }
            }
        }
    }

    /// The request ring is full: move ready responses into the stash (so the server can
    /// keep writing) and wait until `len` bytes fit.
    fn wait_for_space(&mut self, len: u64) -> Result<()> {
        let woke = self.req.flush();
        self.woke_server |= woke;
        let started = Instant::now();
        let mut w = if woke {
            self.backoff.start_polite()
        } else {
            self.backoff.start()
        };
        let mut last_check = started;
        loop {
            self.drain_to_stash()?;
            if self
                .req
                .has_space(len)
                .map_err(|e| self.violation(e.to_string()))?
            {
                return Ok(());
            }
            if w.step() == Phase::Sleep {
                let _ = self.req.sleep_for_space(len, Duration::from_millis(1));
            }
            if last_check.elapsed() >= LIVENESS_SLICE {
                self.check_server(started)?;
                last_check = Instant::now();
            }
        }
    }

    fn drain_to_stash(&mut self) -> Result<()> {
        while let Some(f) = self
            .resp
            .peek()
            .map_err(|e| self.violation(e.to_string()))?
        {
            let mut buf = AlignedVec::new();
            self.resp.copy_payload(&f, &mut buf);
            self.resp.release(&f);
            self.stash.push_back((f.corr, buf));
        }
        Ok(())
    }
}

fn unexpected(r: &Response) -> Error {
    match r {
        Response::Error { code, message } => Error::server(*code, message),
        other => Error::Protocol(format!("unexpected response {other:?}")),
    }
}
