//! Sidecar start: connect to the server of a name, starting it if none runs.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::client::{Client, ConnectOptions};
use crate::error::{Error, Result};

/// How to start a server when none is running.
#[derive(Debug, Clone, Default)]
pub struct SpawnOptions {
    /// The `ringbase` binary. `None`: `$RINGBASE_SERVER`, else `ringbase` next to the
    /// current executable if it exists, else `ringbase` on `PATH`.
    pub server_path: Option<PathBuf>,
    /// `--data-dir` for the server; `None` = the server's default for the name.
    pub data_dir: Option<PathBuf>,
    /// How long to wait for the server to become ready (default 10 s).
    pub timeout: Option<Duration>,
}

fn server_binary(opt: &SpawnOptions) -> PathBuf {
    if let Some(p) = &opt.server_path {
        return p.clone();
    }
    if let Some(p) = std::env::var_os("RINGBASE_SERVER").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    if let Some(sibling) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("ringbase")))
        .filter(|p| p.is_file())
    {
        return sibling;
    }
    PathBuf::from("ringbase")
}

fn not_running(e: &Error) -> bool {
    matches!(e, Error::NotRunning { .. })
}

impl Client {
    /// Connects to the server named in `opts`; if none is running, starts
    /// `ringbase serve` detached (its own session, stdio to `server.log` in the name's
    /// runtime directory), waits until it accepts sessions, and connects.
    ///
    /// Several processes may race here: the server's lock file lets exactly one server
    /// start, the others' spawned servers exit at once, and every caller connects to the
    /// one that won.
    ///
    /// # Errors
    ///
    /// Those of [`Client::connect_with`]; [`Error::Io`] if the binary cannot be started;
    /// [`Error::NotRunning`] if no server became ready within the timeout.
    pub fn connect_or_spawn(opts: ConnectOptions, spawn: SpawnOptions) -> Result<Client> {
        match Client::connect_with(opts.clone()) {
            Err(e) if not_running(&e) => {}
            other => return other,
        }
        let paths = opts.paths()?;
        std::fs::create_dir_all(&paths.dir)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(paths.dir.join("server.log"))?;
        let bin = server_binary(&spawn);
        let mut cmd = Command::new(&bin);
        cmd.args(["serve", "--name", &opts.name]);
        if let Some(d) = &spawn.data_dir {
            cmd.arg("--data-dir").arg(d);
        }
        if let Some(rt) = &opts.runtime_dir {
            cmd.env("RINGBASE_RUNTIME_DIR", rt);
        }
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // SAFETY: setsid is async-signal-safe and touches no memory of the parent; it
        // detaches the server from our session and terminal so it outlives us.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|e| {
            Error::Io(std::io::Error::new(
                e.kind(),
                format!("starting {}: {e}", bin.display()),
            ))
        })?;
        // Reap it when it exits (at once if another server won the race) so it does not
        // linger as a zombie of ours.
        std::thread::spawn(move || {
            let _ = child.wait();
        });
        let deadline = Instant::now() + spawn.timeout.unwrap_or(Duration::from_secs(10));
        let mut pause = Duration::from_millis(1);
        loop {
            match Client::connect_with(opts.clone()) {
                Err(e) if not_running(&e) && Instant::now() < deadline => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(50));
                }
                other => return other,
            }
        }
    }
}
