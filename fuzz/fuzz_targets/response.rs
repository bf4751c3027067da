//! A response frame, as a client sees it: validation rejects garbage or yields a response.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringbase_protocol::message::{access_response, to_owned_response};

fuzz_target!(|data: &[u8]| {
    let mut buf = rkyv::util::AlignedVec::<16>::new();
    buf.extend_from_slice(data);
    if let Ok(resp) = access_response(&buf) {
        let _ = to_owned_response(resp);
    }
});
