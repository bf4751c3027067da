//! Between the protocol's messages and their wire form
//! ([`ringbase_protocol::sync`]).

use ringbase_protocol::sync::{Runs, SyncMessage, WireVersion};

use super::merge::RecordVersion;
use super::protocol::Message;
use super::vv::{SeqSet, VersionVector};

/// The wire form of a message.
pub fn to_wire(msg: &Message) -> SyncMessage {
    match msg {
        Message::Have { vv, answer } => SyncMessage::Have {
            vv: vv
                .iter()
                .map(|(r, set)| Runs {
                    replica: *r,
                    runs: runs_of(set),
                })
                .collect(),
            answer: *answer,
        },
        Message::Page {
            origin,
            after,
            upto,
            covered,
            versions,
            more,
        } => SyncMessage::Page {
            origin: *origin,
            after: *after,
            upto: *upto,
            covered: runs_of(covered),
            versions: versions.iter().map(version_to_wire).collect(),
            more: *more,
        },
        Message::Push(v) => SyncMessage::Push(version_to_wire(v)),
    }
}

/// The message of a wire form. Intervals in any order, overlapping or reversed, make
/// a well-formed set (a reversed interval is empty): nothing a peer sends can build an
/// inconsistent one.
pub fn from_wire(msg: SyncMessage) -> Message {
    match msg {
        SyncMessage::Have { vv, answer } => {
            let mut out = VersionVector::new();
            for r in vv {
                let set = out.entry(r.replica);
                for [lo, hi] in r.runs {
                    set.insert_range(lo.max(1), hi);
                }
            }
            Message::Have { vv: out, answer }
        }
        SyncMessage::Page {
            origin,
            after,
            upto,
            covered,
            versions,
            more,
        } => {
            let mut set = SeqSet::new();
            for [lo, hi] in covered {
                set.insert_range(lo.max(1), hi);
            }
            Message::Page {
                origin,
                after,
                upto,
                covered: set,
                versions: versions.into_iter().map(version_from_wire).collect(),
                more,
            }
        }
        SyncMessage::Push(v) => Message::Push(version_from_wire(v)),
    }
}

fn runs_of(set: &SeqSet) -> Vec<[u64; 2]> {
    set.runs().iter().map(|&(lo, hi)| [lo, hi]).collect()
}

fn version_to_wire(v: &RecordVersion) -> WireVersion {
    WireVersion {
        key: v.key.clone(),
        value: v.value.clone(),
        kind: v.kind,
        deleted: v.deleted,
        vector: v.vector.clone(),
        version: v.version,
        updated_at_ms: v.updated_at_ms,
    }
}

fn version_from_wire(v: WireVersion) -> RecordVersion {
    RecordVersion {
        key: v.key,
        value: v.value,
        kind: v.kind,
        deleted: v.deleted,
        vector: v.vector,
        version: v.version,
        updated_at_ms: v.updated_at_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{ValueKind, Version};

    #[test]
    fn messages_survive_the_wire() {
        let mut vv = VersionVector::new();
        vv.entry([1; 16]).insert_range(1, 9);
        vv.insert([2; 16], 4);
        let v = RecordVersion {
            key: "k".into(),
            value: b"{}".to_vec(),
            kind: ValueKind::Json,
            deleted: false,
            vector: Some(vec![1.0, 2.0]),
            version: Version {
                hlc: 5,
                replica: [1; 16],
                seq: 3,
            },
            updated_at_ms: 0,
        };
        let mut covered = SeqSet::new();
        covered.insert_range(2, 7);
        for m in [
            Message::Have { vv, answer: true },
            Message::Page {
                origin: [1; 16],
                after: 1,
                upto: 7,
                covered,
                versions: vec![v.clone()],
                more: true,
            },
            Message::Push(v),
        ] {
            let bytes = ringbase_protocol::sync::encode_sync(&to_wire(&m)).unwrap();
            let back = from_wire(ringbase_protocol::sync::decode_sync(&bytes).unwrap());
            assert_eq!(back, m);
        }
        // A hostile set: reversed, overlapping, zero: still a well-formed set.
        let m = from_wire(SyncMessage::Have {
            vv: vec![Runs {
                replica: [3; 16],
                runs: vec![[9, 2], [0, 3], [2, 5], [u64::MAX, u64::MAX]],
            }],
            answer: false,
        });
        let Message::Have { vv, .. } = m else {
            unreachable!()
        };
        assert_eq!(
            vv.get(&[3; 16]).unwrap().runs(),
            &[(1, 5), (u64::MAX, u64::MAX)]
        );
    }
}
