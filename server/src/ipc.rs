//! The control socket: listening, peer checks, the handshake, and the session registry.
//!
//! A client connects to `<runtime dir>/<name>/ctl.sock`, sends a [`Hello`], and gets a
//! [`Welcome`] with the session's segment attached as a descriptor. The socket then stays
//! open for the life of the session: EOF is how each side learns the other is gone.

use std::collections::HashMap;
use std::io::{self, Read};
use std::os::fd::AsFd;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use interprocess::local_socket::traits::{Listener as _, StreamCommon};
use interprocess::local_socket::{GenericFilePath, ListenerOptions, ToFsName};
use interprocess::os::unix::uds_local_socket::{Listener, Stream};
use ringbase_protocol::handshake::{self, Hello, Welcome, WelcomeStatus, HELLO_SIZE};
use ringbase_protocol::paths::ServerPaths;
use ringbase_protocol::ring::RingPtr;
use ringbase_protocol::segment::Segment;
use ringbase_protocol::PROTOCOL_VERSION;

use crate::engine::{Engine, TransportInfo};
use crate::lock::{LockError, LockFile};
use crate::session;

/// Server settings.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Server name (one server per name and runtime dir).
    pub name: String,
    /// Runtime dir holding `<name>/ctl.sock` and `<name>/lock`.
    pub runtime_dir: PathBuf,
    /// Most concurrent sessions; further clients are refused with a clear error.
    pub max_sessions: usize,
    /// Users other than our own that may connect.
    pub allowed_uids: Vec<u32>,
}

impl ServerConfig {
    /// Defaults for `name` under the environment's runtime dir.
    pub fn new(name: &str) -> ServerConfig {
        ServerConfig {
            name: name.to_string(),
            runtime_dir: ringbase_protocol::paths::runtime_dir(),
            max_sessions: 256,
            allowed_uids: Vec::new(),
        }
    }
}

/// Errors starting the server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// Another server holds the name.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// Invalid name.
    #[error(transparent)]
    Name(#[from] ringbase_protocol::paths::InvalidName),
    /// The runtime dir or socket could not be set up.
    #[error("{what}: {source}")]
    Io {
        /// what failed
        what: String,
        /// cause
        source: io::Error,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> ServeError {
    let what = what.into();
    move |source| ServeError::Io { what, source }
}

/// What the registry keeps per live session: enough to wake its thread.
struct SessionEntry {
    request_ring: RingPtr,
    response_ring: RingPtr,
    stop: Arc<AtomicBool>,
}

// SAFETY: RingPtr is Send (see its docs); the entry is only moved between threads under
// the registry mutex, and the ring memory stays mapped until the session thread (which
// owns the Segment) has exited, after which the entry is removed.
unsafe impl Send for SessionEntry {}

/// State shared by the accept loop and the session threads.
struct Shared {
    config: ServerConfig,
    engine: Arc<Engine>,
    shutdown: AtomicBool,
    sessions: Mutex<HashMap<u64, SessionEntry>>,
    next_id: AtomicU64,
}

impl Shared {
    /// Live session count.
    fn session_count(&self) -> usize {
        self.sessions.lock().expect("registry").len()
    }

    /// Called on a session thread once the session has ended, before its segment is
    /// unmapped: an entry in the registry guarantees that its rings are mapped.
    fn remove_session(&self, id: u64) {
        self.sessions.lock().expect("registry").remove(&id);
    }
}

impl TransportInfo for Shared {
    fn session_count(&self) -> usize {
        Shared::session_count(self)
    }
}

/// A running server.
pub struct Server {
    shared: Arc<Shared>,
    paths: ServerPaths,
    accept: Option<JoinHandle<()>>,
    _lock: LockFile,
}

/// Creates `dir` (and parents) with mode 0700, and checks that it is ours and private.
fn private_dir(dir: &Path) -> Result<(), ServeError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err(format!("creating {}", dir.display())))?;
    let meta = std::fs::metadata(dir).map_err(io_err(format!("stat {}", dir.display())))?;
    if meta.permissions().mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io_err(format!("chmod 0700 {}", dir.display())))?;
    }
    Ok(())
}

impl Server {
    /// Takes the name's lock, binds the control socket and starts accepting sessions.
    pub fn start(config: ServerConfig, engine: Arc<Engine>) -> Result<Server, ServeError> {
        let paths = ServerPaths::new(&config.runtime_dir, &config.name)?;
        private_dir(&config.runtime_dir)?;
        private_dir(&paths.dir)?;
        let lock = LockFile::acquire(&paths.lock)?;
        // We hold the lock, so any socket file here is a leftover of a dead server.
        match std::fs::remove_file(&paths.socket) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("removing stale socket")(e)),
        }
        let name = paths
            .socket
            .as_path()
            .to_fs_name::<GenericFilePath>()
            .map_err(io_err("socket name"))?;
        let listener: Listener = ListenerOptions::new()
            .name(name)
            .create_sync_as()
            .map_err(io_err(format!("binding {}", paths.socket.display())))?;
        std::fs::set_permissions(&paths.socket, std::fs::Permissions::from_mode(0o600))
            .map_err(io_err("chmod socket"))?;
        let shared = Arc::new(Shared {
            config,
            engine,
            shutdown: AtomicBool::new(false),
            sessions: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
        });
        let s2 = Arc::clone(&shared);
        let accept = std::thread::Builder::new()
            .name("ringbase-accept".into())
            .spawn(move || accept_loop(listener, s2))
            .map_err(io_err("spawning accept thread"))?;
        Ok(Server {
            shared,
            paths,
            accept: Some(accept),
            _lock: lock,
        })
    }

    /// Path of the control socket.
    pub fn socket_path(&self) -> &Path {
        &self.paths.socket
    }

    /// Live sessions.
    pub fn session_count(&self) -> usize {
        self.shared.session_count()
    }

    /// Stops accepting, ends every session (clients see `Disconnected`), and waits for
    /// the session threads. The engine is shut down by its owner afterwards.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if self.shared.shutdown.swap(true, Ordering::SeqCst) {
            return;
        }
        // Unblock accept() by connecting once.
        if let Ok(name) = self.paths.socket.as_path().to_fs_name::<GenericFilePath>() {
            let _ = <Stream as interprocess::local_socket::traits::Stream>::connect(name);
        }
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        // Tell every session to end, and wait (bounded) until they have: each one
        // unmaps its segment and closes its socket, so clients see `Disconnected`.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            {
                let map = self.shared.sessions.lock().expect("registry");
                if map.is_empty() {
                    break;
                }
                for e in map.values() {
                    e.stop.store(true, Ordering::SeqCst);
                    e.request_ring.wake_consumer();
                    e.response_ring.wake_producer();
                }
            }
            if Instant::now() > deadline {
                eprintln!("ringbase: sessions did not end within 10 s; exiting anyway");
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = std::fs::remove_file(&self.paths.socket);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

fn accept_loop(listener: Listener, shared: Arc<Shared>) {
    loop {
        let conn = listener.accept();
        if shared.shutdown.load(Ordering::SeqCst) {
            return;
        }
        match conn {
            Ok(stream) => {
                // The handshake runs on the session's own thread so that a slow or silent
                // client cannot hold up the accept loop.
                let s = Arc::clone(&shared);
                let spawned = std::thread::Builder::new()
                    .name("ringbase-session".into())
                    .stack_size(256 * 1024)
                    .spawn(move || handshake_and_run(stream, s));
                if let Err(e) = spawned {
                    eprintln!("ringbase: cannot spawn session thread: {e}");
                }
            }
            Err(e) => {
                eprintln!("ringbase: accept failed: {e}");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

fn refuse(stream: &Stream, status: WelcomeStatus, message: String) {
    let w = Welcome::refuse(status, message);
    let _ = handshake::send_with_fd(stream.inner().as_fd(), &w.encode(), None);
}

fn handshake_and_run(stream: Stream, shared: Arc<Shared>) {
    // Credentials: same uid, or one explicitly allowed.
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    match stream.peer_creds() {
        Ok(c) => {
            let uid = c.euid().unwrap_or(u32::MAX);
            if uid != me && !shared.config.allowed_uids.contains(&uid) {
                refuse(
                    &stream,
                    WelcomeStatus::PermissionDenied,
                    format!("uid {uid} may not connect to this server (owner uid {me})"),
                );
                return;
            }
        }
        Err(e) => {
            refuse(
                &stream,
                WelcomeStatus::PermissionDenied,
                format!("cannot read peer credentials: {e}"),
            );
            return;
        }
    }
    // The hello must arrive promptly.
    let _ = stream
        .inner()
        .set_read_timeout(Some(Duration::from_secs(5)));
    let mut buf = [0u8; HELLO_SIZE];
    if (&stream).read_exact(&mut buf[..12]).is_err() {
        return;
    }
    let version = match Hello::peek_version(&buf[..12]) {
        Ok(v) => v,
        Err(e) => {
            refuse(&stream, WelcomeStatus::BadHello, format!("bad hello: {e}"));
            return;
        }
    };
    if version != PROTOCOL_VERSION {
        eprintln!("ringbase: refused a client speaking protocol version {version} (this server speaks {PROTOCOL_VERSION})");
        refuse(
            &stream,
            WelcomeStatus::VersionMismatch,
            format!("protocol version mismatch: client speaks {version}, server speaks {PROTOCOL_VERSION}"),
        );
        return;
    }
    if (&stream).read_exact(&mut buf[12..]).is_err() {
        return;
    }
    let hello = match Hello::decode(&buf) {
        Ok(h) => h,
        Err(e) => {
            refuse(&stream, WelcomeStatus::BadHello, format!("bad hello: {e}"));
            return;
        }
    };
    if shared.shutdown.load(Ordering::SeqCst) {
        refuse(
            &stream,
            WelcomeStatus::ShuttingDown,
            "server is shutting down".into(),
        );
        return;
    }
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let segment = match Segment::create(hello.rings, id) {
        Ok(s) => s,
        Err(e) => {
            refuse(
                &stream,
                WelcomeStatus::Internal,
                format!("cannot create session segment: {e}"),
            );
            return;
        }
    };
    // Take our ends of the rings now, while no one else can reach the segment: the
    // client must not get a say in where our indices start.
    let (req, resp, events) = match (
        segment.request_ring().consumer(),
        segment.response_ring().producer(),
        segment.event_ring().producer(),
    ) {
        (Ok(c), Ok(p), Ok(e)) => (c, p, e),
        _ => {
            refuse(
                &stream,
                WelcomeStatus::Internal,
                "fresh segment failed its ring checks".into(),
            );
            return;
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    {
        let mut map = shared.sessions.lock().expect("registry");
        if map.len() >= shared.config.max_sessions {
            drop(map);
            refuse(
                &stream,
                WelcomeStatus::TooManySessions,
                format!(
                    "session limit reached ({} sessions)",
                    shared.config.max_sessions
                ),
            );
            return;
        }
        map.insert(
            id,
            SessionEntry {
                request_ring: segment.request_ring(),
                response_ring: segment.response_ring(),
                stop: Arc::clone(&stop),
            },
        );
    }
    let geo = *segment.geometry();
    let welcome = Welcome {
        protocol: PROTOCOL_VERSION,
        status: WelcomeStatus::Ok,
        session_id: id,
        segment_size: geo.segment_size,
        rings: geo.sizes,
        max_payload: geo.max_payload,
        message: String::new(),
    };
    if handshake::send_with_fd(
        stream.inner().as_fd(),
        &welcome.encode(),
        Some(segment.fd()),
    )
    .is_err()
    {
        shared.remove_session(id);
        return;
    }
    let _ = stream.inner().set_read_timeout(None);
    session::run(session::SessionArgs {
        id,
        segment: &segment,
        req,
        resp,
        events,
        stream: &stream,
        wait: hello.wait,
        engine: &shared.engine,
        transport: Arc::clone(&shared) as Arc<dyn TransportInfo>,
        stop: &stop,
        shutdown: &shared.shutdown,
    });
    // The registry entry holds copies of the ring pointers (shutdown wakes sessions
    // through them, under the registry lock): remove it before unmapping. The session's
    // threads have exited, so nothing can touch the segment after this drop.
    shared.remove_session(id);
    drop(segment);
}
