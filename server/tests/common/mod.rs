//! Test support: real `ringbase` server processes, child client processes (this test
//! binary re-executed in a child role), and watchdogs so that nothing can hang.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use std::os::fd::AsFd;

use ringbase_client::{Client, ConnectOptions, RingSizes, WaitMode};
use ringbase_protocol::handshake::{self, Hello, Welcome, WelcomeStatus, WELCOME_SIZE};
use ringbase_protocol::segment::Segment;

/// Env var that turns a re-executed test binary into a child client.
pub const CHILD_ROLE: &str = "RINGBASE_TEST_CHILD_ROLE";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A scratch directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("rbtest-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running `ringbase serve`, killed on drop.
pub struct ServerProc {
    pub child: Child,
    pub name: String,
    pub runtime: PathBuf,
    pub data: PathBuf,
    /// The extra `serve` arguments it was started with.
    pub extra: Vec<String>,
}

pub fn ringbase_bin() -> &'static str {
    env!("CARGO_BIN_EXE_ringbase")
}

impl ServerProc {
    /// Starts a server and waits (bounded) for its readiness line.
    pub fn start(runtime: &Path, data: &Path, name: &str, extra: &[&str]) -> ServerProc {
        ServerProc::start_wrapped(&[], runtime, data, name, extra)
    }

    /// [`ServerProc::start`] through a wrapper command that execs its arguments
    /// (e.g. `nsenter --net=...`: a server on another network).
    pub fn start_wrapped(
        wrapper: &[&str],
        runtime: &Path,
        data: &Path,
        name: &str,
        extra: &[&str],
    ) -> ServerProc {
        let mut cmd = match wrapper.split_first() {
            None => Command::new(ringbase_bin()),
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(ringbase_bin());
                c
            }
        };
        let mut child = cmd
            .args(["serve", "--name", name, "--data-dir"])
            .arg(data)
            .args(extra)
            .env("RINGBASE_RUNTIME_DIR", runtime)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn ringbase serve");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(l)) = lines.next() {
                let _ = tx.send(l);
            }
            for _ in lines {}
        });
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(l) if l.starts_with("ringbase: serving") => {}
            other => {
                let _ = child.kill();
                panic!("server did not become ready: {other:?}");
            }
        }
        ServerProc {
            child,
            name: name.to_string(),
            runtime: runtime.to_path_buf(),
            data: data.to_path_buf(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// Stops this server (if it still runs: SIGKILL) and starts a new one on the same
    /// runtime and data dirs, with the same arguments.
    pub fn restart(self) -> ServerProc {
        let (runtime, data, name) = (self.runtime.clone(), self.data.clone(), self.name.clone());
        let extra = self.extra.clone();
        drop(self);
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        ServerProc::start(&runtime, &data, &name, &extra)
    }

    pub fn options(&self) -> ConnectOptions {
        ConnectOptions::new(&self.name).runtime_dir(&self.runtime)
    }

    pub fn connect(&self) -> Client {
        Client::connect_with(self.options()).expect("connect")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Runs the CLI against this server (`ringbase ARGS --name NAME`, in its runtime
    /// dir) to the end: exit code, stdout, stderr.
    pub fn cli(&self, args: &[&str]) -> (Option<i32>, String, String) {
        let out = Command::new(ringbase_bin())
            .args(args)
            .args(["--name", &self.name])
            .env("RINGBASE_RUNTIME_DIR", &self.runtime)
            .output()
            .expect("run the ringbase CLI");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }

    /// SIGTERM and wait (bounded); returns the exit status code.
    pub fn terminate(&mut self) -> Option<i32> {
        // SAFETY: sending a signal to our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        wait_child(&mut self.child, Duration::from_secs(30)).code()
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits for a child with a deadline; kills it and panics past the deadline.
pub fn wait_child(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("child {} did not exit within {timeout:?}", child.id());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The `"key"` of each JSON line the CLI printed (list, query), in order.
pub fn json_line_keys(out: &str) -> Vec<String> {
    out.lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).expect("a JSON line")["key"]
                .as_str()
                .expect("a key")
                .to_string()
        })
        .collect()
}

/// Re-executes this test binary as a child client running `role` (dispatched by the
/// test named `child_entry` in the same file).
pub fn spawn_child(role: &str, server: &ServerProc, args: &[String]) -> Child {
    spawn_child_at(role, &server.name, &server.runtime, args)
}

/// As [`spawn_child`], for a server named `name` under `runtime` that may not run yet.
pub fn spawn_child_at(role: &str, name: &str, runtime: &Path, args: &[String]) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_entry",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(CHILD_ROLE, role)
        .env("RINGBASE_TEST_NAME", name)
        .env("RINGBASE_RUNTIME_DIR", runtime)
        .env("RINGBASE_TEST_ARGS", args.join("\u{1f}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn child")
}

/// In a child: its role's arguments.
pub fn child_args() -> Vec<String> {
    std::env::var("RINGBASE_TEST_ARGS")
        .unwrap_or_default()
        .split('\u{1f}')
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

/// In a child: connect to the parent's server.
pub fn child_connect() -> Client {
    let name = std::env::var("RINGBASE_TEST_NAME").unwrap();
    let dir = std::env::var("RINGBASE_RUNTIME_DIR").unwrap();
    Client::connect_with(ConnectOptions::new(&name).runtime_dir(dir)).expect("child connect")
}

/// Runs `f` on a thread and panics if it takes longer than `timeout` (a watchdog, not a
/// performance assertion: the limits are generous).
pub fn watchdog<T: Send + 'static>(timeout: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    let h = std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(timeout) {
        Ok(v) => {
            let _ = h.join();
            v
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => match h.join() {
            Err(p) => std::panic::resume_unwind(p),
            Ok(()) => unreachable!(),
        },
        Err(mpsc::RecvTimeoutError::Timeout) => {
            panic!("watchdog: test step did not finish within {timeout:?}")
        }
    }
}

/// Polls `cond` until true or the deadline passes; returns whether it became true.
pub fn eventually(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits until the child prints the line `want` on stdout (skipping the test harness's
/// own lines); returns it, or `None` on timeout or EOF.
pub fn read_line(child: &mut Child, timeout: Duration) -> Option<String> {
    wait_line(child, "ready", timeout)
}

/// See [`read_line`].
pub fn wait_line(child: &mut Child, want: &str, timeout: Duration) -> Option<String> {
    let out = child.stdout.take()?;
    let (tx, rx) = mpsc::channel();
    let want = want.to_string();
    std::thread::spawn(move || {
        let mut sent = false;
        // Keep draining after the match so the child never writes into a closed pipe.
        for l in BufReader::new(out).lines() {
            let Ok(l) = l else { break };
            // The harness prints "test child_entry ... " without a newline first.
            if !sent && l.trim_end().ends_with(want.as_str()) {
                let _ = tx.send(want.clone());
                sent = true;
            }
        }
    });
    rx.recv_timeout(timeout).ok()
}

/// Entries in /dev/shm that look like ours (there should never be any: sessions use
/// memfds, which live in no file system).
pub fn shm_leftovers() -> Vec<String> {
    std::fs::read_dir("/dev/shm")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.contains("ringbase"))
                .collect()
        })
        .unwrap_or_default()
}

/// Number of memfd segments the process `pid` maps (from /proc/PID/maps).
pub fn mapped_segments(pid: u32) -> usize {
    std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .map(|m| {
            m.lines()
                .filter(|l| l.contains("memfd:ringbase-session"))
                .count()
        })
        .unwrap_or(0)
}

pub fn raw_connect(srv: &ServerProc) -> std::os::unix::net::UnixStream {
    let path = ConnectOptions::new(&srv.name)
        .runtime_dir(&srv.runtime)
        .paths()
        .unwrap()
        .socket;
    std::os::unix::net::UnixStream::connect(path).unwrap()
}

pub fn read_welcome(
    sock: &std::os::unix::net::UnixStream,
) -> (Welcome, Option<std::os::fd::OwnedFd>) {
    let mut head = [0u8; WELCOME_SIZE];
    let fd = handshake::recv_with_fd(sock.as_fd(), &mut head).unwrap();
    let n = Welcome::message_len(&head).unwrap();
    let mut full = head.to_vec();
    full.resize(WELCOME_SIZE + n, 0);
    if n > 0 {
        handshake::recv_with_fd(sock.as_fd(), &mut full[WELCOME_SIZE..]).unwrap();
    }
    (Welcome::decode(&full).unwrap(), fd)
}

/// A session opened by hand, so the test can write raw bytes into its request ring.
pub struct RawSession {
    pub _sock: std::os::unix::net::UnixStream,
    pub seg: Segment,
}

pub fn raw_session(srv: &ServerProc) -> RawSession {
    let sock = raw_connect(srv);
    let hello = Hello {
        protocol: ringbase_protocol::PROTOCOL_VERSION,
        pid: std::process::id(),
        rings: RingSizes {
            request: 4096,
            response: 4096,
            event: 4096,
        },
        wait: WaitMode::Adaptive,
    };
    handshake::send_with_fd(sock.as_fd(), &hello.encode(), None).unwrap();
    let (w, fd) = read_welcome(&sock);
    assert_eq!(w.status, WelcomeStatus::Ok);
    let seg = Segment::open(fd.unwrap(), w.segment_size, w.rings, w.session_id).unwrap();
    RawSession { _sock: sock, seg }
}

impl RawSession {
    /// Writes raw bytes at ring offset 0 and publishes `tail`.
    pub fn poke(&self, bytes: &[u8], tail: u64) {
        let ring = self.seg.request_ring();
        let base = ring.as_ptr();
        // SAFETY: base points at the request ring's control block inside our mapping
        // (tail is its first u64); data starts 256 bytes on, and 256 + bytes.len() is
        // within 256 + 4096.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), base.add(256), bytes.len());
            std::ptr::write_volatile(base as *mut u64, tail);
        }
        ring.wake_consumer();
    }

    /// Responses that arrive: waits (up to 30 s, a watchdog) for the first
    /// `expected`, then `settle` more for any extra one, and returns the count.
    pub fn responses(&self, expected: usize, settle: Duration) -> usize {
        let mut c = self.seg.response_ring().consumer().unwrap();
        let mut n = 0;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let mut settle_until: Option<std::time::Instant> = None;
        loop {
            while let Ok(Some(f)) = c.peek() {
                c.release(&f);
                n += 1;
            }
            let now = std::time::Instant::now();
            if n >= expected {
                let until = *settle_until.get_or_insert(now + settle);
                if now >= until {
                    break;
                }
            } else if now >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        n
    }
}

/// A free TCP port on 127.0.0.1 (bound, then released for a server to take).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
