//! `ringbase`: the server and its command-line client.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use ringbase_server::embed::onnx::OnnxEmbedder;
use ringbase_server::embed::{AutoEmbed, Embedder, TextFields};
use ringbase_server::engine::EngineConfig;
use ringbase_server::feed::FeedLimits;
use ringbase_server::store::JsonPath;
use ringbase_server::sync::net::SyncOptions;
use ringbase_server::sync::protocol::SyncConfig;
use ringbase_server::sync::transport::{RelayOptions, SyncMode};
use ringbase_server::vectors::{GraphParams, VectorConfig};
use ringbase_server::{Engine, Server, ServerConfig};

mod cli;

#[derive(Parser, Debug)]
#[command(
    name = "ringbase",
    version,
    about = "Ringbase: a local database server for native applications"
)]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum IndexCmd {
    /// Create an index on a JSON field, e.g. '$.type' (for `list --where` and queries).
    Create {
        /// JSON path: $ followed by `.name` and `[index]` steps.
        path: String,
    },
    /// Drop the index on a JSON field.
    Drop {
        /// JSON path.
        path: String,
    },
    /// List the indexed JSON paths, one per line.
    List,
}

/// The options of a nearest-neighbour search (`vsearch`, `search-text`).
#[derive(clap::Args, Debug)]
struct SearchFlags {
    /// How many results.
    #[arg(long, default_value_t = 10)]
    k: u32,
    /// Only keys starting with this.
    #[arg(long)]
    prefix: Option<String>,
    /// Only results scoring at least this (0 to 1).
    #[arg(long, default_value_t = 0.0)]
    min_score: f32,
    /// Search breadth [default: the server's].
    #[arg(long)]
    ef: Option<u32>,
    /// Print each result's record too.
    #[arg(long)]
    values: bool,
}

impl SearchFlags {
    fn options(self) -> ringbase_client::VectorSearch {
        ringbase_client::VectorSearch {
            k: self.k,
            min_score: self.min_score,
            prefix: self.prefix,
            ef: self.ef.unwrap_or(0),
            with_values: self.values,
        }
    }
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the server in the foreground (SIGINT/SIGTERM stop it cleanly).
    Serve {
        /// Server name: clients connect by name.
        #[arg(long, default_value = "default")]
        name: String,
        /// Data directory [default: $RINGBASE_DATA_DIR, else $XDG_DATA_HOME/ringbase/NAME,
        /// else ~/.local/share/ringbase/NAME].
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Most concurrent client sessions.
        #[arg(long, default_value_t = 256)]
        max_sessions: usize,
        /// Also accept clients running as this uid (repeatable).
        #[arg(long = "allow-uid")]
        allow_uids: Vec<u32>,
        /// Most changes the change log keeps for watchers resuming with `since`.
        #[arg(long, default_value_t = FeedLimits::default().log_changes)]
        change_log: usize,
        /// How many changes a watcher may fall behind before it gets an overflow marker.
        #[arg(long, default_value_t = FeedLimits::default().max_lag)]
        watch_max_lag: u64,
        /// HNSW vector index: neighbours per point and layer (M), 2 to 256.
        #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(2..=256))]
        hnsw_m: u16,
        /// HNSW vector index: candidates examined per insert (ef_construction).
        #[arg(long, default_value_t = VectorConfig::default().graph.ef_construction)]
        hnsw_ef_construction: usize,
        /// HNSW vector index: default search breadth (ef), when a search leaves it open.
        #[arg(long, default_value_t = VectorConfig::default().ef_search)]
        hnsw_ef: usize,
        /// Embedding model: a directory with model.onnx and vocab.txt (a BERT-family
        /// sentence-embedding model such as all-MiniLM-L6-v2). JSON puts without a
        /// vector then get one from their text, and text search works.
        #[arg(long)]
        embed_model: Option<PathBuf>,
        /// Which text of a record is embedded: JSON paths, comma-separated, e.g.
        /// '$.title,$.body' [default: every string in the record].
        #[arg(long, value_delimiter = ',', requires = "embed_model")]
        embed_fields: Vec<String>,
        /// Most tokens of a text the embedding model reads (2 to 512).
        #[arg(long, default_value_t = ringbase_server::embed::onnx::DEFAULT_MAX_TOKENS, requires = "embed_model")]
        embed_max_tokens: usize,
        /// Replication with other servers: `disabled` (no network activity at all);
        /// `peers` (the servers given with --peer); `lan` (those too, and servers of
        /// the same database found on the local network by mDNS); `dht` (--peer
        /// addresses are bootstrap servers; replicas find each other through Kademlia
        /// provider records under the database's topic); `relay` (--peer addresses are
        /// relays run with `ringbase relay`: replicas register, find each other and
        /// talk through them, end-to-end encrypted). Replicas talk over TCP + a private
        /// network keyed by the database secret + Noise + Yamux.
        #[arg(long, default_value = "disabled", value_parser = ["disabled", "peers", "lan", "dht", "relay"])]
        sync: String,
        /// The database id, shared by every replica (with --sync).
        #[arg(long)]
        db_id: Option<String>,
        /// A file holding the database secret (at least 16 bytes), shared by every
        /// replica (with --sync). Keep it private: it admits a server to the network.
        #[arg(long)]
        secret_file: Option<PathBuf>,
        /// Where replication listens, e.g. /ip4/0.0.0.0/tcp/4801 (repeatable).
        #[arg(long = "listen")]
        listen: Vec<String>,
        /// A server to replicate with, e.g. /ip4/192.168.1.7/tcp/4801 (repeatable).
        #[arg(long = "peer")]
        peers: Vec<String>,
        /// How far ahead of this machine's clock a replicated write's timestamp may be
        /// (seconds): one further ahead waits until the clock catches up, so a replica
        /// with a fast clock cannot win every conflict [default: 60].
        #[arg(long, value_name = "SECONDS")]
        max_clock_skew: Option<u64>,
    },
    /// Check that a server is up and measure one round trip.
    Ping {
        /// Server name.
        #[arg(long, default_value = "default")]
        name: String,
    },
    /// Write a record: a JSON value, or raw bytes from a file.
    Put {
        /// Server name.
        #[arg(long, default_value = "default")]
        name: String,
        /// Key (UTF-8, at most 1024 bytes).
        key: String,
        /// JSON value (validated by the server).
        #[arg(required_unless_present = "bytes_file", conflicts_with = "bytes_file")]
        json: Option<String>,
        /// Store this file's bytes as a raw-bytes value instead.
        #[arg(long)]
        bytes_file: Option<PathBuf>,
        /// Store this embedding with the record, as a JSON array of numbers, e.g.
        /// '[0.1, 0.7, -0.2]' (every vector of a database has the same dimension).
        #[arg(long)]
        vector: Option<String>,
    },
    /// Print a record's value (a missing key exits 1).
    Get {
        /// Server name.
        #[arg(long, default_value = "default")]
        name: String,
        /// Key.
        key: String,
    },
    /// Delete a record.
    Delete {
        /// Server name.
        #[arg(long, default_value = "default")]
        name: String,
        /// Key.
        key: String,
    },
    /// List records in key order, one JSON object per line.
    List {
        /// Server name.
        #[arg(long, default_value = "default")]
        name: String,
        /// Only keys starting with this.
        #[arg(long, default_value = "")]
        prefix: String,
        /// At most this many records.
        #[arg(long)]
        limit: Option<u64>,
        /// Only JSON records whose field equals a value: 'PATH = JSON', e.g.
        /// '$.type = "enemy"' or '$.hp = 3' (fast with `ringbase index create PATH`).
        #[arg(long = "where", value_name = "PATH = JSON")]
        filter: Option<String>,
    },
    /// Follow every committed change under a prefix, in commit order, one JSON object
    /// per line (seq, txn, key, kind, deleted, version; the value with --values), until
    /// interrupted.
    Watch {
        /// Server name.
        #[arg(long, default_value = "default")]
        name: String,
        /// Only keys starting with this.
        #[arg(long, default_value = "")]
        prefix: String,
        /// Resume after this change sequence number (from the server's change log).
        #[arg(long)]
        since: Option<u64>,
        /// Include the values.
        #[arg(long)]
        values: bool,
        /// Stop after this many changes.
        #[arg(long)]
        count: Option<u64>,
    },
    /// Full-text search over the string values of JSON records; one JSON object per hit
    /// (key, score, snippet), best first.
    Search {
        /// Server name.
        #[arg(long, default_value = "default")]
        name: String,
        /// Words to find (all of them).
        text: String,
        /// At most this many hits [default: the server's, 20].
        #[arg(long)]
        limit: Option<u32>,
    },
    /// The records whose vectors are nearest to a vector (cosine similarity), best
    /// first, one JSON object per line: key, score, and with --values the record.
    Vsearch {
        /// Server name.
        #[arg(long, default_value = "default")]
        name: String,
        /// The query vector, as a JSON array of numbers.
        vector: String,
        #[command(flatten)]
        search: SearchFlags,
    },
    /// The records nearest in meaning to a text, best first: the server embeds the
    /// text with its embedding model (`serve --embed-model DIR`).
    SearchText {
        /// Server name.
        #[arg(long, default_value = "default")]
        name: String,
        /// The query text.
        text: String,
        #[command(flatten)]
        search: SearchFlags,
    },
    /// Turn the full-text index on or off (off by default; on costs write throughput).
    Fulltext {
        /// Server name.
        #[arg(long, default_value = "default")]
        name: String,
        /// on or off
        #[arg(value_parser = ["on", "off"])]
        state: String,
    },
    /// Manage indexes on JSON fields.
    Index {
        /// Server name.
        #[arg(long, global = true, default_value = "default")]
        name: String,
        #[command(subcommand)]
        cmd: IndexCmd,
    },
    /// Run one read-only SQL statement over the `records` view (key, kind, value: JSON
    /// text, bytes: raw values, updated_at, hlc, replica, seq) and print the rows.
    Query {
        /// Server name.
        #[arg(long, default_value = "default")]
        name: String,
        /// The statement, e.g. "SELECT key FROM records WHERE json_extract(value, '$.type') = ?".
        sql: String,
        /// Positional parameters as a JSON array (strings, numbers, null, {"blob": "HEX"}).
        #[arg(long)]
        params: Option<String>,
        /// Output: one JSON object per row, or an aligned table.
        #[arg(long, value_enum, default_value = "json")]
        format: cli::QueryFormat,
        /// At most this many rows [default: the server's, 1000].
        #[arg(long)]
        max_rows: Option<u32>,
        /// Time budget in milliseconds [default: the server's, 2000].
        #[arg(long)]
        timeout_ms: Option<u64>,
    },
    /// Server status as JSON.
    Status {
        /// Server name.
        #[arg(long, default_value = "default")]
        name: String,
    },
    /// Replication peers, one JSON line each: peer id, writes it is behind and ahead,
    /// its version vector as last heard (exits 1 if the server does not replicate).
    Peers {
        /// Server name.
        #[arg(long, default_value = "default")]
        name: String,
    },
    /// Run a relay for replicas that cannot reach each other directly (`serve --sync
    /// relay --peer ADDRESS`): it keeps their reservations and discovery records and
    /// forwards their end-to-end encrypted connections. It holds no database and no
    /// secret. Prints each address to give replicas, one per line, then runs until
    /// stopped.
    Relay {
        /// Where to listen, e.g. /ip4/0.0.0.0/tcp/4802 (repeatable).
        #[arg(long = "listen", required = true)]
        listen: Vec<String>,
        /// An address replicas reach the relay at, if not a listening one (behind
        /// NAT, or when listening on 0.0.0.0) (repeatable).
        #[arg(long = "external")]
        external: Vec<String>,
        /// The relay's key file (made if missing), so its peer id survives restarts
        /// [default: a new identity each start].
        #[arg(long)]
        key_file: Option<PathBuf>,
        /// Most circuits open at once.
        #[arg(long, default_value_t = 1024)]
        max_circuits: usize,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    match args.cmd {
        Cmd::Serve {
            name,
            data_dir,
            max_sessions,
            allow_uids,
            change_log,
            watch_max_lag,
            hnsw_m,
            hnsw_ef_construction,
            hnsw_ef,
            embed_model,
            embed_fields,
            embed_max_tokens,
            sync,
            db_id,
            secret_file,
            listen,
            peers,
            max_clock_skew,
        } => {
            let sync =
                match sync_options(&sync, db_id, secret_file, &listen, &peers, max_clock_skew) {
                    Ok(s) => s,
                    Err(e) => {
                        eprintln!("ringbase: {e}");
                        return ExitCode::from(2);
                    }
                };
            let embed = match embed_model {
                None => None,
                Some(dir) => match load_embedder(&dir, &embed_fields, embed_max_tokens) {
                    Ok(e) => Some(e),
                    Err(e) => {
                        eprintln!("ringbase: {e}");
                        return ExitCode::from(2);
                    }
                },
            };
            let config = EngineConfig {
                feed: FeedLimits {
                    log_changes: change_log.max(1),
                    max_lag: watch_max_lag.max(1),
                    ..FeedLimits::default()
                },
                vectors: VectorConfig {
                    graph: GraphParams {
                        m: usize::from(hnsw_m),
                        ef_construction: hnsw_ef_construction.max(1),
                    },
                    ef_search: hnsw_ef.max(1),
                    ..VectorConfig::default()
                },
                embed,
                sync,
            };
            serve(name, data_dir, max_sessions, allow_uids, config)
        }
        Cmd::Ping { name } => cli::ping(&name),
        Cmd::Put {
            name,
            key,
            json,
            bytes_file,
            vector,
        } => cli::put(
            &name,
            &key,
            json.as_deref(),
            bytes_file.as_deref(),
            vector.as_deref(),
        ),
        Cmd::Get { name, key } => cli::get(&name, &key),
        Cmd::Delete { name, key } => cli::delete(&name, &key),
        Cmd::List {
            name,
            prefix,
            limit,
            filter,
        } => cli::list(&name, &prefix, limit, filter.as_deref()),
        Cmd::Watch {
            name,
            prefix,
            since,
            values,
            count,
        } => cli::watch(&name, &prefix, since, values, count),
        Cmd::Search { name, text, limit } => cli::search(&name, &text, limit.unwrap_or(0)),
        Cmd::Vsearch {
            name,
            vector,
            search,
        } => cli::vsearch(&name, &vector, &search.options()),
        Cmd::SearchText { name, text, search } => cli::search_text(&name, &text, &search.options()),
        Cmd::Fulltext { name, state } => cli::fulltext(&name, state == "on"),
        Cmd::Index { name, cmd } => match cmd {
            IndexCmd::Create { path } => cli::index_create(&name, &path),
            IndexCmd::Drop { path } => cli::index_drop(&name, &path),
            IndexCmd::List => cli::index_list(&name),
        },
        Cmd::Query {
            name,
            sql,
            params,
            format,
            max_rows,
            timeout_ms,
        } => cli::query(
            &name,
            &sql,
            params.as_deref(),
            format,
            ringbase_client::QueryOptions {
                max_rows: max_rows.unwrap_or(0),
                timeout: std::time::Duration::from_millis(timeout_ms.unwrap_or(0)),
            },
        ),
        Cmd::Status { name } => cli::status(&name),
        Cmd::Peers { name } => cli::peers(&name),
        Cmd::Relay {
            listen,
            external,
            key_file,
            max_circuits,
        } => relay(&listen, &external, key_file, max_circuits),
    }
}

/// `$RINGBASE_DATA_DIR`, else `$XDG_DATA_HOME/ringbase/NAME`, else
/// `~/.local/share/ringbase/NAME`, else `./ringbase-data/NAME`.
fn default_data_dir(name: &str) -> PathBuf {
    if let Some(d) = std::env::var_os("RINGBASE_DATA_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("ringbase").join(name);
    }
    if let Some(h) = std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(h).join(".local/share/ringbase").join(name);
    }
    PathBuf::from("ringbase-data").join(name)
}

/// The replication settings of `serve`'s flags (`None`: disabled).
fn sync_options(
    mode: &str,
    db_id: Option<String>,
    secret_file: Option<PathBuf>,
    listen: &[String],
    peers: &[String],
    max_clock_skew: Option<u64>,
) -> Result<Option<SyncOptions>, String> {
    if mode == "disabled" {
        if db_id.is_some()
            || secret_file.is_some()
            || !listen.is_empty()
            || !peers.is_empty()
            || max_clock_skew.is_some()
        {
            return Err(
                "--db-id, --secret-file, --listen, --peer and --max-clock-skew need --sync peers|lan|dht|relay"
                    .into(),
            );
        }
        return Ok(None);
    }
    let mode: SyncMode = mode.parse()?;
    let db_id = db_id.ok_or("--sync needs --db-id")?;
    let path = secret_file.ok_or("--sync needs --secret-file")?;
    let listen = multiaddrs(listen, "--listen")?;
    let peers = multiaddrs(peers, "--peer")?;
    let secret = std::fs::read(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let secret = secret.trim_ascii_end().to_vec();
    // The same check the engine makes, before the database is opened.
    ringbase_server::sync::net::derive_keys(&secret, &db_id)?;
    match mode {
        SyncMode::Peers if peers.is_empty() && listen.is_empty() => {
            return Err("--sync peers needs --peer ADDRESS or --listen ADDRESS".into())
        }
        SyncMode::Dht if peers.is_empty() && listen.is_empty() => {
            return Err(
                "--sync dht needs bootstrap nodes (--peer ADDRESS) or --listen ADDRESS to be one"
                    .into(),
            )
        }
        SyncMode::Relay if peers.is_empty() => {
            return Err("--sync relay needs the relay's address: --peer ADDRESS".into())
        }
        SyncMode::Relay if !listen.is_empty() => {
            return Err("--sync relay listens through its relays: drop --listen".into())
        }
        _ => {}
    }
    Ok(Some(SyncOptions {
        mode,
        db_id,
        secret,
        listen,
        peers,
        key_file: None,
        config: SyncConfig {
            max_drift_ms: max_clock_skew.map_or(SyncConfig::default().max_drift_ms, |s| {
                s.saturating_mul(1000)
            }),
            ..SyncConfig::default()
        },
    }))
}

fn relay(
    listen: &[String],
    external: &[String],
    key_file: Option<PathBuf>,
    max_circuits: usize,
) -> ExitCode {
    let opts = match (
        multiaddrs(listen, "--listen"),
        multiaddrs(external, "--external"),
    ) {
        (Ok(listen), Ok(external)) => RelayOptions {
            listen,
            external,
            key_file,
            max_circuits: max_circuits.max(1),
        },
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("ringbase: {e}");
            return ExitCode::from(2);
        }
    };
    let run = ringbase_server::sync::transport::run_relay(opts, |addr| {
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{addr}");
        let _ = out.flush();
    });
    match run {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ringbase: relay: {e}");
            ExitCode::from(1)
        }
    }
}

fn multiaddrs(addrs: &[String], flag: &str) -> Result<Vec<libp2p::Multiaddr>, String> {
    addrs
        .iter()
        .map(|a| {
            a.parse::<libp2p::Multiaddr>()
                .map_err(|e| format!("{flag} {a:?}: {e} (write it like /ip4/127.0.0.1/tcp/4801)"))
        })
        .collect()
}

/// The embedding model in `dir`, reading `fields` of each record (all strings if
/// none).
fn load_embedder(dir: &Path, fields: &[String], max_tokens: usize) -> Result<AutoEmbed, String> {
    let fields = if fields.is_empty() {
        TextFields::AllStrings
    } else {
        TextFields::Paths(
            fields
                .iter()
                .map(|f| JsonPath::parse(f.trim()).map_err(|e| format!("--embed-fields: {e}")))
                .collect::<Result<_, _>>()?,
        )
    };
    let started = std::time::Instant::now();
    let model = OnnxEmbedder::load(dir, max_tokens).map_err(|e| e.to_string())?;
    eprintln!(
        "ringbase: embedding model {} loaded in {} ms ({} dimensions, {} nodes computed at load)",
        model.name(),
        started.elapsed().as_millis(),
        model.dim(),
        model.folded_at_load()
    );
    Ok(AutoEmbed {
        embedder: Arc::new(model),
        fields,
    })
}

fn serve(
    name: String,
    data_dir: Option<PathBuf>,
    max_sessions: usize,
    allow_uids: Vec<u32>,
    config: EngineConfig,
) -> ExitCode {
    // Block SIGINT/SIGTERM in every thread (threads inherit the mask) and take them
    // synchronously with sigwait below, so shutdown runs as ordinary code.
    let set = signal_set();
    // SAFETY: `set` is an initialised sigset_t; pthread_sigmask only reads it.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };

    let data_dir = data_dir.unwrap_or_else(|| default_data_dir(&name));
    let engine = match Engine::open_with(data_dir.clone(), config) {
        Ok(e) => Arc::new(e),
        Err(e) => {
            eprintln!(
                "ringbase: cannot open the database in {}: {e}",
                data_dir.display()
            );
            return ExitCode::from(1);
        }
    };
    let mut config = ServerConfig::new(&name);
    config.max_sessions = max_sessions;
    config.allowed_uids = allow_uids;
    let server = match Server::start(config, Arc::clone(&engine)) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ringbase: {e}");
            return ExitCode::from(1);
        }
    };
    // Readiness line: tools and tests wait for it.
    println!(
        "ringbase: serving {name:?} on {} (data dir {})",
        server.socket_path().display(),
        data_dir.display()
    );
    let mut sig: libc::c_int = 0;
    // SAFETY: sigwait reads `set` and writes the signal number into `sig`.
    unsafe { libc::sigwait(&set, &mut sig) };
    eprintln!("ringbase: signal {sig}, shutting down");
    server.shutdown();
    engine.shutdown();
    eprintln!("ringbase: stopped");
    ExitCode::SUCCESS
}

fn signal_set() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise and modify the set we own.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        set
    }
}
