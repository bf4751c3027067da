//! How replicas find each other, with real `ringbase serve` processes:
//!
//! - `--sync dht`: two servers that know only a bootstrap server find each other
//!   through Kademlia provider records under the database's topic, and replicate
//!   directly, also once the bootstrap server is gone;
//! - `--sync relay`: two servers that know only a `ringbase relay` (and listen on no
//!   TCP port) register there, find each other there and converge through circuits
//!   (values larger than libp2p's default circuit limit included); a server with
//!   another secret on the same relay receives nothing;
//! - `--sync lan`: two servers on two network namespaces joined by a veth pair (two
//!   hosts on one LAN, no `--peer`) find each other by mDNS; a server with another
//!   secret on the same LAN is found but never admitted;
//! - the node key lives in the data dir: the peer id survives a restart.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use ringbase_client::Client;

fn secret(rt: &TempDir, name: &str, text: &str) -> String {
    let p = rt.path().join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

/// Server `tag` of database `db` in mode `mode`, with `args` (listen, peers).
fn server(rt: &TempDir, tag: &str, mode: &str, secret: &str, args: &[String]) -> ServerProc {
    server_in(&[], rt, tag, mode, secret, args)
}

fn server_in(
    wrapper: &[&str],
    rt: &TempDir,
    tag: &str,
    mode: &str,
    secret: &str,
    args: &[String],
) -> ServerProc {
    let mut all: Vec<&str> = vec![
        "--sync",
        mode,
        "--db-id",
        "discovery-test",
        "--secret-file",
        secret,
    ];
    all.extend(args.iter().map(String::as_str));
    ServerProc::start_wrapped(
        wrapper,
        &rt.path().join(format!("run-{tag}")),
        &rt.path().join(format!("data-{tag}")),
        &format!("disc-{tag}"),
        &all,
    )
}

fn sync_status(c: &mut Client) -> ringbase_protocol::message::SyncStatusInfo {
    c.status().unwrap().sync.expect("a replicating server")
}

/// Whether `c`'s server has `peer` among its connected replicas.
fn sees(c: &mut Client, peer: &str) -> bool {
    sync_status(c).peers.iter().any(|p| p.peer == peer)
}

/// Waits (at most 60 s) until the servers of `a` and `b` are connected replicas of
/// each other; else fails with `failure` and both statuses.
fn meet(a: &mut Client, b: &mut Client, failure: &str) {
    let (ida, idb) = (sync_status(a).peer_id, sync_status(b).peer_id);
    assert!(
        eventually(Duration::from_secs(60), || sees(a, &idb) && sees(b, &ida)),
        "{failure}: {:?} / {:?}",
        sync_status(a),
        sync_status(b)
    );
}

fn value(c: &mut Client, key: &str) -> Option<Vec<u8>> {
    c.get(key).unwrap().map(|r| r.value)
}

#[test]
fn dht_replicas_find_each_other_through_a_bootstrap_server() {
    let rt = TempDir::new("disc-dht");
    let s = secret(&rt, "secret", "the dht test's secret, 32 bytes");
    let boot_addr = format!("/ip4/127.0.0.1/tcp/{}", free_port());
    let boot = server(
        &rt,
        "boot",
        "dht",
        &s,
        &["--listen".into(), boot_addr.clone()],
    );
    let args = [
        "--listen".to_string(),
        "/ip4/127.0.0.1/tcp/0".into(),
        "--peer".into(),
        boot_addr,
    ];
    let b = server(&rt, "b", "dht", &s, &args);
    let c = server(&rt, "c", "dht", &s, &args);
    let (mut cb, mut cc) = (b.connect(), c.connect());
    assert_eq!(sync_status(&mut cb).mode, "dht");
    // b and c were given only the bootstrap server's address.
    meet(&mut cb, &mut cc, "b and c never found each other");
    // Without the bootstrap server, they still replicate with each other.
    drop(boot);
    cb.put_json("from-b", "1").unwrap();
    cc.put_json("from-c", "2").unwrap();
    assert!(
        eventually(Duration::from_secs(30), || value(&mut cc, "from-b")
            .is_some()
            && value(&mut cb, "from-c").is_some()),
        "no replication between b and c"
    );
}

/// A running `ringbase relay`, killed on drop.
struct RelayProc {
    child: Child,
    addr: String,
}

impl RelayProc {
    fn start() -> RelayProc {
        let mut child = Command::new(ringbase_bin())
            .args(["relay", "--listen", "/ip4/127.0.0.1/tcp/0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn ringbase relay");
        let out = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for l in std::io::BufReader::new(out).lines() {
                let Ok(l) = l else { break };
                let _ = tx.send(l);
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the relay prints its address");
        assert!(addr.contains("/p2p/12D3"), "{addr}");
        RelayProc { child, addr }
    }
}

impl Drop for RelayProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn relay_replicas_converge_through_the_relay_only() {
    let rt = TempDir::new("disc-relay");
    let relay = RelayProc::start();
    let s = secret(&rt, "secret", "the relay test's secret, 32 byte");
    let other = secret(&rt, "other", "another secret entirely, 32 byte");
    let args = ["--peer".to_string(), relay.addr.clone()];
    let b = server(&rt, "b", "relay", &s, &args);
    let c = server(&rt, "c", "relay", &s, &args);
    let x = server(&rt, "x", "relay", &other, &args);
    let (mut cb, mut cc, mut cx) = (b.connect(), c.connect(), x.connect());
    meet(&mut cb, &mut cc, "b and c never met through the relay");
    // They listen on no TCP port of their own: only on circuits of the relay.
    for cl in [&mut cb, &mut cc] {
        let st = sync_status(cl);
        assert_eq!(st.mode, "relay");
        assert!(!st.listening.is_empty());
        assert!(
            st.listening.iter().all(|a| a.contains("/p2p-circuit")),
            "{:?}",
            st.listening
        );
        assert!(st.peers.iter().all(|p| p.relayed), "{:?}", st.peers);
    }
    // Writes on both sides, more bytes than libp2p's default circuit allowance
    // (128 KiB), converge.
    let big = format!("\"{}\"", "r".repeat(200 << 10));
    for i in 0..3 {
        cb.put_json(&format!("b{i}"), &big).unwrap();
        cc.put_json(&format!("c{i}"), &format!("{i}")).unwrap();
    }
    cb.delete("b2").unwrap();
    assert!(
        eventually(Duration::from_secs(60), || {
            value(&mut cc, "b1").is_some_and(|v| v.len() == big.len())
                && value(&mut cb, "c2").is_some()
                && value(&mut cc, "b2").is_none()
        }),
        "b and c did not converge through the relay"
    );
    // The server with another secret shares the relay, not the data.
    cx.put_json("from-x", "1").unwrap();
    std::thread::sleep(Duration::from_secs(3));
    assert!(value(&mut cx, "b1").is_none());
    assert!(value(&mut cb, "from-x").is_none());
    assert!(sync_status(&mut cx).peers.is_empty());
    assert!(!sees(&mut cb, &sync_status(&mut cx).peer_id));
}

/// A network namespace (a "host"), kept alive by a sleeping process.
struct Host {
    holder: Child,
}

impl Host {
    fn new() -> Host {
        let holder = Command::new("unshare")
            .args(["-n", "sleep", "3600"])
            .spawn()
            .expect("unshare -n (needs root and util-linux)");
        // Wait until the holder is in its own namespace.
        let mine = std::fs::read_link("/proc/self/ns/net").unwrap();
        let path = format!("/proc/{}/ns/net", holder.id());
        assert!(
            eventually(Duration::from_secs(10), || std::fs::read_link(&path)
                .is_ok_and(|ns| ns != mine)),
            "no new network namespace"
        );
        Host { holder }
    }

    fn ns(&self) -> String {
        format!("--net=/proc/{}/ns/net", self.holder.id())
    }

    fn run(&self, cmd: &[&str]) {
        let ns = self.ns();
        let st = Command::new("nsenter")
            .arg(&ns)
            .args(cmd)
            .status()
            .expect("nsenter");
        assert!(st.success(), "{cmd:?} failed");
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// Two hosts joined by a veth pair: 10.77.0.1/24 and 10.77.0.2/24.
fn lan() -> (Host, Host) {
    let (a, b) = (Host::new(), Host::new());
    let st = Command::new("ip")
        .args(["link", "add", "rb-a", "netns"])
        .arg(a.holder.id().to_string())
        .args(["type", "veth", "peer", "name", "rb-b", "netns"])
        .arg(b.holder.id().to_string())
        .status()
        .expect("ip (iproute2)");
    assert!(st.success(), "ip link add veth failed");
    for (h, dev, ip) in [(&a, "rb-a", "10.77.0.1/24"), (&b, "rb-b", "10.77.0.2/24")] {
        h.run(&["ip", "link", "set", "lo", "up"]);
        h.run(&["ip", "addr", "add", ip, "dev", dev]);
        h.run(&["ip", "link", "set", dev, "up"]);
    }
    (a, b)
}

#[test]
fn lan_replicas_on_two_hosts_find_each_other_by_mdns() {
    let rt = TempDir::new("disc-lan");
    let (ha, hb) = lan();
    let s = secret(&rt, "secret", "the lan test's secret, 32 bytes!");
    let other = secret(&rt, "other", "another secret entirely, 32 byte");
    let listen = ["--listen".to_string(), "/ip4/0.0.0.0/tcp/0".into()];
    let (nsa, nsb) = (ha.ns(), hb.ns());
    let a = server_in(&["nsenter", &nsa], &rt, "a", "lan", &s, &listen);
    let b = server_in(&["nsenter", &nsb], &rt, "b", "lan", &s, &listen);
    let x = server_in(&["nsenter", &nsb], &rt, "x", "lan", &other, &listen);
    let (mut ca, mut cb, mut cx) = (a.connect(), b.connect(), x.connect());
    meet(&mut ca, &mut cb, "a and b never found each other");
    // They met over the LAN (a's address on it), not over loopback.
    assert!(sync_status(&mut ca)
        .listening
        .iter()
        .any(|l| l.contains("10.77.0.1")));
    ca.put_json("from-a", "1").unwrap();
    cb.put_json("from-b", "2").unwrap();
    assert!(
        eventually(Duration::from_secs(30), || value(&mut cb, "from-a")
            .is_some()
            && value(&mut ca, "from-b").is_some()),
        "no replication between a and b"
    );
    cx.put_json("from-x", "3").unwrap();
    std::thread::sleep(Duration::from_secs(3));
    assert!(sync_status(&mut cx).peers.is_empty());
    assert!(value(&mut cx, "from-a").is_none());
    assert!(value(&mut ca, "from-x").is_none());
}

#[test]
fn the_peer_id_survives_a_restart() {
    let rt = TempDir::new("disc-id");
    let s = secret(&rt, "secret", "the identity test's secret, 32 b");
    let srv = server(
        &rt,
        "a",
        "peers",
        &s,
        &["--listen".into(), "/ip4/127.0.0.1/tcp/0".into()],
    );
    let id = sync_status(&mut srv.connect()).peer_id;
    assert!(id.starts_with("12D3"), "{id}");
    let key = srv.data.join("sync.key");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&key).unwrap().permissions());
    assert_eq!(mode & 0o077, 0, "the node key is private");
    let srv = srv.restart();
    assert_eq!(sync_status(&mut srv.connect()).peer_id, id);
    // A damaged key is an error at start, not a new identity.
    drop(srv);
    std::fs::write(&key, b"not a key").unwrap();
    let out = Command::new(ringbase_bin())
        .args(["serve", "--name", "disc-a", "--data-dir"])
        .arg(rt.path().join("data-a"))
        .args([
            "--sync",
            "peers",
            "--db-id",
            "discovery-test",
            "--secret-file",
            &s,
        ])
        .args(["--listen", "/ip4/127.0.0.1/tcp/0"])
        .env("RINGBASE_RUNTIME_DIR", rt.path().join("run-a"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("sync.key"), "{err}");
}
