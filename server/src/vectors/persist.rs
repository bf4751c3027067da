//! The graph on disk: saved at shutdown, loaded at the next start when it matches
//! storage, so a restart need not rebuild it.
//!
//! A save writes a new directory `vectors.new/` next to the database: hnsw_rs's dump of
//! the graph (`graph.hnsw.graph`, `graph.hnsw.data`), the key and liveness of every
//! point (`keys.bin`), and last `manifest` — the format, the graph's dimension and
//! settings, the change sequence number the saved state reflects, and the length and
//! FNV-1a hash of each file. Every file is fsynced, then the directory replaces
//! `vectors/` by rename (and the data dir is fsynced): a crash leaves either the old
//! save or the new one, never a mix.
//!
//! A load happens only if the manifest is complete, its change sequence number is the
//! store's (no write since the save: after a `kill -9` with writes after the last save,
//! the numbers differ and the graph is rebuilt from storage), its settings are this
//! server's, and every file has the length and hash the manifest says. hnsw_rs's loader
//! trusts its input (it panics, exits the process or reads out of bounds on a damaged
//! file), so it only ever sees files that are byte for byte the ones a save wrote;
//! anything else — missing, truncated, flipped bits — means a rebuild, never a crash.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::graph::{Graph, GraphParams};

/// The saved graph's directory, under the data dir.
pub const DIR: &str = "vectors";
/// Format of the save (bump when any file's layout changes).
const FORMAT: u32 = 1;
/// hnsw_rs's dump format depends on its version: a save by another one is not loaded.
const HNSW_RS: &str = "hnsw_rs 0.3.5";
/// The dump's basename.
const BASENAME: &str = "graph";
/// The files of a save that the manifest covers.
const FILES: [&str; 3] = ["graph.hnsw.graph", "graph.hnsw.data", "keys.bin"];

/// What a save holds besides the graph.
#[derive(Debug, Clone, PartialEq)]
pub struct Saved {
    /// The change sequence number whose state the save reflects.
    pub change_seq: u64,
    /// Key -> id of the live points.
    pub live: HashMap<Arc<str>, u32>,
    /// Dead points.
    pub dead: usize,
}

/// FNV-1a 64 of a file's bytes, and its length.
fn hash_file(path: &Path) -> io::Result<(u64, u64)> {
    let mut r = BufReader::with_capacity(1 << 20, File::open(path)?);
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut len = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            return Ok((h, len));
        }
        for &b in &buf[..n] {
            h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
        len += n as u64;
    }
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// The manifest's text.
fn manifest(
    dim: usize,
    params: GraphParams,
    points: usize,
    change_seq: u64,
    dir: &Path,
) -> io::Result<String> {
    let mut m = format!(
        "format {FORMAT}\nlibrary {HNSW_RS}\ndim {dim}\nm {}\nef_construction {}\npoints {points}\nchange_seq {change_seq}\n",
        params.m, params.ef_construction
    );
    for f in FILES {
        let (hash, len) = hash_file(&dir.join(f))?;
        m += &format!("file {f} {len} {hash:016x}\n");
    }
    m += "end\n";
    Ok(m)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Saves `graph` (no insert may run meanwhile) with its liveness, as the state after
/// change `change_seq`, under `data_dir` (see the module docs).
pub fn save(
    data_dir: &Path,
    graph: &Graph,
    params: GraphParams,
    live: &HashMap<Arc<str>, u32>,
    change_seq: u64,
) -> io::Result<()> {
    let tmp = data_dir.join(format!("{DIR}.new"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    std::fs::create_dir(&tmp)?;
    graph.dump(&tmp, BASENAME).map_err(invalid)?;
    let keys = graph.keys();
    {
        let mut w = BufWriter::new(File::create(tmp.join("keys.bin"))?);
        w.write_all(&(keys.len() as u64).to_le_bytes())?;
        for (id, key) in keys.iter().enumerate() {
            let is_live = live.get(key) == Some(&(id as u32));
            w.write_all(&(key.len() as u32).to_le_bytes())?;
            w.write_all(key.as_bytes())?;
            w.write_all(&[u8::from(is_live)])?;
        }
        w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    }
    for f in &FILES[..2] {
        File::open(tmp.join(f))?.sync_all()?;
    }
    let text = manifest(graph.dim(), params, keys.len(), change_seq, &tmp)?;
    {
        let mut f = File::create(tmp.join("manifest"))?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
    }
    sync_dir(&tmp)?;
    let dest = data_dir.join(DIR);
    if dest.exists() {
        std::fs::remove_dir_all(&dest)?;
    }
    std::fs::rename(&tmp, &dest)?;
    sync_dir(data_dir)
}

/// Loads the save under `data_dir` if it matches: the store's `change_seq`, this
/// server's dimension `dim` and `params`, and every file as the manifest describes it.
/// `Ok(None)` if there is no save; `Err` says why one was not used.
pub fn load(
    data_dir: &Path,
    dim: usize,
    params: GraphParams,
    change_seq: u64,
) -> io::Result<Option<(Graph, Saved)>> {
    let dir: PathBuf = data_dir.join(DIR);
    let text = match std::fs::read_to_string(dir.join("manifest")) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let points: usize = text
        .lines()
        .find_map(|l| l.strip_prefix("points "))
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| invalid("manifest without a point count"))?;
    let want = manifest(dim, params, points, change_seq, &dir)
        .map_err(|e| invalid(format!("checking the saved files: {e}")))?;
    if text != want {
        return Err(invalid(
            "the saved graph does not match the database (written before later changes, \
             with other settings, or damaged)",
        ));
    }
    // The files are byte for byte those the save wrote: hnsw_rs may read them.
    let graph = std::panic::catch_unwind(|| Graph::load(&dir, BASENAME, dim))
        .map_err(|_| invalid("hnsw_rs failed on the saved graph"))?
        .map_err(invalid)?;
    let mut r = BufReader::new(File::open(dir.join("keys.bin"))?);
    let mut u64b = [0u8; 8];
    r.read_exact(&mut u64b)?;
    let n = u64::from_le_bytes(u64b) as usize;
    if n != points || graph.point_count() != points {
        return Err(invalid("the saved keys do not match the saved graph"));
    }
    let mut keys = Vec::with_capacity(n);
    let mut live = HashMap::with_capacity(n);
    let mut dead = 0;
    for id in 0..n {
        let mut u32b = [0u8; 4];
        r.read_exact(&mut u32b)?;
        let mut k = vec![0u8; u32::from_le_bytes(u32b) as usize];
        r.read_exact(&mut k)?;
        let key: Arc<str> = String::from_utf8(k)
            .map_err(|_| invalid("a saved key is not UTF-8"))?
            .into();
        let mut flag = [0u8; 1];
        r.read_exact(&mut flag)?;
        if flag[0] == 1 {
            live.insert(Arc::clone(&key), id as u32);
        } else {
            dead += 1;
        }
        keys.push(key);
    }
    graph.set_keys(keys);
    Ok(Some((
        graph,
        Saved {
            change_seq,
            live,
            dead,
        },
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vectors::normalized;

    fn temp_dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "ringbase-persist-{name}-{}-{:?}",
            std::process::id(),
            std::time::SystemTime::now()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn graph_of(n: u32) -> (Graph, HashMap<Arc<str>, u32>) {
        let g = Graph::new(GraphParams::default(), 3, 16);
        let mut live = HashMap::new();
        for i in 0..n {
            let key: Arc<str> = format!("k{i}").into();
            let id = g.insert(
                Arc::clone(&key),
                &normalized(&[i as f32 + 1.0, 1.0, (i % 3) as f32]),
            );
            if i % 4 != 0 {
                live.insert(key, id);
            }
        }
        (g, live)
    }

    #[test]
    fn a_save_loads_only_when_it_matches_and_whole() {
        let dir = temp_dir("roundtrip");
        let p = GraphParams::default();
        assert!(load(&dir, 3, p, 7).unwrap().is_none(), "no save yet");
        let (g, live) = graph_of(50);
        save(&dir, &g, p, &live, 7).unwrap();
        let (g2, saved) = load(&dir, 3, p, 7).unwrap().expect("loads");
        assert_eq!(
            (g2.len(), saved.live.clone(), saved.dead),
            (50, live.clone(), 13)
        );
        let q = normalized(&[5.0, 1.0, 1.0]);
        assert_eq!(g2.search(&q, 5, 32, ""), g.search(&q, 5, 32, ""));
        // Other changes since, other settings or dimension: not loaded.
        assert!(load(&dir, 3, p, 8).is_err());
        assert!(load(&dir, 4, p, 7).is_err());
        assert!(load(&dir, 3, GraphParams { m: 8, ..p }, 7).is_err());
        // Every file damaged in turn (one byte, or cut short): not loaded, no panic.
        for f in FILES {
            let path = dir.join(DIR).join(f);
            let good = std::fs::read(&path).unwrap();
            let mut bad = good.clone();
            let mid = bad.len() / 2;
            bad[mid] ^= 0x40;
            std::fs::write(&path, &bad).unwrap();
            assert!(load(&dir, 3, p, 7).is_err(), "{f} with a flipped bit");
            std::fs::write(&path, &good[..good.len() - 1]).unwrap();
            assert!(load(&dir, 3, p, 7).is_err(), "{f} cut short");
            std::fs::write(&path, &good).unwrap();
        }
        std::fs::remove_file(dir.join(DIR).join("manifest")).unwrap();
        assert!(
            load(&dir, 3, p, 7).unwrap().is_none(),
            "no manifest: no save"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
