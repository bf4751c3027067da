//! The libp2p side of replication: the node's identity, its transports, how peers are
//! found (the [`SyncMode`]s), the codec of sync messages, and the relay (`ringbase
//! relay`).
//!
//! Transports, by mode:
//!
//! - `peers`, `lan`, `dht`: TCP, then a private network (pnet: XSalsa20 with the
//!   pre-shared key derived from the database's secret and id), then Noise, then Yamux.
//!   Every connection is to a replica of the same database: a node without the key
//!   fails the pnet handshake and never exchanges a message.
//! - `relay`: TCP + Noise + Yamux to the relay only (the relay does not know the
//!   secret), and replicas reached through circuits on it (libp2p circuit relay v2):
//!   each circuit gets its own pnet + Noise + Yamux end to end, so the relay forwards
//!   bytes it cannot read. A server in this mode neither listens on TCP nor dials
//!   replicas directly.
//!
//! Discovery, by mode: explicit `--peer` addresses (every mode; in `dht` they are the
//! bootstrap nodes, in `relay` the relays); `lan` adds mDNS; `dht` and `relay` add
//! Kademlia (`/ringbase/kad/1`) provider records under the database's topic (keyed
//! BLAKE2b of the id, see [`super::net::derive_keys`]), kept by the bootstrap nodes or
//! the relay. The relay learns the topic and the peers' ids, never the key.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::upgrade::Version as UpgradeVersion;
use libp2p::core::transport::Boxed;
use libp2p::core::ConnectedPoint;
use libp2p::futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, StreamExt};
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::pnet::{PnetConfig, PreSharedKey};
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::Transport;
use libp2p::{kad, mdns, noise, relay, tcp, yamux, Multiaddr, PeerId, StreamProtocol, Swarm};

use ringbase_protocol::sync::MAX_SYNC_MESSAGE;

/// The libp2p protocol name of replication messages.
pub const SYNC_PROTOCOL: &str = "/ringbase/sync/1";

/// The Kademlia protocol of Ringbase nodes (not the public IPFS DHT's).
pub const KAD_PROTOCOL: &str = "/ringbase/kad/1";

/// How a server finds the other replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMode {
    /// Only the addresses given with `--peer`.
    Peers,
    /// `--peer` addresses, and servers of the same database on the local network
    /// (mDNS).
    Lan,
    /// `--peer` addresses are bootstrap nodes (servers of the same database); replicas
    /// find each other through Kademlia provider records under the database's topic.
    Dht,
    /// `--peer` addresses are relays (`ringbase relay`): replicas register there, find
    /// each other there, and talk through it.
    Relay,
}

impl SyncMode {
    /// Its name on the command line and in status.
    pub fn name(self) -> &'static str {
        match self {
            SyncMode::Peers => "peers",
            SyncMode::Lan => "lan",
            SyncMode::Dht => "dht",
            SyncMode::Relay => "relay",
        }
    }
}

impl FromStr for SyncMode {
    type Err = String;

    fn from_str(s: &str) -> Result<SyncMode, String> {
        match s {
            "peers" => Ok(SyncMode::Peers),
            "lan" => Ok(SyncMode::Lan),
            "dht" => Ok(SyncMode::Dht),
            "relay" => Ok(SyncMode::Relay),
            other => Err(format!(
                "unknown sync mode {other:?} (peers, lan, dht or relay)"
            )),
        }
    }
}

/// The node's identity (an Ed25519 key pair) from `path`, made there (mode 0600,
/// written to a new file, synced, then renamed) if it does not exist: the peer id
/// stays the same across restarts, so provider records and peers' lists stay true.
pub fn load_or_create_identity(path: &Path) -> Result<Keypair, String> {
    match std::fs::read(path) {
        Ok(bytes) => Keypair::from_protobuf_encoding(&bytes).map_err(|e| {
            format!(
                "{} is not a libp2p key ({e}): move it away to make a new identity",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = Keypair::generate_ed25519();
            let bytes = key
                .to_protobuf_encoding()
                .map_err(|e| format!("encoding the node key: {e}"))?;
            let tmp = path.with_extension("tmp");
            let write = || -> std::io::Result<()> {
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&tmp)?;
                f.write_all(&bytes)?;
                f.sync_all()?;
                std::fs::rename(&tmp, path)?;
                if let Some(dir) = path.parent() {
                    std::fs::File::open(dir)?.sync_all()?;
                }
                Ok(())
            };
            write().map_err(|e| format!("writing {}: {e}", path.display()))?;
            Ok(key)
        }
        Err(e) => Err(format!("reading {}: {e}", path.display())),
    }
}

/// What a replica runs: replication messages, and the discovery its mode needs.
#[derive(NetworkBehaviour)]
pub(crate) struct ReplicaBehaviour {
    pub(crate) sync: request_response::Behaviour<Codec>,
    pub(crate) kad: Toggle<kad::Behaviour<kad::store::MemoryStore>>,
    pub(crate) mdns: Toggle<mdns::tokio::Behaviour>,
    pub(crate) relay: Toggle<relay::client::Behaviour>,
}

fn kad_behaviour(id: PeerId) -> kad::Behaviour<kad::store::MemoryStore> {
    let mut cfg = kad::Config::new(StreamProtocol::new(KAD_PROTOCOL));
    cfg.set_query_timeout(Duration::from_secs(30));
    let mut k = kad::Behaviour::with_config(id, kad::store::MemoryStore::new(id), cfg);
    // Every node answers queries: there is no public reachability to detect on the
    // small networks replication runs on.
    k.set_mode(Some(kad::Mode::Server));
    k
}

type Connection = (PeerId, StreamMuxerBox);

/// The swarm of a replica (must be called inside the tokio runtime it will run on).
pub(crate) fn replica_swarm(
    key: Keypair,
    psk: [u8; 32],
    mode: SyncMode,
) -> Result<Swarm<ReplicaBehaviour>, String> {
    let id = key.public().to_peer_id();
    let psk = PreSharedKey::new(psk);
    let (relay_transport, relay_client) = if mode == SyncMode::Relay {
        let (t, b) = relay::client::new(id);
        (Some(t), Some(b))
    } else {
        (None, None)
    };
    let mdns = if mode == SyncMode::Lan {
        Some(
            mdns::tokio::Behaviour::new(
                mdns::Config {
                    // Ask again every 20 s (libp2p's default: 5 min), not only while
                    // probing at start: a lost packet, or an answer from a server of
                    // another database that ends the probing, must not hide replicas
                    // for minutes.
                    query_interval: Duration::from_secs(20),
                    ..mdns::Config::default()
                },
                id,
            )
            .map_err(|e| format!("starting mDNS: {e}"))?,
        )
    } else {
        None
    };
    let kad = matches!(mode, SyncMode::Dht | SyncMode::Relay).then(|| kad_behaviour(id));
    let swarm = libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_other_transport(
            move |key| -> Result<Boxed<Connection>, Box<dyn std::error::Error + Send + Sync>> {
                let noise_config = noise::Config::new(key)?;
                let tcp = tcp::tokio::Transport::new(tcp::Config::default().nodelay(true));
                Ok(match relay_transport {
                    None => tcp
                        .and_then(move |socket, _| PnetConfig::new(psk).handshake(socket))
                        .upgrade(UpgradeVersion::V1Lazy)
                        .authenticate(noise_config)
                        .multiplex(yamux::Config::default())
                        .timeout(Duration::from_secs(20))
                        .map(|(p, m), _| (p, StreamMuxerBox::new(m)))
                        .boxed(),
                    Some(relayed) => {
                        // To the relay: Noise only (it does not know the key). Through
                        // it: the private network first, end to end.
                        let to_relay = tcp
                            .upgrade(UpgradeVersion::V1Lazy)
                            .authenticate(noise_config.clone())
                            .multiplex(yamux::Config::default())
                            .timeout(Duration::from_secs(20))
                            .map(|(p, m), _| (p, StreamMuxerBox::new(m)));
                        let through = relayed
                            .and_then(move |conn, _| PnetConfig::new(psk).handshake(conn))
                            .upgrade(UpgradeVersion::V1Lazy)
                            .authenticate(noise_config)
                            .multiplex(yamux::Config::default())
                            .timeout(Duration::from_secs(20))
                            .map(|(p, m), _| (p, StreamMuxerBox::new(m)));
                        through
                            .or_transport(to_relay)
                            .map(|either, _| either.into_inner())
                            .boxed()
                    }
                })
            },
        )
        .map_err(|e| e.to_string())?
        .with_behaviour(|_| ReplicaBehaviour {
            sync: request_response::Behaviour::with_codec(
                Codec,
                [(StreamProtocol::new(SYNC_PROTOCOL), ProtocolSupport::Full)],
                request_response::Config::default()
                    .with_request_timeout(Duration::from_secs(60))
                    .with_max_concurrent_streams(256),
            ),
            kad: Toggle::from(kad),
            mdns: Toggle::from(mdns),
            relay: Toggle::from(relay_client),
        })
        .map_err(|e| e.to_string())?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(3600)))
        .build();
    Ok(swarm)
}

/// Whether a connection runs through a relay circuit.
pub(crate) fn is_relayed(endpoint: &ConnectedPoint) -> bool {
    let circuit = |a: &Multiaddr| a.iter().any(|p| matches!(p, Protocol::P2pCircuit));
    match endpoint {
        ConnectedPoint::Dialer { address, .. } => circuit(address),
        ConnectedPoint::Listener {
            local_addr,
            send_back_addr,
        } => circuit(local_addr) || circuit(send_back_addr),
    }
}

/// `addr` without a trailing `/p2p/<id>`.
pub(crate) fn without_peer_id(addr: &Multiaddr) -> Multiaddr {
    let mut a = addr.clone();
    if matches!(a.iter().last(), Some(Protocol::P2p(_))) {
        a.pop();
    }
    a
}

/// How long a relay keeps a circuit open (then the replicas open another). Circuits
/// carry no byte limit: replication moves whole databases through them.
pub const RELAY_CIRCUIT_DURATION: Duration = Duration::from_secs(24 * 3600);

#[derive(NetworkBehaviour)]
struct RelayBehaviour {
    relay: relay::Behaviour,
    kad: kad::Behaviour<kad::store::MemoryStore>,
}

/// Settings of `ringbase relay`.
#[derive(Debug, Clone)]
pub struct RelayOptions {
    /// Where to listen, e.g. `/ip4/0.0.0.0/tcp/4802`.
    pub listen: Vec<Multiaddr>,
    /// Addresses replicas reach the relay at, when they differ from the listening
    /// ones (behind NAT, or listening on 0.0.0.0).
    pub external: Vec<Multiaddr>,
    /// The node key's file (made if missing); `None`: a new identity at each start.
    pub key_file: Option<std::path::PathBuf>,
    /// Most circuits open at once.
    pub max_circuits: usize,
}

/// Runs a relay until the process is stopped: it keeps reservations and provider
/// records and forwards circuits between replicas, without any database key.
/// `ready` gets each address it listens on (with `/p2p/<its id>`), as replicas should
/// be given it.
pub fn run_relay(opts: RelayOptions, mut ready: impl FnMut(&Multiaddr)) -> Result<(), String> {
    let key = match &opts.key_file {
        Some(p) => load_or_create_identity(p)?,
        None => Keypair::generate_ed25519(),
    };
    let id = key.public().to_peer_id();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting the relay's runtime: {e}"))?;
    runtime.block_on(async move {
        let config = relay::Config {
            max_circuits: opts.max_circuits,
            max_circuits_per_peer: opts.max_circuits,
            max_circuit_duration: RELAY_CIRCUIT_DURATION,
            max_circuit_bytes: 0,
            ..relay::Config::default()
        };
        let mut swarm = libp2p::SwarmBuilder::with_existing_identity(key)
            .with_tokio()
            .with_tcp(
                tcp::Config::default().nodelay(true),
                noise::Config::new,
                yamux::Config::default,
            )
            .map_err(|e| format!("starting libp2p: {e}"))?
            .with_behaviour(|_| RelayBehaviour {
                relay: relay::Behaviour::new(id, config),
                kad: kad_behaviour(id),
            })
            .map_err(|e| format!("starting libp2p: {e}"))?
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(3600)))
            .build();
        for a in &opts.listen {
            swarm
                .listen_on(a.clone())
                .map_err(|e| format!("listening on {a}: {e}"))?;
        }
        for a in &opts.external {
            swarm.add_external_address(a.clone());
        }
        loop {
            match swarm.select_next_some().await {
                SwarmEvent::NewListenAddr { address, .. } => {
                    // The relay hands its addresses to replicas in their reservations.
                    if opts.external.is_empty() {
                        swarm.add_external_address(address.clone());
                    }
                    ready(&address.with(Protocol::P2p(id)));
                }
                SwarmEvent::ListenerError { error, .. } => {
                    eprintln!("ringbase: relay: {error}");
                }
                SwarmEvent::ListenerClosed { reason: Err(e), .. } => {
                    return Err(format!("the relay's listener closed: {e}"))
                }
                _ => {}
            }
        }
    })
}

/// The codec of sync requests: a little-endian u32 length, then the archive; the
/// response is one byte.
#[derive(Debug, Clone, Default)]
pub(crate) struct Codec;

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
