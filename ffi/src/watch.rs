//! Change feeds: follow every committed change under a key prefix through the
//! session's event ring.

use std::ffi::{c_char, c_int, c_void};
use std::ptr::null;
use std::time::Duration;

use ::ringbase_client::WatchEvent;

use crate::error::{Failure, RINGBASE_E_AGAIN};
use crate::handle::{enter, handle, key as key_arg, kind_code, out, out_opt, ringbase_client};

/// `ringbase_event.type`: a committed change.
pub const RINGBASE_EVENT_CHANGE: c_int = 1;
/// `ringbase_event.type`: the watch fell too far behind and has ended after the change
/// `seq`; call `ringbase_watch` with `since = seq` to go on without missing anything.
pub const RINGBASE_EVENT_OVERFLOW: c_int = 2;

/// One event of a change feed (`ringbase_next_event`).
///
/// For `RINGBASE_EVENT_CHANGE` every field is set; for `RINGBASE_EVENT_OVERFLOW` only
/// `type` and `seq` (the last change received), the rest is 0 / NULL. `key` and `value`
/// belong to the client handle and stay valid until the next call on it.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ringbase_event {
    /// `RINGBASE_EVENT_CHANGE` or `RINGBASE_EVENT_OVERFLOW`.
    pub r#type: c_int,
    /// Change sequence number (commit order; every change has the next one).
    pub seq: u64,
    /// The `seq` of the first change of this change's transaction (a batch's changes
    /// share it and arrive in a row).
    pub txn: u64,
    /// The key: `key_len` bytes followed by a NUL byte.
    pub key: *const c_char,
    /// Length of `key` in bytes.
    pub key_len: usize,
    /// `RINGBASE_JSON` or `RINGBASE_BYTES` (for a delete: of the record it removed).
    pub kind: c_int,
    /// 1 for a delete, else 0.
    pub deleted: c_int,
    /// The new value if the watch asked for values (`with_values`), else NULL.
    pub value: *const c_void,
    /// Length of `value` in bytes.
    pub value_len: usize,
    /// 1 if the watch asked for values but this one was too large to send (read it
    /// with `ringbase_get`), else 0.
    pub value_omitted: c_int,
    /// The write's version: hybrid logical clock.
    pub hlc: u64,
    /// The write's version: replica id.
    pub replica: [u8; 16],
    /// The write's version: the replica's sequence number.
    pub replica_seq: u64,
    /// Wall-clock time of the write, unix milliseconds.
    pub updated_at_ms: u64,
}

/// Starts following every committed change (by any process) to keys under `prefix`
/// (`prefix_len` bytes of UTF-8; NULL or empty = every key), in commit order; read the
/// changes with `ringbase_next_event`. `since` >= 0 resumes after that change sequence
/// number from the server's change log (an older cursor than the log holds fails with
/// `RINGBASE_E_EXPIRED`: re-read what you follow, then watch with `since` < 0); `since`
/// < 0 starts from now. `with_values` != 0 includes each new value. One watch per
/// client: a new one replaces the last. `*head` (if `head` is not NULL) is the newest
/// change sequence number when the watch started.
///
/// Errors: `RINGBASE_E_INVALID` (`c` NULL, `prefix` NULL with a non-zero length),
/// `RINGBASE_E_INVALID_KEY` (not UTF-8), `RINGBASE_E_EXPIRED`,
/// `RINGBASE_E_BAD_REQUEST` (`since` ahead of the newest change),
/// `RINGBASE_E_DISCONNECTED`.
///
/// Threads: the thread using `c`.
///
/// # Safety
///
/// `c` is NULL or a live handle; `prefix` points at `prefix_len` readable bytes (or is
/// NULL with length 0); `head` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn ringbase_watch(
    c: *mut ringbase_client,
    prefix: *const c_char,
    prefix_len: usize,
    since: i64,
    with_values: c_int,
    head: *mut u64,
) -> c_int {
    // SAFETY: `c` is NULL or a live handle (caller's contract).
    let h = unsafe { handle(c) };
    enter(h, |st| {
        // SAFETY: `prefix_len` readable bytes (caller's contract).
        let prefix = unsafe { key_arg(prefix, prefix_len, "prefix") }?;
        let since = u64::try_from(since).ok();
        let start = st.settle()?.watch(prefix, since, with_values != 0)?;
        // SAFETY: NULL or writable (caller's contract).
        if let Some(head) = unsafe { out_opt(head) } {
            *head = start.head;
        }
        Ok(())
    })
}

/// Stops the client's watch (a no-op without one).
///
/// Errors: `RINGBASE_E_INVALID` (`c` NULL), `RINGBASE_E_DISCONNECTED`.
///
/// Threads: the thread using `c`.
///
/// # Safety
///
/// `c` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn ringbase_unwatch(c: *mut ringbase_client) -> c_int {
    // SAFETY: `c` is NULL or a live handle (caller's contract).
    let h = unsafe { handle(c) };
    enter(h, |st| {
        st.settle()?.unwatch()?;
        Ok(())
    })
}

/// The next event of the client's watch into `*ev`, waiting at most `timeout_ms`
/// milliseconds: 0 does not wait (for a frame loop), a negative value waits as long as
/// it takes. Spins briefly, then sleeps: no CPU while nothing happens.
///
/// Errors: `RINGBASE_E_AGAIN` (no event within the time), `RINGBASE_E_INVALID` (`c` or
/// `ev` NULL, no watch active), `RINGBASE_E_DISCONNECTED`.
///
/// Threads: the thread using `c`.
///
/// # Safety
///
/// `c` is NULL or a live handle; `ev` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn ringbase_next_event(
    c: *mut ringbase_client,
    ev: *mut ringbase_event,
    timeout_ms: c_int,
) -> c_int {
    // SAFETY: `c` is NULL or a live handle (caller's contract).
    let h = unsafe { handle(c) };
    enter(h, |st| {
        // SAFETY: NULL or writable (caller's contract).
        let ev = unsafe { out(ev, "ev") }?;
        let client = st.client()?;
        let next = match timeout_ms {
            0 => client.try_event()?,
            t if t < 0 => client.next_event(None)?,
            t => client.next_event(Some(Duration::from_millis(t as u64)))?,
        };
        let Some(next) = next else {
            return Err(Failure::new(RINGBASE_E_AGAIN, "no event yet"));
        };
        *ev = ringbase_event {
            r#type: RINGBASE_EVENT_OVERFLOW,
            seq: 0,
            txn: 0,
            key: null(),
            key_len: 0,
            kind: 0,
            deleted: 0,
            value: null(),
            value_len: 0,
            value_omitted: 0,
            hlc: 0,
            replica: [0; 16],
            replica_seq: 0,
            updated_at_ms: 0,
        };
        match next {
            WatchEvent::Overflow { last_seq } => ev.seq = last_seq,
            WatchEvent::Change(ch) => {
                st.out_event_key.clear();
                st.out_event_key.extend_from_slice(ch.key.as_bytes());
                st.out_event_key.push(0);
                ev.r#type = RINGBASE_EVENT_CHANGE;
                ev.seq = ch.seq;
                ev.txn = ch.txn;
                ev.key = st.out_event_key.as_ptr() as *const c_char;
                ev.key_len = ch.key.len();
                ev.kind = kind_code(ch.kind);
                ev.deleted = c_int::from(ch.deleted);
                ev.value_omitted = c_int::from(ch.value_omitted);
                if let Some(v) = ch.value {
                    st.out_event_value = v;
                    ev.value = st.out_event_value.as_ptr() as *const c_void;
                    ev.value_len = st.out_event_value.len();
                }
                ev.hlc = ch.version.hlc;
                ev.replica = ch.version.replica;
                ev.replica_seq = ch.version.seq;
                ev.updated_at_ms = ch.updated_at_ms;
            }
        }
        Ok(())
    })
}
