//! A replication message from a peer server: validation rejects garbage or yields a
//! message, and an encoded message decodes back to the same bytes (compared as bytes:
//! a vector may hold a NaN, which is not equal to itself).
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringbase_protocol::sync::{decode_sync, encode_sync};

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = decode_sync(data) {
        let again = encode_sync(&msg).expect("encoding a decoded message");
        let back = decode_sync(&again).expect("decoding an encoded message");
        let third = encode_sync(&back).expect("encoding it again");
        assert_eq!(again.as_slice(), third.as_slice());
    }
});
