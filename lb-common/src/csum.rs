//! Internet checksum arithmetic (RFC 1071) and its incremental update (RFC 1624, eqn. 3).
//! Words are taken in the byte order they have in memory; the one's-complement sum is
//! order-independent, so a checksum read raw from a packet is updated with raw values.

/// Folds a 64-bit one's-complement accumulator to 16 bits.
#[inline(always)]
pub const fn fold(mut sum: u64) -> u16 {
    // Four folds always suffice for a 64-bit accumulator; a fixed count keeps the verifier happy.
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// `HC' = ~(~HC + ~m + m')` for one 32-bit field (an IPv4 address).
#[inline(always)]
pub const fn update32(check: u16, old: u32, new: u32) -> u16 {
    let not_old = !old;
    let sum = (!check) as u64
        + (not_old >> 16) as u64
        + (not_old & 0xffff) as u64
        + (new >> 16) as u64
        + (new & 0xffff) as u64;
    !fold(sum)
}

/// `HC' = ~(~HC + ~m + m')` for one 16-bit field (a port).
#[inline(always)]
pub const fn update16(check: u16, old: u16, new: u16) -> u16 {
    let sum = (!check) as u64 + (!old) as u64 + new as u64;
    !fold(sum)
}

/// The change a rewrite makes to a checksum, gathered over every field it changes (RFC 1624:
/// the one's-complement sum of `~m + m'` per field) and applied once. Its `wsum` is the form
/// `bpf_l4_csum_replace` takes with a field size of 0, so TC updates a checksum with one
/// helper call per kind (pseudo-header or not) instead of one per field.
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
pub struct Diff(u64);

impl Diff {
    pub const NONE: Self = Self(0);

    /// A 32-bit field (an address, a timestamp) changed from `old` to `new`; nothing if equal.
    #[inline(always)]
    pub const fn add32(self, old: u32, new: u32) -> Self {
        if old == new {
            return self;
        }
        Self(self.0 + (!old) as u64 + new as u64)
    }

    /// A 16-bit field (a port, the TTL/protocol word) changed from `old` to `new`.
    #[inline(always)]
    pub const fn add16(self, old: u16, new: u16) -> Self {
        if old == new {
            return self;
        }
        Self(self.0 + (!old) as u64 + new as u64)
    }

    pub const fn plus(self, other: Self) -> Self {
        Self(self.0 + other.0)
    }

    pub const fn is_none(self) -> bool {
        self.0 == 0
    }

    /// The difference as a 32-bit partial sum (the kernel's `__wsum`).
    #[inline(always)]
    pub const fn wsum(self) -> u32 {
        fold(self.0) as u32
    }

    /// `check` (raw, complete) updated by this difference.
    #[inline(always)]
    pub const fn apply(self, check: u16) -> u16 {
        if self.0 == 0 {
            return check;
        }
        !fold((!check) as u64 + self.0)
    }
}

/// The kernel's update of a complete checksum field by a whole difference
/// (`csum_replace_by_diff`, what `bpf_l4_csum_replace` does with size 0 to an skb whose
/// checksum is not partial): `csum_fold(csum_add(diff, ~csum_unfold(check)))`, 32-bit adds.
#[inline(always)]
pub const fn replace_by_diff(check: u16, diff: u32) -> u16 {
    let (s, carry) = diff.overflowing_add(!(check as u32));
    !fold(s.wrapping_add(carry as u32) as u64)
}

/// The kernel's update of a partial checksum field (the pseudo-header's sum, which the
/// device or `skb_checksum_help` completes) by a pseudo-header difference:
/// `~csum_fold(csum_add(csum_unfold(check), diff))`.
#[inline(always)]
pub const fn partial_by_diff(check: u16, diff: u32) -> u16 {
    let (s, carry) = (check as u32).overflowing_add(diff);
    fold(s.wrapping_add(carry as u32) as u64)
}

/// How an skb carried its TCP/UDP checksum, as far as a rewrite of the segment's own fields
/// cares: `Complete` (complete, or covered by `skb->csum`, or not yet checked: the field
/// takes every change) or `Partial` (the field holds the pseudo-header's sum only).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Summed {
    Complete,
    Partial,
}

/// Tells, from what `bpf_l4_csum_replace` with `BPF_F_PSEUDO_HDR` did to the field (`before`
/// to `after`, by the pseudo-header difference `diff`), which of the kernel's two updates it
/// applied: a complete checksum loses the difference, a partial one gains it. `None` when
/// the two cannot be told apart (a difference of 0 in one's complement, where both leave the
/// field as it was) or when `after` is neither: the caller then asks the kernel again.
#[inline(always)]
pub const fn summed_by_pseudo_update(before: u16, diff: u32, after: u16) -> Option<Summed> {
    let complete = replace_by_diff(before, diff);
    let partial = partial_by_diff(before, diff);
    if same(complete, partial) {
        None
    } else if same(after, complete) {
        Some(Summed::Complete)
    } else if same(after, partial) {
        Some(Summed::Partial)
    } else {
        None
    }
}

/// Equal in one's complement, where 0x0000 and 0xffff are both zero.
#[inline(always)]
const fn same(a: u16, b: u16) -> bool {
    a == b || (a == 0 && b == 0xffff) || (a == 0xffff && b == 0)
}

/// The raw value that stands for a 32-bit field at an odd offset from the checksummed data's
/// start in `update32` (a TCP option need not be aligned): such a field's bytes fall into
/// the 16-bit words the other way round, so each half is seen byte-swapped.
#[inline(always)]
pub const fn at_odd_offset(raw: u32) -> u32 {
    ((raw & 0x00ff_00ff) << 8) | ((raw >> 8) & 0x00ff_00ff)
}

/// UDP over IPv4 may carry no checksum (0): it must stay 0. A computed 0 is sent as 0xffff.
#[inline(always)]
pub const fn udp_fixup(old_check: u16, new_check: u16) -> u16 {
    if old_check == 0 {
        0
    } else if new_check == 0 {
        0xffff
    } else {
        new_check
    }
}

/// One's-complement sum of `data` as 16-bit words in memory order (odd tail padded with zero).
pub fn sum(data: &[u8], initial: u64) -> u64 {
    let mut acc = initial;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u16::from_ne_bytes([c[0], c[1]]) as u64;
    }
    if let [last] = chunks.remainder() {
        acc += u16::from_ne_bytes([*last, 0]) as u64;
    }
    acc
}

/// Full checksum of `data` (e.g. an IPv4 header with its checksum field zeroed), in memory order.
pub fn checksum(data: &[u8]) -> u16 {
    !fold(sum(data, 0))
}

/// Full TCP/UDP checksum over IPv4: pseudo-header plus `segment` (its checksum field zeroed).
/// `src`/`dst` are the addresses' bytes as in the packet.
pub fn l4_checksum(src: [u8; 4], dst: [u8; 4], proto: u8, segment: &[u8]) -> u16 {
    let len = segment.len() as u16;
    let mut pseudo = [0u8; 12];
    pseudo[..4].copy_from_slice(&src);
    pseudo[4..8].copy_from_slice(&dst);
    pseudo[9] = proto;
    pseudo[10..12].copy_from_slice(&len.to_be_bytes());
    !fold(sum(segment, sum(&pseudo, 0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// xorshift: deterministic inputs without a dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    fn ip_header(rng: &mut Rng) -> [u8; 20] {
        let mut h = [0u8; 20];
        for b in h.iter_mut() {
            *b = rng.next() as u8;
        }
        h[0] = 0x45;
        h[10] = 0;
        h[11] = 0;
        let c = checksum(&h);
        h[10..12].copy_from_slice(&c.to_ne_bytes());
        h
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3 example bytes: sum 0xddf2 (big-endian words), checksum 0x220d.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(u16::from_be(checksum(&data)), 0x220d);
    }

    #[test]
    fn valid_header_sums_to_zero() {
        let mut rng = Rng(0x1234_5678_9abc_def1);
        for _ in 0..1000 {
            let h = ip_header(&mut rng);
            assert_eq!(checksum(&h), 0, "header {h:02x?}");
        }
    }

    #[test]
    fn incremental_address_update_matches_recompute() {
        let mut rng = Rng(0xdead_beef_cafe_f00d);
        for _ in 0..100_000 {
            let mut h = ip_header(&mut rng);
            let old = u32::from_ne_bytes(h[16..20].try_into().unwrap());
            let new = rng.next() as u32;
            let check = u16::from_ne_bytes([h[10], h[11]]);
            h[16..20].copy_from_slice(&new.to_ne_bytes());
            let inc = update32(check, old, new);
            h[10] = 0;
            h[11] = 0;
            assert_eq!(inc, checksum(&h), "old {old:#x} new {new:#x}");
        }
    }

    #[test]
    fn incremental_port_update_matches_recompute() {
        let mut rng = Rng(42);
        for _ in 0..100_000 {
            let mut seg = [0u8; 28];
            for b in seg.iter_mut() {
                *b = rng.next() as u8;
            }
            let (src, dst) = ([10, 0, 0, 1], [10, 0, 0, 2]);
            seg[16] = 0;
            seg[17] = 0;
            let check = l4_checksum(src, dst, 6, &seg);
            seg[16..18].copy_from_slice(&check.to_ne_bytes());
            let old = u16::from_ne_bytes([seg[2], seg[3]]);
            let new = rng.next() as u16;
            seg[2..4].copy_from_slice(&new.to_ne_bytes());
            let inc = update16(check, old, new);
            seg[16] = 0;
            seg[17] = 0;
            assert_eq!(inc, l4_checksum(src, dst, 6, &seg));
        }
    }

    #[test]
    fn pseudo_header_address_update_matches_recompute() {
        let mut rng = Rng(7);
        for _ in 0..10_000 {
            let mut seg = [0u8; 33];
            for b in seg.iter_mut() {
                *b = rng.next() as u8;
            }
            seg[6] = 0;
            seg[7] = 0;
            let src = (rng.next() as u32).to_ne_bytes();
            let dst = (rng.next() as u32).to_ne_bytes();
            let check = l4_checksum(src, dst, 17, &seg);
            let new_dst = (rng.next() as u32).to_ne_bytes();
            let inc = update32(check, u32::from_ne_bytes(dst), u32::from_ne_bytes(new_dst));
            assert_eq!(inc, l4_checksum(src, new_dst, 17, &seg));
        }
    }

    #[test]
    fn one_diff_over_many_fields_matches_a_full_recompute_and_the_kernel() {
        let mut rng = Rng(0x0bad_cafe);
        for _ in 0..100_000 {
            let mut seg = [0u8; 40];
            for b in seg.iter_mut() {
                *b = rng.next() as u8;
            }
            seg[16] = 0;
            seg[17] = 0;
            let src = (rng.next() as u32).to_ne_bytes();
            let dst = (rng.next() as u32).to_ne_bytes();
            let check = l4_checksum(src, dst, 6, &seg);
            // New addresses (pseudo-header), new ports, a new timestamp at an odd offset.
            let (nsrc, ndst) = (
                (rng.next() as u32).to_ne_bytes(),
                (rng.next() as u32).to_ne_bytes(),
            );
            let pseudo = Diff::NONE
                .add32(u32::from_ne_bytes(src), u32::from_ne_bytes(nsrc))
                .add32(u32::from_ne_bytes(dst), u32::from_ne_bytes(ndst));
            let (old_ports, new_ports) = (
                u32::from_ne_bytes(seg[0..4].try_into().unwrap()),
                rng.next() as u32,
            );
            seg[0..4].copy_from_slice(&new_ports.to_ne_bytes());
            let old_ts = u32::from_ne_bytes(seg[25..29].try_into().unwrap());
            let new_ts = rng.next() as u32;
            seg[25..29].copy_from_slice(&new_ts.to_ne_bytes());
            let plain = Diff::NONE
                .add16(old_ports as u16, new_ports as u16)
                .add16((old_ports >> 16) as u16, (new_ports >> 16) as u16)
                .add32(at_odd_offset(old_ts), at_odd_offset(new_ts));
            let want = l4_checksum(nsrc, ndst, 6, &seg);
            assert_eq!(pseudo.plus(plain).apply(check), want);
            let by_kernel = replace_by_diff(replace_by_diff(check, pseudo.wsum()), plain.wsum());
            assert_eq!(by_kernel, want);
        }
        assert_eq!(Diff::NONE.add32(7, 7), Diff::NONE);
        assert_eq!(Diff::NONE.apply(0x1234), 0x1234);
    }

    /// One rewrite as TC's `l4_csum` makes it: the addresses by the kernel's pseudo-header
    /// update (complete or partial, as the skb is), then the segment's own changes applied
    /// directly where the update shows a complete checksum, left out where it shows a
    /// partial one, and left to the kernel where it cannot tell.
    fn tc_rewrite(check: u16, pseudo: Diff, plain: Diff, partial: bool) -> (u16, Option<Summed>) {
        let d = pseudo.wsum();
        let after = if partial {
            partial_by_diff(check, d)
        } else {
            replace_by_diff(check, d)
        };
        let summed = summed_by_pseudo_update(check, d, after);
        let done = match summed {
            Some(Summed::Complete) => replace_by_diff(after, plain.wsum()),
            Some(Summed::Partial) => after,
            None if partial => after,
            None => replace_by_diff(after, plain.wsum()),
        };
        (done, summed)
    }

    #[test]
    fn the_pseudo_header_update_tells_complete_from_partial_checksums() {
        let mut rng = Rng(0x5eed_1234);
        let mut undecided = 0;
        for i in 0..200_000 {
            let mut seg = [0u8; 40];
            for b in seg.iter_mut() {
                *b = rng.next() as u8;
            }
            seg[16] = 0;
            seg[17] = 0;
            let src = (rng.next() as u32).to_ne_bytes();
            let dst = (rng.next() as u32).to_ne_bytes();
            // Every 1000th rewrite keeps the addresses' sum: a difference of 0.
            let (nsrc, ndst) = if i % 1000 == 0 {
                (dst, src)
            } else {
                (
                    (rng.next() as u32).to_ne_bytes(),
                    (rng.next() as u32).to_ne_bytes(),
                )
            };
            let pseudo = Diff::NONE
                .add32(u32::from_ne_bytes(src), u32::from_ne_bytes(nsrc))
                .add32(u32::from_ne_bytes(dst), u32::from_ne_bytes(ndst));
            let old_ports = u32::from_ne_bytes(seg[0..4].try_into().unwrap());
            let new_ports = rng.next() as u32;
            let plain = Diff::NONE
                .add16(old_ports as u16, new_ports as u16)
                .add16((old_ports >> 16) as u16, (new_ports >> 16) as u16);
            let len = (seg.len() as u16).to_be_bytes();
            let pseudo_sum = |s: [u8; 4], d: [u8; 4]| {
                let mut h = [0u8; 12];
                h[..4].copy_from_slice(&s);
                h[4..8].copy_from_slice(&d);
                h[9] = 6;
                h[10..].copy_from_slice(&len);
                sum(&h, 0)
            };
            // Complete: the field holds the whole checksum.
            let complete = l4_checksum(src, dst, 6, &seg);
            // Partial (an offloaded send): the field holds the pseudo-header's sum, which
            // the device, or skb_checksum_help, completes over the segment.
            let partial = fold(pseudo_sum(src, dst));
            seg[0..4].copy_from_slice(&new_ports.to_ne_bytes());
            let want = l4_checksum(nsrc, ndst, 6, &seg);

            let (got, summed) = tc_rewrite(complete, pseudo, plain, false);
            assert_eq!(got, want, "complete, case {i}");
            let (field, summed_partial) = tc_rewrite(partial, pseudo, plain, true);
            assert!(
                same(field, fold(pseudo_sum(nsrc, ndst))),
                "partial field, case {i}"
            );
            seg[16..18].copy_from_slice(&field.to_ne_bytes());
            assert_eq!(checksum(&seg), want, "partial completed, case {i}");

            if i % 1000 == 0 {
                assert_eq!(
                    (summed, summed_partial),
                    (None, None),
                    "difference 0, case {i}"
                );
                undecided += 1;
            } else if summed.is_none() || summed_partial.is_none() {
                // Only a difference of 0 in one's complement leaves it open.
                assert!(same(pseudo.wsum() as u16, 0), "case {i}");
                undecided += 1;
            } else {
                assert_eq!(summed, Some(Summed::Complete), "case {i}");
                assert_eq!(summed_partial, Some(Summed::Partial), "case {i}");
            }
        }
        assert!(undecided < 300, "{undecided} rewrites left to the kernel");
        // A field that is neither of the kernel's results is not guessed at.
        let (c, d) = (0x1234, 0x0101);
        assert_eq!(summed_by_pseudo_update(c, d, 0x4321), None);
        assert!(same(0, 0xffff) && same(0xffff, 0) && !same(1, 0xffff));
    }

    #[test]
    fn udp_zero_checksum_stays_zero() {
        assert_eq!(udp_fixup(0, update32(0, 1, 2)), 0);
    }

    #[test]
    fn update32_at_every_offset_matches_a_full_recompute() {
        let mut data: [u8; 16] = core::array::from_fn(|i| (i as u8).wrapping_mul(37) ^ 0x5a);
        for off in 0..=12 {
            let old = u32::from_ne_bytes(data[off..off + 4].try_into().unwrap());
            let check = checksum(&data);
            let new = old.wrapping_add(0x0123_4567 + off as u32);
            data[off..off + 4].copy_from_slice(&new.to_ne_bytes());
            let (o, n) = if off % 2 == 1 {
                (at_odd_offset(old), at_odd_offset(new))
            } else {
                (old, new)
            };
            assert_eq!(
                update32(check, o, n),
                checksum(&data),
                "field at offset {off}"
            );
        }
        assert_eq!(udp_fixup(0x1234, 0), 0xffff);
        assert_eq!(udp_fixup(0x1234, 0x5678), 0x5678);
    }
}
