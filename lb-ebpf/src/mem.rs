//! Zeroing and writing without the BPF backend's memset: it compiles an array's zeroing to a
//! call to compiler-builtins' byte loop (four to six instructions a byte, plus the call), where
//! volatile stores stay inline. Used by the DNS answer; the SYN path's struct defaults still
//! make such calls (a generic word-zeroing `T` was turned back into a memset by the optimizer).
use core::{mem::MaybeUninit, ptr};

use lb_common::{DNS_NAME_MAX, DnsName};

/// Room for a DNS name on an 8-byte boundary (`zero_name`).
#[repr(C, align(8))]
pub struct NameSlot(DnsName);

/// Zeroes `slot` a word at a time, in place, and hands out the name in it. (A zeroed value
/// returned and copied is a memset again: the optimizer sees the zeros through the copy.)
#[inline(always)]
pub fn zero_name(slot: &mut MaybeUninit<NameSlot>) -> &mut DnsName {
    let p = slot.as_mut_ptr().cast::<u64>();
    let mut i = 0;
    while i < DNS_NAME_MAX / 8 {
        // SAFETY: within the slot, which is 8-aligned and DNS_NAME_MAX bytes long.
        unsafe { ptr::write_volatile(p.add(i), 0) };
        i += 1;
    }
    // SAFETY: every byte written; any bytes make a DnsName.
    unsafe { &mut slot.assume_init_mut().0 }
}

/// Writes `bytes` at `to` one at a time, inline (an array literal's zeros, written whole,
/// become a memset call).
///
/// # Safety
/// `N` bytes at `to` writable.
#[inline(always)]
pub unsafe fn write_bytes<const N: usize>(to: *mut [u8; N], bytes: [u8; N]) {
    let to = to.cast::<u8>();
    let mut k = 0;
    while k < N {
        // SAFETY: within the N bytes the caller vouches for.
        unsafe { ptr::write_volatile(to.add(k), bytes[k]) };
        k += 1;
    }
}
