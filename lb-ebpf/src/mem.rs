//! Zeroing and writing without the BPF backend's memset: it compiles an array's zeroing to a
//! call to compiler-builtins' byte loop (four to six instructions a byte, plus the call), where
//! volatile stores stay inline. Used by the DNS answer; the SYN path's struct defaults still
//! make such calls (a generic word-zeroing `T` was turned back into a memset by the optimizer).
use core::{mem::MaybeUninit, ptr};

use lb_common::{DNS_NAME_MAX, DnsName};

/// Words in a DNS name.
pub const NAME_WORDS: usize = DNS_NAME_MAX / 8;

/// Room for a DNS name on an 8-byte boundary, so that it can be read and written a word at a
/// time (`zero_name`, `words_mut`).
#[repr(C, align(8))]
pub struct NameSlot(DnsName);

impl NameSlot {
    #[inline(always)]
    pub fn name(&self) -> &DnsName {
        &self.0
    }

    #[inline(always)]
    pub fn name_mut(&mut self) -> &mut DnsName {
        &mut self.0
    }

    #[inline(always)]
    pub fn words_mut(&mut self) -> &mut [u64; NAME_WORDS] {
        // SAFETY: the slot is 8-aligned and DNS_NAME_MAX bytes long; any words make a DnsName.
        unsafe { &mut *(self as *mut Self).cast() }
    }
}

/// Zeroes `slot` a word at a time, in place, and hands it out. (A zeroed value returned and
/// copied is a memset again: the optimizer sees the zeros through the copy.)
#[inline(always)]
pub fn zero_name(slot: &mut MaybeUninit<NameSlot>) -> &mut NameSlot {
    let p = slot.as_mut_ptr().cast::<u64>();
    let mut i = 0;
    while i < NAME_WORDS {
        // SAFETY: within the slot, which is 8-aligned and DNS_NAME_MAX bytes long.
        unsafe { ptr::write_volatile(p.add(i), 0) };
        i += 1;
    }
    // SAFETY: every byte written; any bytes make a DnsName.
    unsafe { slot.assume_init_mut() }
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
