//! The C ABI as C, C++ and Python programs use it: `tests/c/test_ringbase.c` compiled
//! with `cc` against `libringbase.a` and against `libringbase.so` and run against a
//! real `ringbase serve` (and once more under valgrind), and the examples in
//! `examples/{c,cpp,python}` compiled and run.
//!
//! How the pieces are found, so that the test is correct after any change:
//! - the libraries and the server binary are (re)built by running
//!   `cargo build -p ringbase-ffi -p ringbase-server --lib --bin ringbase` into this
//!   test's own target directory and profile (a no-op when `cargo test --workspace`
//!   built them already). `cargo test` alone does not refresh
//!   `target/<profile>/libringbase.*`: the copies there come from `cargo build`;
//! - `cc`, `c++`, `python3`, `valgrind` and `pkg-config` come from `PATH` (`CC` and
//!   `CXX` override the compilers). A missing tool skips its part with a notice, except
//!   on CI (`CI` set), where a missing compiler or interpreter fails the test; valgrind
//!   is optional everywhere (CI installs it).
//!
//! Every wait is bounded: each program runs under a watchdog that kills it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Linker flags the static library needs (`rustc --print native-static-libs`).
const STATIC_LIBS: &[&str] = &[
    "-lgcc_s",
    "-lutil",
    "-lrt",
    "-lpthread",
    "-lm",
    "-ldl",
    "-lc",
];

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A scratch directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("rbffi-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// What the tests need from the build.
struct Built {
    /// `target/<profile>`: libringbase.a, libringbase.so, ringbase.
    dir: PathBuf,
    server: PathBuf,
}

/// Builds the libraries and the server once per test binary (see the module docs).
fn built() -> &'static Built {
    static BUILT: OnceLock<Built> = OnceLock::new();
    BUILT.get_or_init(|| {
        // This executable is target/<profile>/deps/c_programs-<hash>.
        let exe = std::env::current_exe().unwrap();
        let dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
        let target = dir.parent().unwrap().to_path_buf();
        let profile = dir.file_name().unwrap().to_str().unwrap().to_string();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.current_dir(workspace())
            .args(["build", "-p", "ringbase-ffi", "-p", "ringbase-server"])
            .args(["--lib", "--bin", "ringbase", "--target-dir"])
            .arg(&target);
        match profile.as_str() {
            "debug" => {}
            "release" => {
                cmd.arg("--release");
            }
            other => {
                cmd.args(["--profile", other]);
            }
        }
        let out = run(cmd, Duration::from_secs(1200), "cargo build");
        assert!(out.ok, "cargo build failed:\n{}", out.text);
        let server = std::env::var_os("RINGBASE_TEST_SERVER_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| dir.join("ringbase"));
        for f in [
            dir.join("libringbase.a"),
            dir.join("libringbase.so"),
            server.clone(),
        ] {
            assert!(f.is_file(), "{} was not built", f.display());
        }
        Built { dir, server }
    })
}

/// Output of a finished program.
struct Output {
    ok: bool,
    code: Option<i32>,
    text: String,
}

/// Runs `cmd` to completion with its stdout and stderr in a file (no pipe can fill
/// up), killing it after `limit`.
fn run(mut cmd: Command, limit: Duration, what: &str) -> Output {
    let log = TempDir::new("log");
    let path = log.path().join("out");
    let file = std::fs::File::create(&path).unwrap();
    cmd.stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file);
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    let status = wait_bounded(&mut child, limit)
        .unwrap_or_else(|| panic!("{what} did not finish within {limit:?}: killed"));
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    Output {
        ok: status.success(),
        code: status.code(),
        text,
    }
}

fn wait_bounded(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether `tool` runs; if not, skip (or fail on CI when `required_on_ci`).
fn have(tool: &str, required_on_ci: bool) -> bool {
    let ok = Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        if required_on_ci && std::env::var_os("CI").is_some() {
            panic!("{tool} is required on CI but is not installed");
        }
        eprintln!("NOTICE: {tool} is not installed: skipping the part of this test that needs it");
    }
    ok
}

fn cc() -> String {
    std::env::var("CC").unwrap_or_else(|_| "cc".into())
}

fn cxx() -> String {
    std::env::var("CXX").unwrap_or_else(|_| "c++".into())
}

fn include_dir() -> PathBuf {
    workspace().join("ffi/include")
}

#[derive(Clone, Copy, Debug)]
enum Link {
    Static,
    Shared,
}

/// Compiles C sources into `out`, linked against libringbase.
fn compile_c(src: &Path, out: &Path, link: Link) {
    let b = built();
    let mut cmd = Command::new(cc());
    cmd.args([
        "-std=c11",
        "-g",
        "-O1",
        "-Wall",
        "-Wextra",
        "-Werror",
        "-pedantic",
    ])
    .arg("-I")
    .arg(include_dir())
    .arg(src)
    .arg("-o")
    .arg(out);
    link_args(&mut cmd, link, &b.dir);
    let res = run(cmd, Duration::from_secs(300), "cc");
    assert!(res.ok, "compiling {} failed:\n{}", src.display(), res.text);
}

fn link_args(cmd: &mut Command, link: Link, dir: &Path) {
    match link {
        Link::Static => {
            cmd.arg(dir.join("libringbase.a")).args(STATIC_LIBS);
        }
        Link::Shared => {
            cmd.arg(format!("-L{}", dir.display()))
                .arg("-lringbase")
                .arg(format!("-Wl,-rpath,{}", dir.display()));
        }
    }
}

/// A `ringbase serve` for one test, killed on drop if still running.
struct Server {
    child: Child,
    name: String,
    runtime: PathBuf,
}

impl Server {
    fn start(root: &Path, name: &str, extra: &[&str]) -> Server {
        let runtime = root.join("run");
        let data = root.join("data");
        let log = std::fs::File::create(root.join("server.log")).unwrap();
        let mut child = Command::new(&built().server)
            .args(["serve", "--name", name, "--data-dir"])
            .arg(&data)
            .args(extra)
            .env("RINGBASE_RUNTIME_DIR", &runtime)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting ringbase serve");
        // Ready when its control socket accepts a session.
        let deadline = Instant::now() + Duration::from_secs(30);
        let opts = ringbase_client::ConnectOptions::new(name).runtime_dir(&runtime);
        loop {
            if ringbase_client::Client::connect_with(opts.clone()).is_ok() {
                break;
            }
            if let Some(s) = child.try_wait().unwrap() {
                panic!(
                    "ringbase serve exited ({s}):\n{}",
                    std::fs::read_to_string(root.join("server.log")).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "ringbase serve not ready in 30 s"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Server {
            child,
            name: name.to_string(),
            runtime,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = wait_bounded(&mut self.child, Duration::from_secs(10));
    }
}

/// Runs the C test program (linked `link`, optionally under valgrind) against a fresh
/// server; the program kills that server at its end.
fn run_c_test(link: Link, valgrind: bool) {
    let b = built();
    let root = TempDir::new(if valgrind { "vg" } else { "c" });
    let exe = root.path().join("test_ringbase");
    compile_c(&workspace().join("ffi/tests/c/test_ringbase.c"), &exe, link);
    let mut server = Server::start(root.path(), "rbtest", &["--max-sessions", "8"]);
    let mut cmd = if valgrind {
        let mut c = Command::new("valgrind");
        c.args([
            "--leak-check=full",
            "--errors-for-leak-kinds=all",
            "--error-exitcode=99",
            // The library starts the server with fork + exec: only this process counts.
            "--child-silent-after-fork=yes",
        ])
        .arg(&exe);
        c
    } else {
        Command::new(&exe)
    };
    cmd.env("RINGBASE_RUNTIME_DIR", &server.runtime)
        .env("RINGBASE_TEST_NAME", &server.name)
        .env("RINGBASE_TEST_SERVER_BIN", &b.server)
        .env("RINGBASE_SERVER", &b.server)
        .env("RINGBASE_DATA_DIR", root.path().join("spawned-data"))
        .env("RINGBASE_TEST_VERSION", env!("CARGO_PKG_VERSION"));
    let limit = Duration::from_secs(if valgrind { 600 } else { 180 });
    let out = run(cmd, limit, "test_ringbase");
    let summary = out
        .text
        .lines()
        .find(|l| l.contains(" passed, "))
        .unwrap_or("(no summary line)")
        .to_string();
    eprintln!(
        "test_ringbase ({link:?}{}): {summary}",
        if valgrind { ", valgrind" } else { "" }
    );
    assert!(
        out.ok,
        "test_ringbase ({link:?}, valgrind: {valgrind}) failed with {:?}:\n{}",
        out.code, out.text
    );
    assert!(summary.ends_with(" 0 failed"), "{}", out.text);
    if valgrind {
        assert!(
            out.text.contains("ERROR SUMMARY: 0 errors"),
            "valgrind reported errors:\n{}",
            out.text
        );
    }
    // The program SIGKILLed the server: it must be gone (bounded wait).
    assert!(
        wait_bounded(&mut server.child, Duration::from_secs(10)).is_some(),
        "the server survived the test program"
    );
}

#[test]
fn c_test_program_static() {
    if !have(&cc(), true) {
        return;
    }
    run_c_test(Link::Static, false);
}

#[test]
fn c_test_program_shared() {
    if !have(&cc(), true) {
        return;
    }
    run_c_test(Link::Shared, false);
}

#[test]
fn c_test_program_valgrind() {
    if !have(&cc(), true) {
        return;
    }
    if !have("valgrind", false) {
        eprintln!("NOTICE: valgrind is not installed: the memory check did not run");
        return;
    }
    run_c_test(Link::Shared, true);
}

/// Stops the server an example spawned (found through its status), bounded.
fn stop_spawned(runtime: &Path, name: &str) {
    let opts = ringbase_client::ConnectOptions::new(name).runtime_dir(runtime);
    let Ok(mut c) = ringbase_client::Client::connect_with(opts.clone()) else {
        return;
    };
    let pid = c.status().map(|s| s.pid).unwrap_or(0);
    drop(c);
    if pid == 0 {
        return;
    }
    // SAFETY: kill(2) with a pid the server reported for itself.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(20);
    while ringbase_client::Client::connect_with(opts.clone()).is_ok() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: as above; the server is stopping, SIGKILL only if it hangs.
    if Instant::now() >= deadline {
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    }
}

/// The examples: hello.c starts the server (connect_or_spawn), then game_loop.c, the
/// C++ example and the Python example use it.
#[test]
fn examples_run() {
    let b = built();
    let root = TempDir::new("ex");
    let runtime = root.path().join("run");
    let name = "examples";
    let env = |cmd: &mut Command| {
        cmd.env("RINGBASE_RUNTIME_DIR", &runtime)
            .env("RINGBASE_SERVER", &b.server)
            .env("RINGBASE_DATA_DIR", root.path().join("data"))
            .env("RINGBASE_LIB", b.dir.join("libringbase.so"));
    };
    struct Stop<'a>(&'a Path, &'a str);
    impl Drop for Stop<'_> {
        fn drop(&mut self) {
            stop_spawned(self.0, self.1);
        }
    }
    let _stop = Stop(&runtime, name);
    let examples = workspace().join("examples");

    if have(&cc(), true) {
        // hello.c through the pkg-config file, against an installed-like prefix.
        let hello = root.path().join("hello");
        compile_with_pkg_config(&examples.join("c/hello.c"), &hello, root.path());
        let mut cmd = Command::new(&hello);
        cmd.arg(name);
        env(&mut cmd);
        let out = run(cmd, Duration::from_secs(60), "hello");
        eprintln!("hello:\n{}", out.text);
        assert!(out.ok, "hello failed:\n{}", out.text);
        assert!(out
            .text
            .contains("player:1 = {\"name\":\"Ada\",\"hp\":100}"));
        assert!(out.text.contains("player:9: not found"));
        assert!(out
            .text
            .contains("  player:3 = {\"name\":\"Linus\",\"hp\":70}"));

        let game = root.path().join("game_loop");
        compile_c(&examples.join("c/game_loop.c"), &game, Link::Static);
        let mut cmd = Command::new(&game);
        cmd.args([name, "120"]);
        env(&mut cmd);
        let out = run(cmd, Duration::from_secs(60), "game_loop");
        eprintln!("game_loop:\n{}", out.text);
        assert!(out.ok, "game_loop failed:\n{}", out.text);
        assert!(out.text.contains("120 frames:"), "{}", out.text);
    }

    if have(&cxx(), true) {
        let exe = root.path().join("example_cpp");
        let mut cmd = Command::new(cxx());
        cmd.args([
            "-std=c++17",
            "-g",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-pedantic",
        ])
        .arg("-I")
        .arg(include_dir())
        .arg("-I")
        .arg(examples.join("cpp"))
        .arg(examples.join("cpp/example.cpp"))
        .arg("-o")
        .arg(&exe);
        link_args(&mut cmd, Link::Shared, &b.dir);
        let out = run(cmd, Duration::from_secs(300), "c++");
        assert!(out.ok, "compiling example.cpp failed:\n{}", out.text);
        let mut cmd = Command::new(&exe);
        cmd.arg(name);
        env(&mut cmd);
        let out = run(cmd, Duration::from_secs(60), "example_cpp");
        eprintln!("example.cpp:\n{}", out.text);
        assert!(out.ok, "example.cpp failed:\n{}", out.text);
        assert!(out.text.contains("done"), "{}", out.text);
    }

    if have("python3", true) {
        let mut cmd = Command::new("python3");
        cmd.arg(examples.join("python/ringbase_example.py"))
            .arg(name);
        env(&mut cmd);
        let out = run(cmd, Duration::from_secs(60), "ringbase_example.py");
        eprintln!("ringbase_example.py:\n{}", out.text);
        assert!(out.ok, "ringbase_example.py failed:\n{}", out.text);
        assert!(out.text.contains("done"), "{}", out.text);
    }
}

/// Compiles `src` with the flags `ffi/ringbase.pc` gives for a prefix laid out as an
/// installation would be (include/ringbase.h, lib/libringbase.so); falls back to
/// explicit flags if pkg-config is missing.
fn compile_with_pkg_config(src: &Path, out: &Path, root: &Path) {
    let b = built();
    let prefix = root.join("prefix");
    std::fs::create_dir_all(prefix.join("include")).unwrap();
    std::fs::create_dir_all(prefix.join("lib")).unwrap();
    std::fs::copy(
        include_dir().join("ringbase.h"),
        prefix.join("include/ringbase.h"),
    )
    .unwrap();
    std::fs::copy(
        b.dir.join("libringbase.so"),
        prefix.join("lib/libringbase.so"),
    )
    .unwrap();
    let mut cmd = Command::new(cc());
    cmd.args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-pedantic"])
        .arg(src)
        .arg("-o")
        .arg(out);
    if have("pkg-config", false) {
        let flags = Command::new("pkg-config")
            .env("PKG_CONFIG_PATH", workspace().join("ffi"))
            .arg(format!("--define-variable=prefix={}", prefix.display()))
            .args(["--cflags", "--libs", "ringbase"])
            .output()
            .expect("running pkg-config");
        assert!(
            flags.status.success(),
            "pkg-config ringbase: {}",
            String::from_utf8_lossy(&flags.stderr)
        );
        cmd.args(String::from_utf8(flags.stdout).unwrap().split_whitespace());
    } else {
        cmd.arg(format!("-I{}", prefix.join("include").display()))
            .arg(format!("-L{}", prefix.join("lib").display()))
            .arg("-lringbase");
    }
    cmd.arg(format!("-Wl,-rpath,{}", prefix.join("lib").display()));
    let res = run(cmd, Duration::from_secs(300), "cc");
    assert!(res.ok, "compiling {} failed:\n{}", src.display(), res.text);
}

/// The pkg-config file names this version.
#[test]
fn pkg_config_file_matches_the_crate() {
    let pc = std::fs::read_to_string(workspace().join("ffi/ringbase.pc")).unwrap();
    assert!(
        pc.lines()
            .any(|l| l == format!("Version: {}", env!("CARGO_PKG_VERSION"))),
        "ffi/ringbase.pc has another version than the crate"
    );
    let libs = pc
        .lines()
        .find_map(|l| l.strip_prefix("Libs.private: "))
        .unwrap();
    assert_eq!(libs, STATIC_LIBS.join(" "));
}
