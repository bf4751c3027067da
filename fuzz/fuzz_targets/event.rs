//! An event frame (change feed), as a client sees it: validation rejects garbage or
//! yields an event.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringbase_protocol::message::{access_event, to_owned_event};

fuzz_target!(|data: &[u8]| {
    let mut buf = rkyv::util::AlignedVec::<16>::new();
    buf.extend_from_slice(data);
    if let Ok(ev) = access_event(&buf) {
        let _ = to_owned_event(ev);
    }
});
