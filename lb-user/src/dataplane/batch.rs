//! Reading a whole hash map in a few system calls (`BPF_MAP_LOOKUP_BATCH`, Linux 5.6+). Written
//! here because aya 0.14 has no batch operations: the sweeper read the flow table with two
//! system calls per entry, a fifth of a core at 10,000 new connections a second.
use std::{
    io,
    mem::size_of,
    os::fd::{AsFd as _, AsRawFd as _},
};

use aya::{Pod, maps::MapData};

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
/// Entries asked for per call; a hash bucket holding more makes the kernel ask for room
/// (ENOSPC), and the call is repeated with twice as much.
const CHUNK: u32 = 4096;

/// The `batch` member of the kernel's `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Every (key, value) of a hash or LRU hash map whose entries are `K` → `V`, in a few calls.
/// Entries added or removed meanwhile may or may not be seen, as with key-by-key iteration.
pub fn lookup_all<K: Pod, V: Pod>(map: &MapData) -> io::Result<Vec<(K, V)>> {
    let fd = map.fd().as_fd().as_raw_fd();
    let mut out = Vec::new();
    // The kernel's batch token for hash maps is a bucket index (u32); room for a u64.
    let (mut token_in, mut token_out) = (0u64, 0u64);
    let mut first = true;
    let mut room = CHUNK;
    loop {
        let mut keys: Vec<K> = Vec::with_capacity(room as usize);
        let mut values: Vec<V> = Vec::with_capacity(room as usize);
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { &raw mut token_in as u64 },
            out_batch: &raw mut token_out as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: room,
            map_fd: fd as u32,
            ..BatchAttr::default()
        };
        // SAFETY: the attribute points at buffers of `room` keys and values that outlive the
        // call, and at the two tokens; the kernel writes at most `count` entries.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &raw mut attr,
                size_of::<BatchAttr>(),
            )
        };
        let err = (rc < 0).then(io::Error::last_os_error);
        if err
            .as_ref()
            .is_some_and(|e| e.raw_os_error() == Some(libc::ENOSPC))
        {
            room = room.saturating_mul(2);
            continue;
        }
        let done = match &err {
            None => false,
            Some(e) if e.raw_os_error() == Some(libc::ENOENT) => true,
            Some(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("BPF_MAP_LOOKUP_BATCH: {e}"),
                ));
            }
        };
        let n = (attr.count as usize).min(room as usize);
        // SAFETY: the kernel filled the first `count` entries of both buffers.
        unsafe {
            keys.set_len(n);
            values.set_len(n);
        }
        out.extend(keys.into_iter().zip(values));
        if done {
            return Ok(out);
        }
        token_in = token_out;
        first = false;
    }
}
