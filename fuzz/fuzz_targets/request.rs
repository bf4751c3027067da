//! A client's request frame, as the server sees it: arbitrary bytes copied into an
//! aligned buffer must be rejected by validation or decode to a request.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringbase_protocol::message::{access_request, to_owned_request};

fuzz_target!(|data: &[u8]| {
    let mut buf = rkyv::util::AlignedVec::<16>::new();
    buf.extend_from_slice(data);
    if let Ok(req) = access_request(&buf) {
        let _ = to_owned_request(req);
    }
});
