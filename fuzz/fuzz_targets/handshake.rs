//! Handshake records and segment headers from an untrusted peer: never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringbase_protocol::handshake::{Hello, Welcome};
use ringbase_protocol::layout::read_header;

fuzz_target!(|data: &[u8]| {
    let _ = Hello::decode(data);
    let _ = Hello::peek_version(data);
    let _ = Welcome::message_len(data);
    let _ = Welcome::decode(data);
    let len = data.len() as u64;
    let _ = read_header(data, len);
    let _ = read_header(data, u64::MAX);
});
