//! What the shared packet path needs from a hook: bounds-checked access to the bytes and
//! an L4 checksum update. XDP sees raw frames; TC sees skbs whose checksum may be partial.
use crate::parse;
use aya_ebpf::{
    EbpfContext,
    bindings::{__sk_buff, BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, xdp_md},
    helpers::generated::{bpf_skb_load_bytes, bpf_xdp_load_bytes},
    programs::{TcContext, XdpContext},
};
use lb_common::{
    Stat,
    csum::{self, Diff, Summed},
    tcpopt::MAX_OPTIONS_LEN,
};

pub trait Packet: EbpfContext {
    /// The hook hands every packet it passes to the TC program (XDP), which decides what the
    /// stack sees and counts it: a refusal is counted once, there.
    const PASSES_TO_TC: bool;
    fn data(&self) -> usize;
    fn data_end(&self) -> usize;
    /// The packet's whole length, also what the hook may hold outside `data..data_end`.
    fn frame_len(&self) -> usize;
    fn ingress_ifindex(&self) -> u32;
    /// Makes the first `len` bytes directly accessible where the hook may hold them elsewhere.
    fn pull(&mut self, len: u32);
    /// Updates the TCP/UDP checksum at `off` by the changes of a rewrite: `pseudo` those of
    /// pseudo-header fields (the addresses), `plain` those inside the segment (ports, options).
    fn l4_csum(&mut self, off: usize, pseudo: Diff, plain: Diff, udp: bool) -> Result<(), Stat>;
    /// Offset of the TCP timestamp option among the `len` option bytes at `base`, if there
    /// is a well-formed one (`parse::walk_tcp_options`, unbounded for the verifier).
    fn tcp_timestamp(&self, base: usize, len: usize) -> Option<usize>;
    /// Copies the `n` (1 to 40) bytes at `off` into `buf`; false if the packet is shorter.
    fn load_bytes(&self, off: usize, buf: &mut [u8; MAX_OPTIONS_LEN], n: usize) -> bool;
}

// The TCP option walk, one global function per hook: the verifier checks a global function
// once, with unknown arguments, where an inlined walk was checked again on every path that
// reaches a rewrite (with leastconn's call in place, lb_tc went from 657k verified
// instructions to 492k). A function per hook because a global function's context argument
// must have the hook's own type.

/// `parse::walk_tcp_options` for XDP.
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn lb_tcp_options_xdp(ctx: *mut xdp_md, base: u32, len: u32) -> u32 {
    parse::walk_tcp_options(&XdpContext::new(ctx), base, len)
}

/// `parse::walk_tcp_options` for TC.
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn lb_tcp_options_tc(skb: *mut __sk_buff, base: u32, len: u32) -> u32 {
    parse::walk_tcp_options(&TcContext::new(skb), base, len)
}

#[inline(always)]
fn found(at: u32) -> Option<usize> {
    // Bounded for the verifier by the caller (parse::tcp_timestamp).
    (at != parse::NO_TIMESTAMP).then_some(at as usize)
}

/// The one bounds-checked accessor: a pointer to a `T` at `off`, or `None` past the end.
#[inline(always)]
pub fn ptr_at<C: Packet, T>(ctx: &C, off: usize) -> Option<*mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + off + size_of::<T>() > end {
        return None;
    }
    Some((start + off) as *mut T)
}

impl Packet for XdpContext {
    const PASSES_TO_TC: bool = true;
    #[inline(always)]
    fn data(&self) -> usize {
        XdpContext::data(self)
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        XdpContext::data_end(self)
    }
    #[inline(always)]
    fn frame_len(&self) -> usize {
        // Not frags-aware: the frame is one buffer.
        XdpContext::data_end(self) - XdpContext::data(self)
    }
    #[inline(always)]
    fn ingress_ifindex(&self) -> u32 {
        XdpContext::ingress_ifindex(self) as u32
    }
    #[inline(always)]
    fn pull(&mut self, _len: u32) {}
    #[inline(always)]
    fn tcp_timestamp(&self, base: usize, len: usize) -> Option<usize> {
        found(lb_tcp_options_xdp(self.ctx, base as u32, len as u32))
    }
    #[inline(always)]
    fn load_bytes(&self, off: usize, buf: &mut [u8; MAX_OPTIONS_LEN], n: usize) -> bool {
        // SAFETY: `buf` holds at least `n` bytes (the caller bounds n by its size).
        unsafe { bpf_xdp_load_bytes(self.ctx, off as u32, buf.as_mut_ptr().cast(), n as u32) == 0 }
    }

    #[inline(always)]
    fn l4_csum(&mut self, off: usize, pseudo: Diff, plain: Diff, udp: bool) -> Result<(), Stat> {
        // A raw frame always carries a complete checksum, so RFC 1624 applies directly.
        let p: *mut u16 = ptr_at(self, off).ok_or(Stat::ErrRewrite)?;
        // SAFETY: bounds checked by ptr_at.
        let check = unsafe { p.read_unaligned() };
        if udp && check == 0 {
            return Ok(());
        }
        let updated = pseudo.plus(plain).apply(check);
        let updated = if udp {
            csum::udp_fixup(check, updated)
        } else {
            updated
        };
        // SAFETY: bounds checked by ptr_at.
        unsafe { p.write_unaligned(updated) };
        Ok(())
    }
}

impl Packet for TcContext {
    const PASSES_TO_TC: bool = false;
    #[inline(always)]
    fn data(&self) -> usize {
        TcContext::data(self)
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        TcContext::data_end(self)
    }
    #[inline(always)]
    fn frame_len(&self) -> usize {
        // skb->len: the pulled head and whatever stays in fragments.
        self.len() as usize
    }
    #[inline(always)]
    fn ingress_ifindex(&self) -> u32 {
        // SAFETY: reading a field of the context the kernel handed us.
        unsafe { (*self.skb.skb).ifindex }
    }
    #[inline(always)]
    fn pull(&mut self, len: u32) {
        if self.data() + len as usize > self.data_end() {
            // Failure leaves the data short; the bounds checks that follow then pass the packet.
            let _ = self.pull_data(len);
        }
    }
    #[inline(always)]
    fn tcp_timestamp(&self, base: usize, len: usize) -> Option<usize> {
        found(lb_tcp_options_tc(self.skb.skb, base as u32, len as u32))
    }
    #[inline(always)]
    fn load_bytes(&self, off: usize, buf: &mut [u8; MAX_OPTIONS_LEN], n: usize) -> bool {
        // SAFETY: `buf` holds at least `n` bytes (the caller bounds n by its size).
        unsafe {
            bpf_skb_load_bytes(
                self.skb.skb.cast(),
                off as u32,
                buf.as_mut_ptr().cast(),
                n as u32,
            ) == 0
        }
    }

    #[inline(always)]
    fn l4_csum(&mut self, off: usize, pseudo: Diff, plain: Diff, udp: bool) -> Result<(), Stat> {
        // The helper knows whether the skb's checksum is complete, partial (offloaded) or
        // covered by skb->csum, and updates whichever is in force. Size 0 takes a whole
        // difference: one call per kind rather than one per changed field.
        let mm0 = if udp { BPF_F_MARK_MANGLED_0 as u64 } else { 0 };
        if pseudo.is_none() || plain.is_none() {
            if !pseudo.is_none() {
                self.l4_csum_replace(off, 0, pseudo.wsum() as u64, BPF_F_PSEUDO_HDR as u64 | mm0)
                    .map_err(|_| Stat::ErrRewrite)?;
            }
            if !plain.is_none() {
                self.l4_csum_replace(off, 0, plain.wsum() as u64, mm0)
                    .map_err(|_| Stat::ErrRewrite)?;
            }
            return Ok(());
        }
        let before = read_check(self, off)?;
        if udp && before == 0 {
            // A datagram without a checksum keeps none (the helper would leave it too).
            return Ok(());
        }
        self.l4_csum_replace(off, 0, pseudo.wsum() as u64, BPF_F_PSEUDO_HDR as u64 | mm0)
            .map_err(|_| Stat::ErrRewrite)?;
        // A TC program cannot read the skb's ip_summed, but the call above showed it: a
        // complete checksum loses the addresses' difference, a partial one gains it. The
        // segment's own changes (ports, timestamps) then go into a complete field directly
        // and stay out of a partial one, as the helper would do them, without its second
        // call (30 ns of an established packet's 300). Where the call cannot tell, the
        // helper does it.
        let after = read_check(self, off)?;
        match csum::summed_by_pseudo_update(before, pseudo.wsum(), after) {
            Some(Summed::Complete) => {
                let updated = csum::replace_by_diff(after, plain.wsum());
                let updated = if udp {
                    csum::udp_fixup(before, updated)
                } else {
                    updated
                };
                let p: *mut u16 = ptr_at(self, off).ok_or(Stat::ErrRewrite)?;
                // SAFETY: bounds checked by ptr_at; the helper above made it writable.
                unsafe { p.write_unaligned(updated) };
            }
            Some(Summed::Partial) => {}
            None => {
                self.l4_csum_replace(off, 0, plain.wsum() as u64, mm0)
                    .map_err(|_| Stat::ErrRewrite)?;
            }
        }
        Ok(())
    }
}

/// The L4 checksum field at `off`.
#[inline(always)]
fn read_check(ctx: &TcContext, off: usize) -> Result<u16, Stat> {
    let p: *const u16 = ptr_at(ctx, off).ok_or(Stat::ErrRewrite)?;
    // SAFETY: bounds checked by ptr_at.
    Ok(unsafe { p.read_unaligned() })
}
