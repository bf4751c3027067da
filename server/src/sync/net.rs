//! The sync engine: anti-entropy ([`super::protocol`]) over libp2p, on a thread of its
//! own (`ringbase-sync`, a single-threaded tokio runtime).
//!
//! Transport: TCP, then a private network (pnet: XSalsa20 with a pre-shared key), then
//! Noise (authenticated encryption), then Yamux (streams). The pre-shared key is
//! derived from the database's secret and id ([`derive_keys`]): a server with another
//! secret fails the pnet/Noise handshake and never exchanges a message. Each protocol
//! message is one libp2p request (`/ringbase/sync/1`, a length-prefixed rkyv archive,
//! [`ringbase_protocol::sync`]), acknowledged by an empty response; replies go back as
//! requests of their own.
//!
//! Peers: the addresses given (`--peer`), dialled at start and again while not
//! connected. Local commits reach the engine through a commit hook ([`LocalWrites`])
//! and are pushed to every connected peer; anti-entropy runs on connect and every
//! second while a peer's version vector differs.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use blake2::digest::{FixedOutput, KeyInit, Update};
use blake2::Blake2bMac;
use libp2p::core::transport::upgrade::Version as UpgradeVersion;
use libp2p::futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, StreamExt};
use libp2p::pnet::{PnetConfig, PreSharedKey};
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::SwarmEvent;
use libp2p::{noise, tcp, yamux, Multiaddr, PeerId, StreamProtocol, Swarm, Transport};
use ringbase_protocol::message::{PeerStatus, SyncStatusInfo};
use ringbase_protocol::sync::{decode_sync, encode_sync, Runs, MAX_SYNC_MESSAGE};

use super::merge::RecordVersion;
use super::protocol::{Message, Replica, SyncConfig, VersionStore};
use super::sqlite::SqliteVersionStore;
use super::vv::VersionVector;
use super::wire::{from_wire, to_wire};
use crate::store::{Commit, CommitHook, RemoteVersion, ReplicaId, Store};

/// The libp2p protocol name of replication messages.
pub const SYNC_PROTOCOL: &str = "/ringbase/sync/1";

/// Local writes queued for pushing before the oldest are dropped (anti-entropy sends
/// them anyway: a push only makes a write arrive sooner).
const PUSH_QUEUE: usize = 65_536;

/// Settings of replication.
#[derive(Debug, Clone)]
pub struct SyncOptions {
    /// The database id shared by every replica.
    pub db_id: String,
    /// The database secret shared by every replica.
    pub secret: Vec<u8>,
    /// Where to listen, e.g. `/ip4/0.0.0.0/tcp/4801`.
    pub listen: Vec<Multiaddr>,
    /// Peers to dial, e.g. `/ip4/127.0.0.1/tcp/4801`.
    pub peers: Vec<Multiaddr>,
    /// Anti-entropy settings.
    pub config: SyncConfig,
}

/// Keys derived from the database's secret and id: the private network's pre-shared
/// key, and the discovery topic (a name peers look each other up under). Keyed
/// BLAKE2b-256 with the secret as key and distinct labels, so neither reveals the
/// other, nor the secret.
pub fn derive_keys(secret: &[u8], db_id: &str) -> Result<([u8; 32], [u8; 32]), String> {
    if secret.len() < 16 {
        return Err(format!(
            "the database secret has {} bytes: at least 16 are needed",
            secret.len()
        ));
    }
    // BLAKE2b takes keys of at most 64 bytes: a longer secret is hashed first.
    let key: Vec<u8> = if secret.len() > 64 {
        let mut h = Blake2bMac::<blake2::digest::consts::U64>::new_from_slice(b"ringbase-secret")
            .map_err(|e| e.to_string())?;
        Update::update(&mut h, secret);
        h.finalize_fixed().to_vec()
    } else {
        secret.to_vec()
    };
    let derive = |label: &[u8]| -> Result<[u8; 32], String> {
        let mut h = Blake2bMac::<blake2::digest::consts::U32>::new_from_slice(&key)
            .map_err(|e| e.to_string())?;
        Update::update(&mut h, label);
        Update::update(&mut h, &(db_id.len() as u64).to_le_bytes());
        Update::update(&mut h, db_id.as_bytes());
        Ok(h.finalize_fixed().into())
    };
    Ok((derive(b"ringbase/pnet/v1")?, derive(b"ringbase/topic/v1")?))
}

/// The commit hook that hands this replica's own writes to the sync engine.
pub struct LocalWrites {
    /// The store's replica id, known once it is open ([`LocalWrites::set_own`]).
    own: std::sync::OnceLock<ReplicaId>,
    tx: tokio::sync::mpsc::Sender<RecordVersion>,
}

impl LocalWrites {
    /// The hook (give it to the store at open, then [`LocalWrites::set_own`]), and the
    /// receiving end for [`start`].
    pub fn new() -> (Arc<LocalWrites>, tokio::sync::mpsc::Receiver<RecordVersion>) {
        let (tx, rx) = tokio::sync::mpsc::channel(PUSH_QUEUE);
        (
            Arc::new(LocalWrites {
                own: std::sync::OnceLock::new(),
                tx,
            }),
            rx,
        )
    }

    /// The store's replica id: changes of other replicas are not pushed.
    pub fn set_own(&self, own: ReplicaId) {
        let _ = self.own.set(own);
    }
}

impl CommitHook for LocalWrites {
    fn committed(&self, commit: &Commit<'_>) {
        let Some(own) = self.own.get() else {
            return;
        };
        for c in commit.changes() {
            if &c.version.replica != own {
                continue;
            }
            // Never blocks the writer: a full queue drops the push.
            let _ = self.tx.try_send(RemoteVersion {
                key: c.key.to_string(),
                value: c.value.to_vec(),
                kind: c.kind,
                deleted: c.deleted,
                vector: c.vector.map(<[f32]>::to_vec),
                version: c.version,
                updated_at_ms: c.updated_at_ms,
            });
        }
    }
}

/// The running sync engine.
pub struct SyncHandle {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    status: Arc<Mutex<SyncStatusInfo>>,
}

impl std::fmt::Debug for SyncHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncHandle").finish_non_exhaustive()
    }
}

impl SyncHandle {
    /// A copy of the engine's status.
    pub fn status(&self) -> SyncStatusInfo {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Stops the engine and waits for its thread.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for SyncHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The codec of sync requests: a little-endian u32 length, then the archive; the
/// response is one byte.
#[derive(Debug, Clone, Default)]
struct Codec;

impl request_response::Codec for Codec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = ();

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> std::io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        let mut len = [0u8; 4];
        io.read_exact(&mut len).await?;
        let len = u32::from_le_bytes(len) as usize;
        if len > MAX_SYNC_MESSAGE {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("a sync message of {len} bytes (max {MAX_SYNC_MESSAGE})"),
            ));
        }
        let mut buf = vec![0u8; len];
        io.read_exact(&mut buf).await?;
        Ok(buf)
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> std::io::Result<()>
    where
        T: AsyncRead + Unpin + Send,
    {
        let mut ack = [0u8; 1];
        io.read_exact(&mut ack).await
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Vec<u8>,
    ) -> std::io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        io.write_all(&(req.len() as u32).to_le_bytes()).await?;
        io.write_all(&req).await?;
        io.close().await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        (): (),
    ) -> std::io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        io.write_all(&[1]).await?;
        io.close().await
    }
}

type Behaviour = request_response::Behaviour<Codec>;

/// Starts the sync engine for `store`, fed with local writes by `local` (the receiving
/// end of [`LocalWrites::new`]).
pub fn start(
    store: Arc<Store>,
    opts: SyncOptions,
    local: tokio::sync::mpsc::Receiver<RecordVersion>,
) -> Result<SyncHandle, String> {
    let (psk, _topic) = derive_keys(&opts.secret, &opts.db_id)?;
    let vs = SqliteVersionStore::open(Arc::clone(&store))
        .map_err(|e| format!("opening replication state: {e}"))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting the sync runtime: {e}"))?;
    // The transport registers its sockets with the runtime it is built in.
    let swarm = {
        let _in_runtime = runtime.enter();
        let mut swarm = build_swarm(psk).map_err(|e| format!("starting libp2p: {e}"))?;
        for addr in &opts.listen {
            swarm
                .listen_on(addr.clone())
                .map_err(|e| format!("listening on {addr}: {e}"))?;
        }
        swarm
    };
    let status = Arc::new(Mutex::new(SyncStatusInfo {
        db_id: opts.db_id.clone(),
        ..SyncStatusInfo::default()
    }));
    let stop = Arc::new(AtomicBool::new(false));
    let thread = {
        let (status, stop) = (Arc::clone(&status), Arc::clone(&stop));
        std::thread::Builder::new()
            .name("ringbase-sync".into())
            .spawn(move || {
                runtime.block_on(run(swarm, vs, opts, local, status, stop));
            })
            .map_err(|e| format!("starting the sync thread: {e}"))?
    };
    Ok(SyncHandle {
        stop,
        thread: Some(thread),
        status,
    })
}

fn build_swarm(psk: [u8; 32]) -> Result<Swarm<Behaviour>, String> {
    let psk = PreSharedKey::new(psk);
    Ok(libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_other_transport(
            |key| -> Result<_, Box<dyn std::error::Error + Send + Sync>> {
                let noise_config = noise::Config::new(key)?;
                Ok(
                    tcp::tokio::Transport::new(tcp::Config::default().nodelay(true))
                        .and_then(move |socket, _| PnetConfig::new(psk).handshake(socket))
                        .upgrade(UpgradeVersion::V1Lazy)
                        .authenticate(noise_config)
                        .multiplex(yamux::Config::default())
                        .timeout(Duration::from_secs(20)),
                )
            },
        )
        .map_err(|e| e.to_string())?
        .with_behaviour(|_| {
            request_response::Behaviour::with_codec(
                Codec,
                [(StreamProtocol::new(SYNC_PROTOCOL), ProtocolSupport::Full)],
                request_response::Config::default()
                    .with_request_timeout(Duration::from_secs(60))
                    .with_max_concurrent_streams(256),
            )
        })
        .map_err(|e| e.to_string())?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(3600)))
        .build())
}

fn now_ms() -> u64 {
    crate::store::now_ms()
}

/// The engine's loop (see the module docs).
async fn run(
    mut swarm: Swarm<Behaviour>,
    mut vs: SqliteVersionStore,
    opts: SyncOptions,
    mut local: tokio::sync::mpsc::Receiver<RecordVersion>,
    status: Arc<Mutex<SyncStatusInfo>>,
    stop: Arc<AtomicBool>,
) {
    let mut proto: Replica<PeerId> = Replica::new(opts.config);
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    let mut ticks: u64 = 0;
    let mut connected: HashSet<PeerId> = HashSet::new();
    let mut bad: u64 = 0;
    let set_error = |e: String| {
        eprintln!("ringbase: sync: {e}");
        status.lock().unwrap_or_else(|p| p.into_inner()).last_error = e;
    };
    for addr in &opts.peers {
        let _ = swarm.dial(addr.clone());
    }
    loop {
        if stop.load(Ordering::Acquire) {
            break;
        }
        tokio::select! {
            _ = ticker.tick() => {
                ticks += 1;
                if let Err(e) = vs.refresh() {
                    set_error(format!("reading the version vector: {e}"));
                }
                for (p, m) in proto.tick(&vs, ticks) {
                    send(&mut swarm, &p, &m);
                }
                update_peers(&status, &connected, &proto, &vs);
                // Explicit peers not connected: dial again every few seconds.
                if ticks.is_multiple_of(3) && connected.len() < opts.peers.len() {
                    for addr in &opts.peers {
                        let _ = swarm.dial(addr.clone());
                    }
                }
            }
            Some(v) = local.recv() => {
                for (p, m) in proto.local_write(&v) {
                    send(&mut swarm, &p, &m);
                }
            }
            ev = swarm.select_next_some() => match ev {
                SwarmEvent::NewListenAddr { address, .. } => {
                    eprintln!("ringbase: sync listening on {address}");
                    status
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .listening
                        .push(address.to_string());
                }
                SwarmEvent::ConnectionEstablished { peer_id, num_established, .. }
                    if num_established.get() == 1 && connected.insert(peer_id) =>
                {
                    let _ = vs.refresh();
                    let m = proto.connected(peer_id, &vs, ticks);
                    send(&mut swarm, &peer_id, &m);
                    update_peers(&status, &connected, &proto, &vs);
                }
                SwarmEvent::ConnectionClosed { peer_id, num_established: 0, .. } => {
                    connected.remove(&peer_id);
                    proto.disconnected(&peer_id);
                    update_peers(&status, &connected, &proto, &vs);
                }
                SwarmEvent::Behaviour(request_response::Event::Message {
                    peer,
                    message: request_response::Message::Request { request, channel, .. },
                    ..
                }) => {
                    let _ = swarm.behaviour_mut().send_response(channel, ());
                    let msg = match decode_sync(&request) {
                        Ok(m) => from_wire(m),
                        Err(e) => {
                            bad += 1;
                            status.lock().unwrap_or_else(|p| p.into_inner()).bad_messages = bad;
                            set_error(format!("an undecodable message from {peer}: {e}"));
                            continue;
                        }
                    };
                    if let Err(e) = vs.refresh() {
                        set_error(format!("reading the version vector: {e}"));
                        continue;
                    }
                    match proto.receive(&peer, msg, &mut vs, now_ms()) {
                        Ok(out) => {
                            for m in out {
                                send(&mut swarm, &peer, &m);
                            }
                        }
                        Err(e) => {
                            bad += 1;
                            status.lock().unwrap_or_else(|p| p.into_inner()).bad_messages = bad;
                            set_error(format!("a message from {peer}: {e}"));
                        }
                    }
                }
                SwarmEvent::Behaviour(request_response::Event::OutboundFailure { peer, error, .. }) => {
                    set_error(format!("sending to {peer}: {error}"));
                }
                _ => {}
            },
        }
    }
}

/// The connected peers in the status: their version vectors as last heard, and how
/// far behind or ahead of this server each is.
fn update_peers(
    status: &Mutex<SyncStatusInfo>,
    connected: &HashSet<PeerId>,
    proto: &Replica<PeerId>,
    vs: &SqliteVersionStore,
) {
    let own = vs.version_vector();
    let empty = VersionVector::new();
    let mut peers: Vec<PeerStatus> = connected
        .iter()
        .map(|p| {
            let known = proto.known(p);
            let theirs = known.unwrap_or(&empty);
            PeerStatus {
                peer: p.to_string(),
                behind: if known.is_some() {
                    own.count_missing_from(theirs)
                } else {
                    0
                },
                ahead: theirs.count_missing_from(&own),
                vv: theirs
                    .iter()
                    .map(|(r, set)| Runs {
                        replica: *r,
                        runs: set.runs().iter().map(|&(lo, hi)| [lo, hi]).collect(),
                    })
                    .collect(),
            }
        })
        .collect();
    peers.sort_by(|a, b| a.peer.cmp(&b.peer));
    status.lock().unwrap_or_else(|p| p.into_inner()).peers = peers;
}

fn send(swarm: &mut Swarm<Behaviour>, peer: &PeerId, m: &Message) {
    match encode_sync(&to_wire(m)) {
        Ok(bytes) => {
            swarm.behaviour_mut().send_request(peer, bytes.to_vec());
        }
        Err(e) => eprintln!("ringbase: sync: encoding a message: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_depend_on_secret_and_id_and_differ_from_each_other() {
        let s = b"0123456789abcdef0123";
        let (psk, topic) = derive_keys(s, "db").unwrap();
        assert_ne!(psk, topic);
        assert_ne!(derive_keys(s, "db2").unwrap().0, psk);
        assert_ne!(derive_keys(b"0123456789abcdef0124", "db").unwrap().0, psk);
        assert_eq!(derive_keys(s, "db").unwrap(), (psk, topic));
        // Length-prefixed id: ("ab", "c") and ("a", "bc") cannot collide by concatenation.
        assert!(derive_keys(b"short", "db").unwrap_err().contains("16"));
        let long = vec![7u8; 200];
        assert!(derive_keys(&long, "db").is_ok());
    }
}
