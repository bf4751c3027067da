//! The replication wire format: what two servers send each other (one message per
//! libp2p request), as rkyv archives validated before use. The meaning of each
//! message is in the server's `sync::protocol`.

use rkyv::rancor;
use rkyv::util::AlignedVec;
use rkyv::{Archive, Deserialize, Serialize};

pub use crate::message::Runs;
use crate::message::{ValueKind, Version};

/// Version of the replication wire format (part of the libp2p protocol name).
pub const SYNC_WIRE_VERSION: u32 = 1;

/// Most bytes of one encoded message.
pub const MAX_SYNC_MESSAGE: usize = 64 << 20;

/// A version of a record.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[rkyv(derive(Debug), attr(allow(missing_docs)))]
pub struct WireVersion {
    /// The key.
    pub key: String,
    /// The value (empty for a tombstone).
    pub value: Vec<u8>,
    /// The value's kind (for a tombstone, the kind of the record it removed).
    pub kind: ValueKind,
    /// A tombstone.
    pub deleted: bool,
    /// The record's vector.
    pub vector: Option<Vec<f32>>,
    /// The version its writer gave it.
    pub version: Version,
    /// When its writer made it, unix milliseconds.
    pub updated_at_ms: u64,
}

/// One replication message.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[rkyv(derive(Debug), attr(allow(missing_docs)))]
pub enum SyncMessage {
    /// The sender's version vector; `answer`: reply with yours.
    Have {
        /// What the sender has delivered.
        vv: Vec<Runs>,
        /// Reply with a `Have` whatever the vectors.
        answer: bool,
    },
    /// Versions the receiver lacked, of writer `origin`, seqs in `(after, upto]`.
    Page {
        /// The writer.
        origin: [u8; 16],
        /// Start of the range (exclusive).
        after: u64,
        /// End of the range (inclusive).
        upto: u64,
        /// What the sender has delivered of `origin` in the range.
        covered: Vec<[u64; 2]>,
        /// The versions.
        versions: Vec<WireVersion>,
        /// The answer was cut here: ask again for the rest.
        more: bool,
    },
    /// A new local write of the sender.
    Push(WireVersion),
}

/// Encodes a message.
pub fn encode_sync(msg: &SyncMessage) -> Result<AlignedVec<16>, rancor::Error> {
    let mut buf = AlignedVec::<16>::new();
    rkyv::api::high::to_bytes_in::<_, rancor::Error>(msg, &mut buf)?;
    Ok(buf)
}

/// Decodes a message from untrusted bytes: validated (bounds, tags, UTF-8) before it
/// is read, then copied out.
pub fn decode_sync(bytes: &[u8]) -> Result<SyncMessage, rancor::Error> {
    if bytes.len() > MAX_SYNC_MESSAGE {
        return Err(<rancor::Error as rancor::Source>::new(TooLarge(
            bytes.len(),
        )));
    }
    // rkyv reads archives in place only from aligned memory: copy when need be.
    let mut aligned = AlignedVec::<16>::new();
    aligned.extend_from_slice(bytes);
    let archived = rkyv::access::<ArchivedSyncMessage, rancor::Error>(&aligned)?;
    rkyv::deserialize::<SyncMessage, rancor::Error>(archived)
}

/// A message over [`MAX_SYNC_MESSAGE`].
#[derive(Debug)]
struct TooLarge(usize);

impl std::fmt::Display for TooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "a sync message of {} bytes (max {MAX_SYNC_MESSAGE})",
            self.0
        )
    }
}

impl std::error::Error for TooLarge {}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_version() -> impl Strategy<Value = WireVersion> {
        (
            ".{0,12}",
            proptest::collection::vec(any::<u8>(), 0..40),
            any::<bool>(),
            proptest::option::of(proptest::collection::vec(-1e3f32..1e3, 1..8)),
            any::<u64>(),
            any::<[u8; 16]>(),
            any::<u64>(),
        )
            .prop_map(
                |(key, value, deleted, vector, hlc, replica, seq)| WireVersion {
                    key,
                    value,
                    kind: ValueKind::Json,
                    deleted,
                    vector,
                    version: Version { hlc, replica, seq },
                    updated_at_ms: hlc >> 16,
                },
            )
    }

    fn arb_message() -> impl Strategy<Value = SyncMessage> {
        prop_oneof![
            (
                proptest::collection::vec(
                    (
                        any::<[u8; 16]>(),
                        proptest::collection::vec(any::<[u64; 2]>(), 0..4)
                    )
                        .prop_map(|(replica, runs)| Runs { replica, runs }),
                    0..4
                ),
                any::<bool>()
            )
                .prop_map(|(vv, answer)| SyncMessage::Have { vv, answer }),
            (
                any::<[u8; 16]>(),
                any::<u64>(),
                any::<u64>(),
                proptest::collection::vec(any::<[u64; 2]>(), 0..4),
                proptest::collection::vec(arb_version(), 0..4),
                any::<bool>()
            )
                .prop_map(|(origin, after, upto, covered, versions, more)| {
                    SyncMessage::Page {
                        origin,
                        after,
                        upto,
                        covered,
                        versions,
                        more,
                    }
                }),
            arb_version().prop_map(SyncMessage::Push),
        ]
    }

    proptest! {
        /// Every message survives the round trip; any corruption of its bytes is
        /// refused or decodes to some message, never a panic.
        #[test]
        fn round_trip_and_corruption(msg in arb_message(), flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4)) {
            let bytes = encode_sync(&msg).unwrap();
            prop_assert_eq!(decode_sync(&bytes).unwrap(), msg);
            let mut bad = bytes.to_vec();
            for (i, b) in flips {
                let n = bad.len();
                bad[i.index(n)] ^= b;
            }
            let _ = decode_sync(&bad);
            let _ = decode_sync(&bad[..bad.len() / 2]);
        }
    }
}
