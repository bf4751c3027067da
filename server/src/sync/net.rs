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
//! connected; in `lan` mode also the replicas mDNS finds; in `dht` and `relay` modes
//! the replicas whose provider records sit under the database's topic (looked up every
//! few seconds), reached directly (`dht`) or through a circuit of the relay (`relay`).
//! See [`super::transport`] for the transports of each mode. Local commits reach the
//! engine through a commit hook ([`LocalWrites`]) and are pushed to every connected
//! peer; anti-entropy runs on connect and every second while a peer's version vector
//! differs.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use blake2::digest::{FixedOutput, KeyInit, Update};
use blake2::Blake2bMac;
use libp2p::core::ConnectedPoint;
use libp2p::futures::StreamExt;
use libp2p::multiaddr::Protocol;
use libp2p::request_response;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::SwarmEvent;
use libp2p::{kad, mdns, Multiaddr, PeerId, Swarm};
use ringbase_protocol::message::{PeerStatus, SyncStatusInfo};
use ringbase_protocol::sync::{decode_sync, encode_sync, Runs};

use super::merge::RecordVersion;
use super::protocol::{Message, Replica, SyncConfig, VersionStore};
use super::sqlite::SqliteVersionStore;
use super::transport::{
    is_relayed, load_or_create_identity, replica_swarm, without_peer_id, ReplicaBehaviour,
    ReplicaBehaviourEvent, SyncMode,
};
use super::vv::VersionVector;
use super::wire::{from_wire, to_wire};
use crate::store::{Commit, CommitHook, RemoteVersion, ReplicaId, Store};

/// Seconds between two dials of a node found on the LAN while it is not connected.
const LAN_REDIAL_TICKS: u64 = 10;

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
    /// How peers are found.
    pub mode: SyncMode,
    /// Where to listen, e.g. `/ip4/0.0.0.0/tcp/4801` (`relay` mode listens on circuits
    /// of its relays instead).
    pub listen: Vec<Multiaddr>,
    /// Peers to dial, e.g. `/ip4/127.0.0.1/tcp/4801`: replicas, bootstrap nodes
    /// (`dht`) or relays (`relay`).
    pub peers: Vec<Multiaddr>,
    /// The node key's file (made if missing; the engine puts it in the data dir).
    pub key_file: Option<std::path::PathBuf>,
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

/// Starts the sync engine for `store`, fed with local writes by `local` (the receiving
/// end of [`LocalWrites::new`]).
pub fn start(
    store: Arc<Store>,
    opts: SyncOptions,
    local: tokio::sync::mpsc::Receiver<RecordVersion>,
) -> Result<SyncHandle, String> {
    let (psk, topic) = derive_keys(&opts.secret, &opts.db_id)?;
    if opts.mode == SyncMode::Relay && !opts.listen.is_empty() {
        return Err("--sync relay listens through its relays: drop --listen".into());
    }
    if opts.mode == SyncMode::Relay && opts.peers.is_empty() {
        return Err("--sync relay needs the relay's address: --peer ADDRESS".into());
    }
    let key = match &opts.key_file {
        Some(p) => load_or_create_identity(p)?,
        None => libp2p::identity::Keypair::generate_ed25519(),
    };
    let local_id = key.public().to_peer_id();
    let vs = SqliteVersionStore::open(Arc::clone(&store))
        .map_err(|e| format!("opening replication state: {e}"))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting the sync runtime: {e}"))?;
    // The transport registers its sockets with the runtime it is built in.
    let swarm = {
        let _in_runtime = runtime.enter();
        let mut swarm =
            replica_swarm(key, psk, opts.mode).map_err(|e| format!("starting libp2p: {e}"))?;
        for addr in &opts.listen {
            swarm
                .listen_on(addr.clone())
                .map_err(|e| format!("listening on {addr}: {e}"))?;
        }
        swarm
    };
    let status = Arc::new(Mutex::new(SyncStatusInfo {
        db_id: opts.db_id.clone(),
        mode: opts.mode.name().to_string(),
        peer_id: local_id.to_string(),
        ..SyncStatusInfo::default()
    }));
    let stop = Arc::new(AtomicBool::new(false));
    let thread = {
        let (status, stop) = (Arc::clone(&status), Arc::clone(&stop));
        let node = Node {
            swarm,
            local_id,
            topic: kad::RecordKey::new(&topic),
            explicit: opts
                .peers
                .iter()
                .map(|a| (without_peer_id(a), a.clone(), None))
                .collect(),
            lan: HashMap::new(),
            replicas: HashMap::new(),
            relays: HashMap::new(),
            mode: opts.mode,
            proto: Replica::new(opts.config),
            vs,
            status,
        };
        std::thread::Builder::new()
            .name("ringbase-sync".into())
            .spawn(move || {
                runtime.block_on(node.run(local, stop));
            })
            .map_err(|e| format!("starting the sync thread: {e}"))?
    };
    Ok(SyncHandle {
        stop,
        thread: Some(thread),
        status,
    })
}

fn now_ms() -> u64 {
    crate::store::now_ms()
}

/// A connected replica.
#[derive(Debug, Clone, Copy)]
struct Conn {
    /// Open connections to it.
    count: usize,
    /// Whether they run through a relay.
    relayed: bool,
}

/// A relay (`relay` mode): where it was reached, and whether we listen through it.
#[derive(Debug)]
struct RelayState {
    addr: Multiaddr,
    listening: bool,
}

/// The sync engine's state: the swarm, the peers, the protocol.
struct Node {
    swarm: Swarm<ReplicaBehaviour>,
    local_id: PeerId,
    mode: SyncMode,
    /// The database's discovery topic (Kademlia provider key).
    topic: kad::RecordKey,
    /// `--peer` addresses (without `/p2p/`), as given, and the peer last reached there.
    explicit: Vec<(Multiaddr, Multiaddr, Option<PeerId>)>,
    /// Nodes mDNS found on the local network (`lan` mode) and their addresses, until
    /// their records expire: dialled again while not connected (a first dial can fail,
    /// and mDNS may not announce them again for minutes).
    lan: HashMap<PeerId, Vec<Multiaddr>>,
    /// Connected replicas.
    replicas: HashMap<PeerId, Conn>,
    /// Connected relays (`relay` mode).
    relays: HashMap<PeerId, RelayState>,
    proto: Replica<PeerId>,
    vs: SqliteVersionStore,
    status: Arc<Mutex<SyncStatusInfo>>,
}

impl Node {
    fn set_error(&self, e: String) {
        eprintln!("ringbase: sync: {e}");
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .last_error = e;
    }

    fn bad_message(&self, e: String) {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .bad_messages += 1;
        self.set_error(e);
    }

    /// The engine's loop (see the module docs).
    async fn run(
        mut self,
        mut local: tokio::sync::mpsc::Receiver<RecordVersion>,
        stop: Arc<AtomicBool>,
    ) {
        let mut ticker = tokio::time::interval(Duration::from_secs(1));
        let mut ticks: u64 = 0;
        self.dial_explicit();
        loop {
            if stop.load(Ordering::Acquire) {
                break;
            }
            tokio::select! {
                _ = ticker.tick() => {
                    ticks += 1;
                    self.tick(ticks);
                }
                Some(v) = local.recv() => {
                    for (p, m) in self.proto.local_write(&v) {
                        self.send(&p, &m);
                    }
                }
                ev = self.swarm.select_next_some() => self.on_event(ev, ticks),
            }
        }
    }

    fn tick(&mut self, ticks: u64) {
        if let Err(e) = self.vs.refresh() {
            self.set_error(format!("reading the version vector: {e}"));
        }
        for (p, m) in self.proto.tick(&self.vs, ticks) {
            self.send(&p, &m);
        }
        self.update_peers();
        // Explicit peers not connected: dial again every few seconds; nodes found on
        // the LAN less often (some may be servers of another database, which refuse).
        if ticks.is_multiple_of(3) {
            self.dial_explicit();
        }
        if ticks.is_multiple_of(LAN_REDIAL_TICKS) {
            let found: Vec<(PeerId, Vec<Multiaddr>)> =
                self.lan.iter().map(|(p, a)| (*p, a.clone())).collect();
            for (p, addrs) in found {
                self.dial_found(p, addrs);
            }
        }
        // Relays we are connected to but do not listen through (a reservation refused
        // or expired): ask again.
        if self.mode == SyncMode::Relay {
            let again: Vec<PeerId> = self
                .relays
                .iter()
                .filter(|(_, r)| !r.listening)
                .map(|(p, _)| *p)
                .collect();
            for r in again {
                self.listen_via(r);
            }
        }
        if ticks.is_multiple_of(5) {
            self.discover();
        }
    }

    fn dial_explicit(&mut self) {
        for (_, addr, peer) in &self.explicit {
            if peer.is_none_or(|p| !self.swarm.is_connected(&p)) {
                let _ = self.swarm.dial(addr.clone());
            }
        }
    }

    /// Announces this replica under the topic and looks the others up (`dht` and
    /// `relay` modes).
    fn discover(&mut self) {
        let topic = self.topic.clone();
        if let Some(kad) = self.swarm.behaviour_mut().kad.as_mut() {
            let _ = kad.start_providing(topic.clone());
            kad.get_providers(topic);
        }
    }

    /// Listens on a circuit through relay `r` (`relay` mode).
    fn listen_via(&mut self, r: PeerId) {
        let Some(state) = self.relays.get_mut(&r) else {
            return;
        };
        let circuit = state
            .addr
            .clone()
            .with(Protocol::P2p(r))
            .with(Protocol::P2pCircuit);
        match self.swarm.listen_on(circuit.clone()) {
            Ok(_) => state.listening = true,
            Err(e) => self.set_error(format!("listening through {circuit}: {e}")),
        }
    }

    fn dial_found(&mut self, peer: PeerId, addrs: Vec<Multiaddr>) {
        if peer == self.local_id || self.swarm.is_connected(&peer) {
            return;
        }
        let opts = DialOpts::peer_id(peer)
            .condition(PeerCondition::DisconnectedAndNotDialing)
            .addresses(addrs)
            .build();
        let _ = self.swarm.dial(opts);
    }

    fn on_event(&mut self, ev: SwarmEvent<ReplicaBehaviourEvent>, ticks: u64) {
        match ev {
            SwarmEvent::NewListenAddr { address, .. } => {
                eprintln!("ringbase: sync listening on {address}");
                let relayed = address.iter().any(|p| matches!(p, Protocol::P2pCircuit));
                // Provider records carry the external addresses: the concrete listening
                // ones (dht) or the circuits (relay).
                if (self.mode == SyncMode::Dht && !relayed)
                    || (self.mode == SyncMode::Relay && relayed)
                {
                    self.swarm.add_external_address(address.clone());
                    self.discover();
                }
                self.status
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .listening
                    .push(address.to_string());
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                self.swarm.remove_external_address(&address);
                let a = address.to_string();
                self.status
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .listening
                    .retain(|l| *l != a);
            }
            SwarmEvent::ListenerClosed { addresses, .. } => {
                // A circuit listener gone: listen through that relay again (tick).
                for a in &addresses {
                    if let Some(r) = relay_of(a) {
                        if let Some(state) = self.relays.get_mut(&r) {
                            state.listening = false;
                        }
                    }
                }
            }
            SwarmEvent::ConnectionEstablished {
                peer_id, endpoint, ..
            } => self.connected(peer_id, &endpoint, ticks),
            SwarmEvent::ConnectionClosed {
                peer_id, endpoint, ..
            } => self.closed(peer_id, &endpoint),
            SwarmEvent::Behaviour(ReplicaBehaviourEvent::Sync(ev)) => self.on_sync(ev),

            SwarmEvent::Behaviour(ReplicaBehaviourEvent::Kad(
                kad::Event::OutboundQueryProgressed {
                    result:
                        kad::QueryResult::GetProviders(Ok(kad::GetProvidersOk::FoundProviders {
                            providers,
                            ..
                        })),
                    ..
                },
            )) => {
                // The query knows their addresses while it runs.
                for p in providers {
                    self.dial_found(p, Vec::new());
                }
            }
            SwarmEvent::Behaviour(ReplicaBehaviourEvent::Mdns(mdns::Event::Discovered(found))) => {
                let mut by_peer: HashMap<PeerId, Vec<Multiaddr>> = HashMap::new();
                for (p, a) in found {
                    let known = self.lan.entry(p).or_default();
                    if !known.contains(&a) {
                        known.push(a.clone());
                    }
                    by_peer.entry(p).or_default().push(a);
                }
                for (p, addrs) in by_peer {
                    self.dial_found(p, addrs);
                }
            }
            SwarmEvent::Behaviour(ReplicaBehaviourEvent::Mdns(mdns::Event::Expired(gone))) => {
                for (p, a) in gone {
                    if let Some(known) = self.lan.get_mut(&p) {
                        known.retain(|k| *k != a);
                        if known.is_empty() {
                            self.lan.remove(&p);
                        }
                    }
                }
            }
            _ => {}
        }
    }

    fn connected(&mut self, peer: PeerId, endpoint: &ConnectedPoint, ticks: u64) {
        let relayed = is_relayed(endpoint);
        if let ConnectedPoint::Dialer { address, .. } = endpoint {
            let bare = without_peer_id(address);
            for (a, _, p) in &mut self.explicit {
                if *a == bare {
                    *p = Some(peer);
                }
            }
            if !relayed {
                if let Some(kad) = self.swarm.behaviour_mut().kad.as_mut() {
                    kad.add_address(&peer, bare.clone());
                }
            }
            if self.mode == SyncMode::Relay && !relayed {
                // In relay mode, a direct connection is a relay: listen through it,
                // and register and look up there.
                if let std::collections::hash_map::Entry::Vacant(e) = self.relays.entry(peer) {
                    e.insert(RelayState {
                        addr: bare,
                        listening: false,
                    });
                    self.listen_via(peer);
                }
                self.discover();
                return;
            }
            if self.mode == SyncMode::Dht && self.explicit.iter().any(|(_, _, p)| *p == Some(peer))
            {
                self.discover();
            }
        }
        if self.mode == SyncMode::Relay && !relayed {
            // Nothing dials a relay-mode replica directly (it does not listen): an
            // inbound direct connection is not a replica.
            return;
        }
        let conn = self
            .replicas
            .entry(peer)
            .or_insert(Conn { count: 0, relayed });
        conn.count += 1;
        if conn.count == 1 {
            let _ = self.vs.refresh();
            let m = self.proto.connected(peer, &self.vs, ticks);
            self.send(&peer, &m);
            self.update_peers();
        }
    }

    fn closed(&mut self, peer: PeerId, endpoint: &ConnectedPoint) {
        if self.mode == SyncMode::Relay && !is_relayed(endpoint) {
            if !self.swarm.is_connected(&peer) {
                self.relays.remove(&peer);
            }
            return;
        }
        if let Some(conn) = self.replicas.get_mut(&peer) {
            conn.count -= 1;
            if conn.count == 0 {
                self.replicas.remove(&peer);
                self.proto.disconnected(&peer);
                self.update_peers();
            }
        }
    }

    fn on_sync(&mut self, ev: request_response::Event<Vec<u8>, ()>) {
        match ev {
            request_response::Event::Message {
                peer,
                message:
                    request_response::Message::Request {
                        request, channel, ..
                    },
                ..
            } => {
                let _ = self.swarm.behaviour_mut().sync.send_response(channel, ());
                if !self.replicas.contains_key(&peer) {
                    // Only replicas (pnet-keyed connections) speak sync: in relay mode,
                    // the relay is not one.
                    return;
                }
                let msg = match decode_sync(&request) {
                    Ok(m) => from_wire(m),
                    Err(e) => {
                        self.bad_message(format!("an undecodable message from {peer}: {e}"));
                        return;
                    }
                };
                if let Err(e) = self.vs.refresh() {
                    self.set_error(format!("reading the version vector: {e}"));
                    return;
                }
                match self.proto.receive(&peer, msg, &mut self.vs, now_ms()) {
                    Ok(out) => {
                        for m in out {
                            self.send(&peer, &m);
                        }
                    }
                    Err(e) => self.bad_message(format!("a message from {peer}: {e}")),
                }
            }
            request_response::Event::OutboundFailure { peer, error, .. } => {
                self.set_error(format!("sending to {peer}: {error}"));
            }
            _ => {}
        }
    }

    /// The connected replicas in the status: their version vectors as last heard, and
    /// how far behind or ahead of this server each is.
    fn update_peers(&self) {
        let own = self.vs.version_vector();
        let empty = VersionVector::new();
        let mut peers: Vec<PeerStatus> = self
            .replicas
            .iter()
            .map(|(p, conn)| {
                let known = self.proto.known(p);
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
                    relayed: conn.relayed,
                }
            })
            .collect();
        peers.sort_by(|a, b| a.peer.cmp(&b.peer));
        self.status.lock().unwrap_or_else(|p| p.into_inner()).peers = peers;
    }

    fn send(&mut self, peer: &PeerId, m: &Message) {
        match encode_sync(&to_wire(m)) {
            Ok(bytes) => {
                self.swarm
                    .behaviour_mut()
                    .sync
                    .send_request(peer, bytes.to_vec());
            }
            Err(e) => eprintln!("ringbase: sync: encoding a message: {e}"),
        }
    }
}

/// The relay a circuit address runs through (`.../p2p/<relay>/p2p-circuit...`).
fn relay_of(addr: &Multiaddr) -> Option<PeerId> {
    let mut last = None;
    for p in addr.iter() {
        match p {
            Protocol::P2p(id) => last = Some(id),
            Protocol::P2pCircuit => return last,
            _ => {}
        }
    }
    None
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
