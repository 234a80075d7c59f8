//! Ones'-complement checksums, updated incrementally (RFC 1624, equation 3).

use super::be16;

/// Folds a ones'-complement sum to 16 bits.
pub fn fold(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// Adds the big-endian 16-bit words of `bytes` (an odd last byte padded with zero)
/// to `sum`.
pub fn sum_words(sum: u64, bytes: &[u8]) -> u64 {
    let mut chunks = bytes.chunks_exact(2);
    let mut sum = chunks.by_ref().fold(sum, |acc, w| match w {
        &[hi, lo] => acc + u64::from(u16::from_be_bytes([hi, lo])),
        _ => acc,
    });
    if let [last] = chunks.remainder() {
        sum += u64::from(*last) << 8;
    }
    sum
}

/// The ones'-complement difference (`~m + m'` of RFC 1624) made by rewriting bytes
/// of a region covered by a checksum. All checksummed regions here start at an even
/// packet offset, so a byte's place in its 16-bit word follows from the parity of its
/// packet offset.
#[derive(Debug, Clone, Copy, Default)]
pub struct Delta(u64);

impl Delta {
    /// Overwrites `pkt[off..off + new.len()]` with `new` and records the change.
    pub fn replace(&mut self, pkt: &mut [u8], off: usize, new: &[u8]) {
        let Some(region) = pkt.get_mut(off..off + new.len()) else {
            return;
        };
        for (i, (old, &new)) in region.iter_mut().zip(new).enumerate() {
            let shift = if (off + i) % 2 == 0 { 8 } else { 0 };
            self.0 += (u64::from(!*old) << shift) + (u64::from(new) << shift);
            *old = new;
        }
    }

    /// Adds another change to this one.
    pub fn merge(&mut self, other: Delta) {
        self.0 += other.0;
    }
}

/// Applies `change` to the 16-bit checksum at `off` (RFC 1624 equation 3) and records
/// the rewrite of the field in `record`. For UDP (`udp`), a checksum of 0 (none) is
/// left alone and a result of 0 is written as `0xFFFF`.
pub fn adjust_checksum(pkt: &mut [u8], off: usize, change: Delta, udp: bool, record: &mut Delta) {
    let Ok(old) = be16(pkt, off) else {
        return;
    };
    if udp && old == 0 {
        return;
    }
    let mut new = !fold(u64::from(!old) + u64::from(fold(change.0)));
    if udp && new == 0 {
        new = 0xffff;
    }
    record.replace(pkt, off, &new.to_be_bytes());
}
