//! Process and file-system plumbing that makes a benchmark always end and always clean
//! up: child processes killed and reaped on drop (panics included), private temp dirs
//! removed on drop, and a [`Watchdog`] that ends the whole process, children included,
//! if one phase takes longer than its limit. Also: CPU pinning ([`PinGuard`]) and a
//! meter of the CPU the rest of the machine uses meanwhile ([`CpuMeter`]), so a
//! benchmark can say when its numbers were disturbed (Linux). And what every bench
//! binary does alike: its default paths ([`DefaultPaths`]), its command line ([`Args`]),
//! writing its JSON results ([`write_json`]) and its exit status ([`exit_code`]).

use std::error::Error;
use std::fmt::Display;
use std::fs::DirBuilder;
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitCode, ExitStatus, Stdio};
use std::str::FromStr;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Exit status of a process ended by the [`Watchdog`].
pub const WATCHDOG_EXIT: i32 = 3;

/// Prefix of the `ringbase serve` readiness line.
pub const SERVER_READY: &str = "ringbase: serving";

/// Where a bench binary looks by default: next to itself in the cargo target directory.
#[derive(Debug, Clone)]
pub struct DefaultPaths {
    /// Directory of the running executable (e.g. `target/release`), if known.
    pub exe_dir: Option<PathBuf>,
    /// The `ringbase` server binary: in `exe_dir`, else `target/release/ringbase`.
    pub server: PathBuf,
    /// Where the JSON results go: the file name given to [`DefaultPaths::new`] in the
    /// parent of `exe_dir` (e.g. `target/`), else in `target/`.
    pub json: PathBuf,
}

impl DefaultPaths {
    /// The defaults of a bench that writes its results to `json_name`.
    pub fn new(json_name: &str) -> DefaultPaths {
        let exe_dir = std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf));
        DefaultPaths {
            server: exe_dir
                .as_ref()
                .map(|d| d.join("ringbase"))
                .unwrap_or_else(|| PathBuf::from("target/release/ringbase")),
            json: exe_dir
                .as_ref()
                .and_then(|d| d.parent())
                .map(|t| t.join(json_name))
                .unwrap_or_else(|| Path::new("target").join(json_name)),
            exe_dir,
        }
    }
}

/// A bench's command line (without the program name), read flag by flag.
#[derive(Debug)]
pub struct Args {
    /// What is left of it.
    it: std::vec::IntoIter<String>,
}

impl Args {
    /// The command line `args`.
    pub fn new(args: impl IntoIterator<Item = String>) -> Args {
        Args {
            it: args.into_iter().collect::<Vec<_>>().into_iter(),
        }
    }

    /// The next flag, or `None` at the end.
    pub fn next_flag(&mut self) -> Option<String> {
        self.it.next()
    }

    /// The value that follows `flag`.
    ///
    /// # Errors
    ///
    /// `"{flag} needs a value"` at the end of the command line.
    pub fn value(&mut self, flag: &str) -> Result<String, String> {
        self.it
            .next()
            .ok_or_else(|| format!("{flag} needs a value"))
    }

    /// The value that follows `flag`, as a path.
    ///
    /// # Errors
    ///
    /// As for [`Args::value`].
    pub fn path(&mut self, flag: &str) -> Result<PathBuf, String> {
        self.value(flag).map(PathBuf::from)
    }

    /// The value that follows `flag`, as a number.
    ///
    /// # Errors
    ///
    /// As for [`Args::value`]; `"{flag}: not a number: {v:?}"` if it does not parse.
    pub fn number<T: FromStr>(&mut self, flag: &str) -> Result<T, String> {
        let v = self.value(flag)?;
        v.parse()
            .map_err(|_| format!("{flag}: not a number: {v:?}"))
    }

    /// The value that follows `flag`, as a number of at least 1.
    ///
    /// # Errors
    ///
    /// As for [`Args::number`]; `"{flag} must be at least 1"` for 0.
    pub fn at_least_one(&mut self, flag: &str) -> Result<usize, String> {
        match self.number(flag)? {
            0 => Err(format!("{flag} must be at least 1")),
            n => Ok(n),
        }
    }
}

/// The exit status of a bench (or of one of its child roles) that ended with
/// `result`: success, or failure after printing `"{who}: {error}"` on stderr.
pub fn exit_code<E: Display>(who: &str, result: Result<(), E>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{who}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The exit status (2) of a bench given a bad command line, after printing
/// `"{who}: {msg}"` and the `usage` on stderr.
pub fn usage_error(who: &str, msg: &str, usage: &str) -> ExitCode {
    eprintln!("{who}: {msg}\n{usage}");
    ExitCode::from(2)
}

/// Checks that the server binary a bench is to start exists.
///
/// # Errors
///
/// If `server` is not a file: a message that says how to build it.
pub fn check_server(server: &Path) -> Result<(), String> {
    if !server.is_file() {
        return Err(format!(
            "no server binary at {} (build it: cargo build --release -p ringbase-server, \
             or pass --server PATH)",
            server.display()
        ));
    }
    Ok(())
}

/// Writes `results` as pretty JSON (and a newline) to `path`, creating its directory,
/// and says so on stderr.
///
/// # Errors
///
/// Serialisation, directory creation and write errors (the latter naming `path`).
pub fn write_json(path: &Path, results: &serde_json::Value) -> Result<(), Box<dyn Error>> {
    let json = serde_json::to_string_pretty(results)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, json + "\n").map_err(|e| format!("writing {}: {e}", path.display()))?;
    eprintln!("results written to {}", path.display());
    Ok(())
}

/// What must go when the bench ends, even when it ends without unwinding (the
/// watchdog calls `process::exit`, which runs no destructors).
struct Registry {
    /// Children of [`ChildGuard`]s (gone once the guard is dropped).
    children: Vec<Weak<Mutex<Child>>>,
    /// Paths of live [`TempDir`]s.
    dirs: Vec<PathBuf>,
}

/// The one registry of this process.
static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    children: Vec::new(),
    dirs: Vec::new(),
});

/// Locks the registry (a panic elsewhere does not make it unusable).
fn registry() -> MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

/// Locks a child (a panic elsewhere does not make it unusable).
fn lock_child(c: &Mutex<Child>) -> MutexGuard<'_, Child> {
    c.lock().unwrap_or_else(|e| e.into_inner())
}

/// Kills and reaps every child still alive from [`ChildGuard::spawn_ready`] and removes
/// every [`TempDir`] still present. For exits that skip destructors.
pub fn cleanup_all() {
    let (children, dirs) = {
        let mut r = registry();
        (std::mem::take(&mut r.children), std::mem::take(&mut r.dirs))
    };
    for child in children.iter().filter_map(Weak::upgrade) {
        let mut c = lock_child(&child);
        let _ = c.kill();
        let _ = c.wait();
    }
    for dir in dirs {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// A private (mode 0700) directory under the system temp dir, removed with its contents
/// when dropped.
#[derive(Debug)]
pub struct TempDir {
    /// The directory.
    path: PathBuf,
}

impl TempDir {
    /// Creates `<temp dir>/<prefix>-<pid>-<unique>`.
    ///
    /// # Errors
    ///
    /// Any error creating the directory.
    pub fn new(prefix: &str) -> io::Result<TempDir> {
        let base = std::env::temp_dir();
        for attempt in 0..100u32 {
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            let path = base.join(format!(
                "{prefix}-{}-{nanos:x}{attempt}",
                std::process::id()
            ));
            match DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => {
                    registry().dirs.push(path.clone());
                    return Ok(TempDir { path });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "no free temp dir name",
        ))
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
        registry().dirs.retain(|d| d != &self.path);
    }
}

/// A child process that is killed (SIGKILL) and reaped when the guard is dropped.
///
/// Its stdin is a pipe that stays open as long as the guard lives, so a child that
/// reads stdin learns of our death (EOF) even if we are killed ourselves.
#[derive(Debug)]
pub struct ChildGuard {
    /// Name for messages.
    name: String,
    /// Process id.
    pid: u32,
    /// The child, shared with the registry (for [`cleanup_all`]).
    child: Arc<Mutex<Child>>,
}

impl ChildGuard {
    /// Spawns `cmd` (stdin and stdout are replaced by pipes; stderr is left as set) and
    /// waits at most `timeout` for a stdout line starting with `ready_prefix`, which it
    /// returns. Other stdout lines are copied to our stderr, prefixed with `name`.
    ///
    /// # Errors
    ///
    /// Spawn errors; [`io::ErrorKind::TimedOut`] if the line does not come in time;
    /// [`io::ErrorKind::UnexpectedEof`] if the child closes stdout (exits) first. The
    /// child is killed on every error.
    pub fn spawn_ready(
        name: &str,
        cmd: &mut Command,
        ready_prefix: &str,
        timeout: Duration,
    ) -> io::Result<(ChildGuard, String)> {
        let (guard, stdout) = ChildGuard::spawn_piped(name, cmd)?;
        let (tx, rx) = mpsc::channel();
        let prefix = ready_prefix.to_string();
        let label = name.to_string();
        std::thread::Builder::new()
            .name(format!("{name}-stdout"))
            .spawn(move || {
                let mut tx = Some(tx);
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if tx.is_some() && line.starts_with(&prefix) {
                        let _ = tx.take().expect("checked").send(line);
                    } else {
                        eprintln!("[{label}] {line}");
                    }
                }
            })?;
        match rx.recv_timeout(timeout) {
            Ok(line) => Ok((guard, line)),
            Err(RecvTimeoutError::Timeout) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{name} printed no {ready_prefix:?} line within {timeout:?}"),
            )),
            Err(RecvTimeoutError::Disconnected) => {
                let status = guard.try_status(Duration::from_secs(1));
                Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("{name} closed stdout before it was ready (exit status: {status})"),
                ))
            }
        }
    }

    /// Spawns `cmd` with stdin and stdout piped (stderr as set) and registers it for
    /// [`cleanup_all`]; returns the guard and the child's stdout.
    fn spawn_piped(name: &str, cmd: &mut Command) -> io::Result<(ChildGuard, ChildStdout)> {
        let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).spawn()?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let guard = ChildGuard {
            name: name.to_string(),
            pid: child.id(),
            child: Arc::new(Mutex::new(child)),
        };
        registry().children.push(Arc::downgrade(&guard.child));
        Ok((guard, stdout))
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Waits at most `wait` for the child to exit, checking every `poll`; `None` if it
    /// is still running.
    fn wait_for(&self, wait: Duration, poll: Duration) -> io::Result<Option<ExitStatus>> {
        let deadline = Instant::now() + wait;
        loop {
            if let Some(s) = lock_child(&self.child).try_wait()? {
                return Ok(Some(s));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(poll);
        }
    }

    /// Waits at most `wait` for the child to exit; describes its status.
    fn try_status(&self, wait: Duration) -> String {
        match self.wait_for(wait, Duration::from_millis(10)) {
            Ok(Some(s)) => s.to_string(),
            Ok(None) => "still running".into(),
            Err(e) => format!("unknown: {e}"),
        }
    }
}

/// The stdout lines of a child started with [`ChildGuard::spawn_lines`], read by a
/// background thread.
#[derive(Debug)]
pub struct ChildLines {
    /// Name for messages.
    name: String,
    /// Lines, in order; disconnected once the child closes stdout.
    rx: mpsc::Receiver<String>,
}

impl ChildLines {
    /// Waits at most `timeout` for the next line starting with `prefix` and returns it;
    /// lines before it are copied to our stderr, prefixed with the child's name.
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::TimedOut`] if no such line comes in time;
    /// [`io::ErrorKind::UnexpectedEof`] if the child closes stdout first.
    pub fn expect(&self, prefix: &str, timeout: Duration) -> io::Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) if line.starts_with(prefix) => return Ok(line),
                Ok(line) => eprintln!("[{}] {line}", self.name),
                Err(RecvTimeoutError::Timeout) => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "{} printed no {prefix:?} line within {timeout:?}",
                            self.name
                        ),
                    ))
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("{} closed stdout before a {prefix:?} line", self.name),
                    ))
                }
            }
        }
    }
}

impl ChildGuard {
    /// Spawns `cmd` with stdin and stdout piped (stderr as set) and hands back every
    /// stdout line through a [`ChildLines`]. Talk to the child with
    /// [`ChildGuard::send_line`].
    ///
    /// # Errors
    ///
    /// Spawn errors (the child is killed if the reader thread cannot start).
    pub fn spawn_lines(name: &str, cmd: &mut Command) -> io::Result<(ChildGuard, ChildLines)> {
        let (guard, stdout) = ChildGuard::spawn_piped(name, cmd)?;
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name(format!("{name}-stdout"))
            .spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            })?;
        let lines = ChildLines {
            name: name.to_string(),
            rx,
        };
        Ok((guard, lines))
    }

    /// Writes `line` and a newline to the child's stdin.
    ///
    /// # Errors
    ///
    /// If the child's stdin is closed (it exited) or was not piped.
    pub fn send_line(&self, line: &str) -> io::Result<()> {
        let mut c = lock_child(&self.child);
        let stdin = c
            .stdin
            .as_mut()
            .ok_or_else(|| io::Error::new(io::ErrorKind::BrokenPipe, "stdin is not piped"))?;
        stdin.write_all(format!("{line}\n").as_bytes())?;
        stdin.flush()
    }

    /// Closes the child's stdin (a child that reads it sees EOF) and waits at most
    /// `timeout` for it to exit, killing it after that; describes how it ended.
    pub fn close_and_wait(&self, timeout: Duration) -> String {
        drop(lock_child(&self.child).stdin.take());
        match self.wait_for(timeout, Duration::from_millis(5)) {
            Ok(Some(s)) => s.to_string(),
            Ok(None) => {
                let mut c = lock_child(&self.child);
                let _ = c.kill();
                let _ = c.wait();
                format!("killed after not exiting within {timeout:?}")
            }
            Err(e) => format!("status unknown: {e}"),
        }
    }

    /// Asks the child to stop (SIGTERM) and waits at most `timeout` for it to exit;
    /// kills it (SIGKILL) if it does not. Returns its exit status and how long it took
    /// to exit after the signal, or `None` if it had to be killed.
    ///
    /// # Errors
    ///
    /// If waiting for the child fails.
    pub fn terminate(
        &self,
        timeout: Duration,
    ) -> io::Result<Option<(std::process::ExitStatus, Duration)>> {
        let mut c = lock_child(&self.child);
        if let Some(s) = c.try_wait()? {
            return Ok(Some((s, Duration::ZERO)));
        }
        // The child is not reaped (checked above, under the lock), so the pid is still
        // ours: no other process can have taken it.
        let pid = libc::pid_t::try_from(self.pid)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "pid out of range"))?;
        // SAFETY: kill has no memory preconditions; `pid` is our unreaped child.
        if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let t0 = Instant::now();
        loop {
            if let Some(s) = c.try_wait()? {
                return Ok(Some((s, t0.elapsed())));
            }
            if t0.elapsed() >= timeout {
                let _ = c.kill();
                let _ = c.wait();
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let mut c = lock_child(&self.child);
        if let Ok(None) = c.try_wait() {
            if let Err(e) = c.kill() {
                eprintln!("cannot kill {} (pid {}): {e}", self.name, self.pid);
            }
        }
        let _ = c.wait();
    }
}

/// Ends the process (after [`cleanup_all`], with status [`WATCHDOG_EXIT`]) when an
/// armed phase runs past its limit. It sleeps on a channel: no periodic wake-ups to
/// disturb what is being measured.
#[derive(Debug)]
pub struct Watchdog {
    /// Arms (`Some((what, deadline))`) or disarms (`None`); dropped to stop the thread.
    tx: Option<mpsc::Sender<Option<(String, Instant)>>>,
    /// The watchdog thread.
    thread: Option<JoinHandle<()>>,
}

impl Watchdog {
    /// Starts the watchdog thread, disarmed.
    ///
    /// # Errors
    ///
    /// If the thread cannot be spawned.
    pub fn start() -> io::Result<Watchdog> {
        let (tx, rx) = mpsc::channel::<Option<(String, Instant)>>();
        let thread = std::thread::Builder::new()
            .name("watchdog".into())
            .spawn(move || {
                let mut armed: Option<(String, Instant)> = None;
                loop {
                    let msg = match &armed {
                        None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
                        Some((_, deadline)) => {
                            rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
                        }
                    };
                    match msg {
                        Ok(next) => armed = next,
                        Err(RecvTimeoutError::Disconnected) => return,
                        Err(RecvTimeoutError::Timeout) => {
                            let what = armed.take().map(|a| a.0).unwrap_or_default();
                            eprintln!("watchdog: {what} ran past its time limit; aborting");
                            cleanup_all();
                            std::process::exit(WATCHDOG_EXIT);
                        }
                    }
                }
            })?;
        Ok(Watchdog {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Arms (or re-arms) the watchdog: `what` must end within `limit` from now.
    pub fn arm(&self, what: impl Into<String>, limit: Duration) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(Some((what.into(), Instant::now() + limit)));
        }
    }

    /// Disarms the watchdog.
    pub fn disarm(&self) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(None);
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The CPUs the calling thread may run on.
///
/// # Errors
///
/// If `sched_getaffinity` fails.
pub fn allowed_cpus() -> io::Result<Vec<usize>> {
    // SAFETY: an all-zero cpu_set_t is a valid, empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: pid 0 = the calling thread; `set` is a cpu_set_t of the size passed.
    let rc = unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((0..libc::CPU_SETSIZE as usize)
        // SAFETY: `c` is below CPU_SETSIZE, the set's capacity.
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect())
}

/// The set of `cpus`.
fn cpu_set(cpus: &[usize]) -> io::Result<libc::cpu_set_t> {
    // SAFETY: an all-zero cpu_set_t is a valid, empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &c in cpus {
        if c >= libc::CPU_SETSIZE as usize {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("no CPU {c}"),
            ));
        }
        // SAFETY: `c` is below CPU_SETSIZE, checked above.
        unsafe { libc::CPU_SET(c, &mut set) };
    }
    Ok(set)
}

/// Restricts the calling thread to `cpus`.
fn set_thread_cpus(cpus: &[usize]) -> io::Result<()> {
    let set = cpu_set(cpus)?;
    // SAFETY: pid 0 = the calling thread; `set` is a cpu_set_t of the size passed.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Restricts every thread of process `pid` that exists now to `cpus` (threads it starts
/// later inherit the set of the thread that starts them).
///
/// # Errors
///
/// If its threads cannot be listed, or a thread's set cannot be changed (a thread that
/// ended meanwhile is skipped).
pub fn set_process_cpus(pid: u32, cpus: &[usize]) -> io::Result<()> {
    let set = cpu_set(cpus)?;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let Some(tid) = task?
            .file_name()
            .to_str()
            .and_then(|t| t.parse::<libc::pid_t>().ok())
        else {
            continue;
        };
        // SAFETY: `tid` is a thread id; `set` is a cpu_set_t of the size passed.
        let rc = unsafe { libc::sched_setaffinity(tid, std::mem::size_of_val(&set), &set) };
        if rc != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::ESRCH) {
                return Err(e);
            }
        }
    }
    Ok(())
}

/// Pins the calling thread to some CPUs until dropped, then restores its previous set.
/// Threads spawned meanwhile inherit the pinning.
#[derive(Debug)]
pub struct PinGuard {
    /// The CPU set to restore.
    previous: Vec<usize>,
}

impl PinGuard {
    /// Pins the calling thread to `cpus`.
    ///
    /// # Errors
    ///
    /// If the CPU set cannot be read or set (e.g. a CPU we may not use).
    pub fn pin(cpus: &[usize]) -> io::Result<PinGuard> {
        let previous = allowed_cpus()?;
        set_thread_cpus(cpus)?;
        Ok(PinGuard { previous })
    }
}

impl Drop for PinGuard {
    fn drop(&mut self) {
        if let Err(e) = set_thread_cpus(&self.previous) {
            eprintln!("cannot restore the CPU affinity: {e}");
        }
    }
}

/// Clock ticks per second of the times in `/proc`.
fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 {
        hz as f64
    } else {
        100.0
    }
}

/// Busy CPU time of the whole machine so far, in clock ticks (user, nice, system, irq,
/// softirq: what runs on this kernel's CPUs; `steal` is the hypervisor's and excluded).
fn machine_busy_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal ...
    Some(f.first()? + f.get(1)? + f.get(2)? + f.get(5)? + f.get(6)?)
}

/// CPU time (user + system, all threads) of process `pid` so far, in clock ticks.
fn process_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces: fields after it start past ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest = state(3) ppid(4) ... utime(14) stime(15): indices 11 and 12 here.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// Measures the CPU that processes other than ours use while we measure: a benchmark on
/// a shared machine (other builds, tests) is disturbed, and should say so. Resolution is
/// one clock tick (usually 10 ms) of CPU time, so short phases read coarsely.
#[derive(Debug)]
pub struct CpuMeter {
    /// When measuring started.
    start: Instant,
    /// Machine busy ticks then.
    machine: u64,
    /// Our processes' ticks then.
    ours: u64,
    /// Our processes.
    pids: Vec<u32>,
}

impl CpuMeter {
    /// Starts measuring; `pids` are our processes (their CPU time is not counted). They
    /// must live until [`CpuMeter::others`]. `None` without `/proc`.
    pub fn start(pids: &[u32]) -> Option<CpuMeter> {
        Some(CpuMeter {
            start: Instant::now(),
            machine: machine_busy_ticks()?,
            ours: pids
                .iter()
                .map(|&p| process_ticks(p))
                .sum::<Option<u64>>()?,
            pids: pids.to_vec(),
        })
    }

    /// CPU used by everything but our processes since the start.
    pub fn others(&self) -> Option<OtherCpu> {
        let machine = machine_busy_ticks()?.checked_sub(self.machine)?;
        let ours = self
            .pids
            .iter()
            .map(|&p| process_ticks(p))
            .sum::<Option<u64>>()?
            .checked_sub(self.ours)?;
        let secs = self.start.elapsed().as_secs_f64();
        if secs <= 0.0 {
            return None;
        }
        let cpu_secs = machine.saturating_sub(ours) as f64 / clock_ticks();
        Some(OtherCpu {
            cores: cpu_secs / secs,
            cpu_time: Duration::from_secs_f64(cpu_secs),
        })
    }
}

/// What [`CpuMeter::others`] found.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OtherCpu {
    /// Average number of CPUs kept busy.
    pub cores: f64,
    /// Total CPU time (a multiple of the clock tick).
    pub cpu_time: Duration,
}

/// Other processes' CPU use (in CPUs, on average) above which a measurement is flagged
/// as disturbed...
pub const DISTURBED_CORES: f64 = 0.25;
/// ...if it is also at least this much CPU time (the meter counts 10 ms ticks, so one
/// tick in a short phase is not evidence).
pub const DISTURBED_MIN_CPU: Duration = Duration::from_millis(30);

impl OtherCpu {
    /// Whether other processes used enough CPU meanwhile to distrust the numbers: at
    /// least [`DISTURBED_CORES`] CPUs and [`DISTURBED_MIN_CPU`] of CPU time.
    pub fn disturbed(&self) -> bool {
        self.cores >= DISTURBED_CORES && self.cpu_time >= DISTURBED_MIN_CPU
    }
}

/// Memory of a process, from `/proc/PID/status`, in KiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProcMemory {
    /// Resident set size now (`VmRSS`).
    pub rss_kib: u64,
    /// Peak resident set size (`VmHWM`).
    pub hwm_kib: u64,
    /// Resident anonymous memory (`RssAnon`: heap, stacks).
    pub anon_kib: u64,
    /// Resident file-backed memory (`RssFile`: binary, mapped files such as an mmapped
    /// database).
    pub file_kib: u64,
    /// Resident shared memory (`RssShmem`: shm segments, memfds).
    pub shmem_kib: u64,
}

/// Reads the memory figures of process `pid` (Linux). `None` if the process or a field
/// is missing.
pub fn proc_memory(pid: u32) -> Option<ProcMemory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        line[name.len()..]
            .trim_start_matches(':')
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    Some(ProcMemory {
        rss_kib: field("VmRSS")?,
        hwm_kib: field("VmHWM")?,
        anon_kib: field("RssAnon").unwrap_or(0),
        file_kib: field("RssFile").unwrap_or(0),
        shmem_kib: field("RssShmem").unwrap_or(0),
    })
}

/// Total size in bytes of the regular files under `dir` (recursively; symlinks are not
/// followed).
///
/// # Errors
///
/// If a directory cannot be read.
pub fn dir_size(dir: &Path) -> io::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let ty = entry.file_type()?;
        if ty.is_dir() {
            total += dir_size(&entry.path())?;
        } else if ty.is_file() {
            total += entry.metadata()?.len();
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_dir_is_private_and_removed() {
        use std::os::unix::fs::PermissionsExt;
        let d = TempDir::new("rb-harness-test").unwrap();
        let p = d.path().to_path_buf();
        std::fs::write(p.join("f"), b"x").unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        drop(d);
        assert!(!p.exists());
    }

    #[test]
    fn child_ready_line_and_kill() {
        let (g, line) = ChildGuard::spawn_ready(
            "sh",
            Command::new("sh").args(["-c", "echo noise; echo READY now; sleep 30"]),
            "READY",
            Duration::from_secs(5),
        )
        .unwrap();
        assert_eq!(line, "READY now");
        let pid = g.pid();
        drop(g);
        assert!(!Path::new(&format!("/proc/{pid}")).exists());
    }

    #[test]
    fn child_exit_before_ready_is_an_error() {
        let err = ChildGuard::spawn_ready(
            "sh",
            Command::new("sh").args(["-c", "exit 7"]),
            "READY",
            Duration::from_secs(5),
        )
        .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn pin_and_restore() {
        let before = allowed_cpus().unwrap();
        {
            let _g = PinGuard::pin(&before[..1]).unwrap();
            assert_eq!(allowed_cpus().unwrap(), &before[..1]);
        }
        assert_eq!(allowed_cpus().unwrap(), before);
    }

    #[test]
    fn cpu_meter_reads() {
        let m = CpuMeter::start(&[std::process::id()]).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        assert!(m.others().unwrap().cores >= 0.0);
    }

    #[test]
    fn child_lines_stdin_and_terminate() {
        let (g, lines) = ChildGuard::spawn_lines(
            "sh",
            Command::new("sh").args([
                "-c",
                "trap 'exit 0' TERM; echo noise; echo hello; read x; echo got $x; \
                 while true; do sleep 0.01; done",
            ]),
        )
        .unwrap();
        assert_eq!(
            lines.expect("hello", Duration::from_secs(5)).unwrap(),
            "hello"
        );
        g.send_line("ping").unwrap();
        assert_eq!(
            lines.expect("got", Duration::from_secs(5)).unwrap(),
            "got ping"
        );
        let (status, _) = g.terminate(Duration::from_secs(5)).unwrap().unwrap();
        assert!(status.success());
        let err = lines.expect("never", Duration::from_secs(5)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn memory_and_dir_size() {
        let m = proc_memory(std::process::id()).unwrap();
        assert!(m.rss_kib > 0 && m.hwm_kib >= m.rss_kib);
        let d = TempDir::new("rb-harness-size").unwrap();
        std::fs::create_dir(d.path().join("sub")).unwrap();
        std::fs::write(d.path().join("a"), [0u8; 10]).unwrap();
        std::fs::write(d.path().join("sub/b"), [0u8; 5]).unwrap();
        assert_eq!(dir_size(d.path()).unwrap(), 15);
    }

    #[test]
    fn child_timeout() {
        let err = ChildGuard::spawn_ready(
            "sh",
            Command::new("sh").args(["-c", "sleep 30"]),
            "READY",
            Duration::from_millis(100),
        )
        .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }
}
