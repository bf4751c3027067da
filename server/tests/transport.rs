//! Transport tests: real `ringbase` server processes, real client processes.

mod common;

use std::time::Duration;

use common::*;
use std::os::fd::AsFd;

use ringbase_client::{Client, Error, RingSizes, WaitMode};
use ringbase_protocol::handshake::{self, Hello, WelcomeStatus};
use ringbase_protocol::message::{encode_request, Request};
use ringbase_protocol::ring::FRAME_REQUEST;

/// Child roles (this binary re-executed by `spawn_child`).
#[test]
fn child_entry() {
    let Ok(role) = std::env::var(CHILD_ROLE) else {
        return;
    };
    let args = child_args();
    match role.as_str() {
        // echo COUNT SEED: COUNT echoes of random sizes, each checked; exit 0 if all match.
        "echo" => {
            let count: u64 = args[0].parse().unwrap();
            let mut rng = args[1].parse::<u64>().unwrap() | 1;
            let mut c = child_connect();
            println!("ready");
            let mut buf = Vec::new();
            for i in 0..count {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                // Mostly small, sometimes up to 4 KiB.
                let len = if rng % 16 == 0 {
                    (rng >> 8) % 4096
                } else {
                    (rng >> 8) % 200
                } as usize;
                buf.clear();
                buf.extend((0..len).map(|j| (i as usize + j) as u8 ^ (rng as u8)));
                let got = c.echo(&buf).unwrap_or_else(|e| panic!("echo {i}: {e}"));
                assert_eq!(got, buf, "echo {i} mismatch");
            }
            std::process::exit(0);
        }
        // loop: echo until the server goes away; exit 3 on Disconnected.
        "until-disconnect" => {
            let mut c = child_connect();
            println!("ready");
            loop {
                match c.echo(b"0123456789") {
                    Ok(_) => {}
                    Err(Error::Disconnected) => std::process::exit(3),
                    Err(e) => {
                        eprintln!("unexpected error {e}");
                        std::process::exit(4);
                    }
                }
            }
        }
        other => panic!("unknown child role {other}"),
    }
}

#[test]
fn ping_echo_status_and_limits() {
    let rt = TempDir::new("basic");
    let srv = ServerProc::start(
        &rt.path().join("run"),
        &rt.path().join("data"),
        "basic",
        &[],
    );
    watchdog(Duration::from_secs(60), move || {
        let mut c = srv.connect();
        c.ping().unwrap();
        assert_eq!(c.echo(b"hello").unwrap(), b"hello");
        assert_eq!(c.echo(b"").unwrap(), b"");
        // Too large for the session: refused on the client side, session still usable.
        let big = vec![7u8; c.max_payload() as usize + 1];
        assert!(matches!(c.echo(&big), Err(Error::TooLarge { .. })));
        c.ping().unwrap();
        // Largest echo whose *response* still fits: close to max_payload.
        let fits = vec![1u8; c.max_payload() as usize - 256];
        assert_eq!(c.echo(&fits).unwrap(), fits);
        // Pipelining: N sends, then N receives, in order.
        let ids: Vec<u64> = (0..1000u32)
            .map(|i| c.send(&Request::Echo(i.to_le_bytes().to_vec())).unwrap())
            .collect();
        for (i, id) in ids.iter().enumerate() {
            let (got, resp) = c.recv().unwrap();
            assert_eq!(got, *id);
            assert_eq!(
                resp,
                ringbase_client::Response::Echo((i as u32).to_le_bytes().to_vec())
            );
        }
        // Pipelining deeper than both rings (tiny rings force the stash path).
        let mut small = Client::connect_with(srv.options().rings(RingSizes {
            request: 4096,
            response: 4096,
            event: 4096,
        }))
        .unwrap();
        let payload = vec![9u8; 1000];
        for _ in 0..200 {
            small.send(&Request::Echo(payload.clone())).unwrap();
        }
        for _ in 0..200 {
            assert_eq!(
                small.recv().unwrap().1,
                ringbase_client::Response::Echo(payload.clone())
            );
        }
        match c.call(&Request::Status).unwrap() {
            ringbase_client::Response::Status(s) => {
                assert_eq!(s.sessions, 2);
                assert_eq!(s.protocol, ringbase_protocol::PROTOCOL_VERSION);
            }
            other => panic!("{other:?}"),
        }
        // Busy-poll sessions work too.
        let mut b = Client::connect_with(srv.options().wait(WaitMode::BusyPoll)).unwrap();
        for _ in 0..1000 {
            b.ping().unwrap();
        }
    });
}

#[test]
fn second_server_same_name_fails_clearly_and_sigterm_exits_zero() {
    let rt = TempDir::new("lock");
    let run = rt.path().join("run");
    let mut srv = ServerProc::start(&run, &rt.path().join("d1"), "dup", &[]);
    let out = std::process::Command::new(ringbase_bin())
        .args(["serve", "--name", "dup", "--data-dir"])
        .arg(rt.path().join("d2"))
        .env("RINGBASE_RUNTIME_DIR", &run)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already running"), "{err}");
    // The first server is unharmed.
    srv.connect().ping().unwrap();
    assert_eq!(srv.terminate(), Some(0));
}

#[test]
fn eight_clients_hundred_thousand_echoes_each() {
    let rt = TempDir::new("eight");
    let srv = ServerProc::start(
        &rt.path().join("run"),
        &rt.path().join("data"),
        "eight",
        &[],
    );
    let count: u64 = std::env::var("RINGBASE_TEST_ECHOES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let mut kids: Vec<_> = (0..8)
        .map(|i| spawn_child("echo", &srv, &[count.to_string(), (1000 + i).to_string()]))
        .collect();
    for k in &mut kids {
        assert_eq!(
            read_line(k, Duration::from_secs(30)).as_deref(),
            Some("ready")
        );
    }
    for k in &mut kids {
        let st = wait_child(k, Duration::from_secs(600));
        assert!(st.success(), "an echo client failed: {st:?}");
    }
    let mut c = srv.connect();
    c.ping().unwrap();
}

#[test]
fn killed_client_is_cleaned_up_and_others_keep_going() {
    let rt = TempDir::new("killc");
    let srv = ServerProc::start(
        &rt.path().join("run"),
        &rt.path().join("data"),
        "killc",
        &[],
    );
    let mut victim = spawn_child("until-disconnect", &srv, &[]);
    let mut other = spawn_child("echo", &srv, &["20000".into(), "7".into()]);
    assert_eq!(
        read_line(&mut victim, Duration::from_secs(30)).as_deref(),
        Some("ready")
    );
    assert_eq!(
        read_line(&mut other, Duration::from_secs(30)).as_deref(),
        Some("ready")
    );
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(mapped_segments(srv.pid()), 2);
    let _ = victim.kill();
    let _ = victim.wait();
    // The victim's session and its segment are gone within a second.
    assert!(
        eventually(Duration::from_secs(1), || mapped_segments(srv.pid()) <= 1),
        "the killed client's segment is still mapped by the server"
    );
    let st = wait_child(&mut other, Duration::from_secs(300));
    assert!(st.success(), "the other client failed: {st:?}");
    let mut c = srv.connect();
    match c.call(&Request::Status).unwrap() {
        ringbase_client::Response::Status(s) => assert_eq!(s.sessions, 1),
        other => panic!("{other:?}"),
    }
    assert!(shm_leftovers().is_empty());
}

#[test]
fn killed_server_disconnects_clients_and_restarts_at_once() {
    let rt = TempDir::new("kills");
    let run = rt.path().join("run");
    let data = rt.path().join("data");
    let mut srv = ServerProc::start(&run, &data, "kills", &[]);
    let mut kids: Vec<_> = (0..3)
        .map(|_| spawn_child("until-disconnect", &srv, &[]))
        .collect();
    for k in &mut kids {
        assert_eq!(
            read_line(k, Duration::from_secs(30)).as_deref(),
            Some("ready")
        );
    }
    std::thread::sleep(Duration::from_millis(200));
    srv.kill9();
    for k in &mut kids {
        let st = wait_child(k, Duration::from_secs(10));
        assert_eq!(st.code(), Some(3), "client did not see Disconnected");
    }
    assert!(shm_leftovers().is_empty(), "{:?}", shm_leftovers());
    // A new server takes the name at once (stale socket replaced, lock free).
    let srv2 = ServerProc::start(&run, &data, "kills", &[]);
    srv2.connect().ping().unwrap();
}

#[test]
fn two_servers_with_different_names_do_not_interfere() {
    let rt = TempDir::new("two");
    let run = rt.path().join("run");
    let a = ServerProc::start(&run, &rt.path().join("a"), "alpha", &[]);
    let b = ServerProc::start(&run, &rt.path().join("b"), "beta", &[]);
    let mut ca = a.connect();
    let mut cb = b.connect();
    for i in 0..1000u32 {
        assert_eq!(ca.echo(&i.to_le_bytes()).unwrap(), i.to_le_bytes());
        assert_eq!(
            cb.echo(&(i * 3).to_le_bytes()).unwrap(),
            (i * 3).to_le_bytes()
        );
    }
    let pid = |c: &mut Client| match c.call(&Request::Status).unwrap() {
        ringbase_client::Response::Status(s) => s.pid,
        other => panic!("{other:?}"),
    };
    assert_eq!(pid(&mut ca), a.pid());
    assert_eq!(pid(&mut cb), b.pid());
    drop(a);
    // Beta keeps working after alpha is gone.
    cb.ping().unwrap();
    assert!(matches!(ca.ping(), Err(Error::Disconnected)));
}

#[test]
fn session_limit_and_protocol_mismatch_are_clear_errors() {
    let rt = TempDir::new("limits");
    let srv = ServerProc::start(
        &rt.path().join("run"),
        &rt.path().join("data"),
        "lim",
        &["--max-sessions", "2"],
    );
    let _a = srv.connect();
    let _b = srv.connect();
    match Client::connect_with(srv.options()) {
        Err(Error::Refused { status, message }) => {
            assert_eq!(status, WelcomeStatus::TooManySessions);
            assert!(message.contains("limit"), "{message}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    drop(_a);
    assert!(eventually(Duration::from_secs(2), || Client::connect_with(
        srv.options()
    )
    .is_ok()));

    // A hello of another protocol version gets a clear refusal.
    let sock = raw_connect(&srv);
    let hello = Hello {
        protocol: 999,
        pid: 1,
        rings: RingSizes::default(),
        wait: WaitMode::Adaptive,
    };
    handshake::send_with_fd(sock.as_fd(), &hello.encode(), None).unwrap();
    let (w, fd) = read_welcome(&sock);
    assert!(fd.is_none());
    assert_eq!(w.status, WelcomeStatus::VersionMismatch);
    assert!(w.message.contains("999"), "{}", w.message);
}

#[test]
fn hostile_client_gets_errors_or_is_closed_and_nobody_else_notices() {
    let rt = TempDir::new("hostile");
    let srv = ServerProc::start(
        &rt.path().join("run"),
        &rt.path().join("data"),
        "hostile",
        &[],
    );
    let mut good = srv.connect();

    // 1. Invalid rkyv in a well-formed frame: an error response, session stays usable.
    {
        let s = raw_session(&srv);
        let mut frame = vec![0u8; 48];
        frame[0..4].copy_from_slice(&32u32.to_le_bytes());
        frame[4..6].copy_from_slice(&FRAME_REQUEST.to_le_bytes());
        frame[8..16].copy_from_slice(&1u64.to_le_bytes());
        for (i, b) in frame[16..].iter_mut().enumerate() {
            *b = 0xA5 ^ i as u8;
        }
        s.poke(&frame, 48);
        assert_eq!(
            s.responses(1, Duration::from_millis(100)),
            1,
            "invalid rkyv gets an error response"
        );
        // A valid request after it on the same session still works.
        let mut p = s.seg.request_ring().producer().unwrap();
        // The producer starts from the tail we poked (48).
        let mut buf = rkyv::util::AlignedVec::<16>::new();
        encode_request(&Request::Ping, &mut buf).unwrap();
        assert!(p.try_push(FRAME_REQUEST, 0, 2, &buf).unwrap());
        assert_eq!(
            s.responses(1, Duration::from_millis(100)),
            1,
            "session usable after a bad frame"
        );
        good.ping().unwrap();
    }
    assert!(eventually(Duration::from_secs(2), || mapped_segments(
        srv.pid()
    ) == 1));

    // Cases the server answers by closing the session: it unmaps the segment on its
    // own (only `good`'s stays mapped) while the hostile client still holds it, and
    // the good session keeps working.
    let closed_by_server = |bytes: &[u8], tail: u64, what: &str| {
        let s = raw_session(&srv);
        s.poke(bytes, tail);
        assert!(
            eventually(Duration::from_secs(2), || mapped_segments(srv.pid()) == 1),
            "{what}: the session was not closed"
        );
        drop(s);
    };
    let header = |len: u32| {
        let mut frame = vec![0u8; 16];
        frame[0..4].copy_from_slice(&len.to_le_bytes());
        frame[4..6].copy_from_slice(&FRAME_REQUEST.to_le_bytes());
        frame
    };
    // 2. Length past the ring.
    closed_by_server(&header(1_000_000), 16, "length past the ring");
    good.ping().unwrap();
    // 3. Misaligned frame (tail not a multiple of 16, partial header).
    closed_by_server(&[1, 2, 3, 4, 5, 6, 7, 8], 8, "misaligned tail");
    good.ping().unwrap();
    // 4. A tail index beyond the ring.
    closed_by_server(&[], 1 << 40, "tail beyond the ring");
    good.ping().unwrap();
    // 5. A frame length beyond the published data.
    closed_by_server(&header(512), 32, "length past the published data");
    good.ping().unwrap();

    // 6. Garbage on the control socket instead of a hello: refused, server fine.
    use std::io::Write;
    let mut sock = raw_connect(&srv);
    sock.write_all(&[0xFFu8; 64]).unwrap();
    let (w, fd) = read_welcome(&sock);
    assert_eq!(w.status, WelcomeStatus::BadHello);
    assert!(fd.is_none());

    good.ping().unwrap();
    assert_eq!(good.echo(b"still here").unwrap(), b"still here");
}

/// Regression: SIGTERM right after clients disconnected crashed the server (SIGSEGV):
/// shutdown woke a session through its registry entry after the session had unmapped
/// its segment. Sessions now leave the registry before they unmap.
#[test]
fn sigterm_while_clients_disconnect_exits_cleanly() {
    let rt = TempDir::new("termrace");
    for round in 0..8 {
        let mut srv = ServerProc::start(&rt.path().join("run"), &rt.path().join("data"), "tr", &[]);
        let clients: Vec<Client> = (0..8).map(|_| srv.connect()).collect();
        drop(clients);
        assert_eq!(
            srv.terminate(),
            Some(0),
            "round {round}: server did not exit cleanly"
        );
    }
}

/// A call timeout turns a server that is alive but not answering (here: stopped with
/// SIGSTOP) into `TimedOut` instead of a hang; without one the call would wait.
#[test]
fn call_timeout_bounds_a_call_to_a_stopped_server() {
    let rt = TempDir::new("timeout");
    let srv = ServerProc::start(&rt.path().join("run"), &rt.path().join("data"), "to", &[]);
    let mut c =
        Client::connect_with(srv.options().call_timeout(Duration::from_millis(200))).unwrap();
    c.ping().unwrap();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(srv.pid() as i32, libc::SIGSTOP) };
    // The signal is asynchronous: wait until every thread is stopped ("T"), or a
    // still-spinning session thread may answer the next call.
    let tasks = format!("/proc/{}/task", srv.pid());
    let all_stopped = || {
        std::fs::read_dir(&tasks).is_ok_and(|d| {
            d.filter_map(|e| e.ok()).all(|e| {
                std::fs::read_to_string(e.path().join("stat"))
                    .map(|s| {
                        s.rsplit(')')
                            .next()
                            .unwrap_or("")
                            .trim_start()
                            .starts_with('T')
                    })
                    .unwrap_or(true)
            })
        })
    };
    assert!(
        eventually(Duration::from_secs(10), all_stopped),
        "server did not stop"
    );
    let result = watchdog(Duration::from_secs(30), move || {
        let r = c.ping();
        (r, c)
    });
    // SAFETY: as above.
    unsafe { libc::kill(srv.pid() as i32, libc::SIGCONT) };
    let (r, mut c) = result;
    assert!(matches!(r, Err(Error::TimedOut(_))), "{r:?}");
    // The session is over; a new one works.
    assert!(matches!(c.ping(), Err(Error::Disconnected)));
    srv.connect().ping().unwrap();
}
