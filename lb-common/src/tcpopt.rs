//! Finding the TCP timestamp option (RFC 7323) among a segment's options, for the data plane
//! (reading the packet) and for host tests (reading a slice) alike: one walk, never past
//! `len`, and nothing found when a length is malformed, so nothing unparsed is ever rewritten.

/// Option kinds and the timestamp option's length.
const OPT_EOL: u8 = 0;
const OPT_NOP: u8 = 1;
const OPT_TS: u8 = 8;
const OPT_TS_LEN: u8 = 10;

/// Most option bytes a TCP header can carry (data offset 15 words, minus the fixed 20).
pub const MAX_OPTIONS_LEN: usize = 40;

/// Options looked at before giving up. Every stack puts the timestamp among its first few
/// options (Linux, the BSDs and Windows send at most eight, NOPs included, before it); a
/// longer walk costs the BPF verifier more than it could ever find. A list with the option
/// further on counts as having none: a SYN's flow then keeps the TIME_WAIT reservation.
pub const MAX_STEPS: usize = 16;

/// The first four option bytes of the layout every mainstream stack sends on data segments
/// (NOP, NOP, timestamp kind and length), as they read from the wire into a native u32: a
/// caller that sees them (and `len` of at least 12) has the option at offset 2, as the walk
/// would find it.
pub const NOP_NOP_TS: u32 = u32::from_ne_bytes([OPT_NOP, OPT_NOP, OPT_TS, OPT_TS_LEN]);

/// Offset of TSval inside the timestamp option; TSecr follows it.
pub const TSVAL_OFF: usize = 2;
pub const TSECR_OFF: usize = 6;

/// Returns the offset (from the first option byte) of the timestamp option, if the `len`
/// option bytes hold a well-formed one before any malformed option. `byte(i)` reads option
/// byte `i`; `None` means it is not there (a short packet), which also ends the walk.
#[inline(always)]
pub fn find_timestamp(len: usize, byte: impl Fn(usize) -> Option<u8>) -> Option<usize> {
    let len = if len > MAX_OPTIONS_LEN {
        MAX_OPTIONS_LEN
    } else {
        len
    };
    // The layout every mainstream stack sends on data segments: NOP, NOP, timestamp.
    if len >= 12
        && byte(0)? == OPT_NOP
        && byte(1)? == OPT_NOP
        && byte(2)? == OPT_TS
        && byte(3)? == OPT_TS_LEN
    {
        return Some(2);
    }
    let mut i = 0;
    for _ in 0..MAX_STEPS {
        if i >= len {
            return None;
        }
        let kind = byte(i)?;
        if kind == OPT_EOL {
            return None;
        }
        if kind == OPT_NOP {
            i += 1;
            continue;
        }
        if i + 1 >= len {
            return None;
        }
        let olen = byte(i + 1)? as usize;
        if olen < 2 || i + olen > len {
            return None;
        }
        if kind == OPT_TS {
            return (olen == OPT_TS_LEN as usize).then_some(i);
        }
        i += olen;
    }
    None
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec;

    use super::*;

    fn find(opts: &[u8]) -> Option<usize> {
        find_timestamp(opts.len(), |i| opts.get(i).copied())
    }

    const TS: [u8; 10] = [8, 10, 1, 2, 3, 4, 5, 6, 7, 8];

    #[test]
    fn finds_the_option_in_the_layouts_stacks_send() {
        // Linux data segment: NOP NOP TS.
        let mut data = vec![1, 1];
        data.extend(TS);
        assert_eq!(find(&data), Some(2));
        // Linux SYN: MSS, SACK permitted, TS, NOP, window scale.
        let mut syn = vec![2, 4, 5, 0xb4, 4, 2];
        syn.extend(TS);
        syn.extend([1, 3, 3, 7]);
        assert_eq!(find(&syn), Some(6));
        // Unaligned: window scale right before it.
        let mut odd = vec![3, 3, 7];
        odd.extend(TS);
        odd.extend([0, 0, 0]);
        assert_eq!(find(&odd), Some(3));
    }

    #[test]
    fn finds_nothing_where_nothing_well_formed_is() {
        assert_eq!(find(&[]), None);
        assert_eq!(find(&[2, 4, 5, 0xb4]), None, "no timestamp");
        assert_eq!(find(&[0, 1, 1, 1]), None, "end of list first");
        let mut after_eol = vec![0, 1];
        after_eol.extend(TS);
        assert_eq!(find(&after_eol), None, "after the end of the list");
        assert_eq!(find(&[2, 0, 8, 10]), None, "zero length never advances");
        assert_eq!(find(&[2, 1, 8, 10]), None, "length 1 is malformed");
        assert_eq!(find(&[2, 40, 8, 10]), None, "length past the options");
        assert_eq!(find(&[8, 10, 1, 2, 3, 4]), None, "cut short");
        assert_eq!(find(&[1, 1, 1, 8]), None, "kind without a length byte");
        let mut wrong_len = vec![8, 9];
        wrong_len.extend([0; 8]);
        assert_eq!(find(&wrong_len), None, "timestamp of the wrong length");
        // The reader says the bytes are not there (a truncated packet): nothing found.
        assert_eq!(find_timestamp(12, |i| (i < 4).then_some(1)), None);
    }

    #[test]
    fn gives_up_after_max_steps() {
        let mut late = vec![1; MAX_STEPS];
        late.extend(TS);
        late.extend([0, 0]);
        assert_eq!(find(&late), None);
        let mut in_reach = vec![1; MAX_STEPS - 1];
        in_reach.extend(TS);
        in_reach.extend([0, 0, 0]);
        assert_eq!(find(&in_reach), Some(MAX_STEPS - 1));
    }

    #[test]
    fn never_reads_past_the_options() {
        for len in 0..=60 {
            let opts = [1u8; 60];
            let _ = find_timestamp(len, |i| {
                assert!(i < len.min(MAX_OPTIONS_LEN), "read {i} of {len}");
                opts.get(i).copied()
            });
        }
        // Every two-byte pattern, so every length and kind meets the walk.
        for a in 0..=255u8 {
            for b in 0..=255u8 {
                let opts = [a, b, a, b, b, a, 8, 10, 0, 0, 0, 0, 0, 0, 0, 0];
                if let Some(at) = find(&opts) {
                    assert!(at + 10 <= opts.len());
                    assert_eq!(&opts[at..at + 2], &[8, 10]);
                }
            }
        }
    }
}
