//! TCP options: lowering the MSS of a SYN.

use super::checksum::{adjust_checksum, Delta};
use super::{be16, byte, parse, PROTO_TCP, TCP_CHECKSUM_OFFSET, TCP_HEADER_LEN};

const TCP_OPTION_END: u8 = 0;
const TCP_OPTION_NOP: u8 = 1;
const TCP_OPTION_MSS: u8 = 2;
const TCP_OPTION_MSS_LEN: usize = 4;

/// If `pkt` is a TCP SYN (v4 or v6, SYN-ACK included) whose MSS option exceeds
/// `max_mss`, lowers it to `max_mss` and fixes the TCP checksum incrementally.
/// Returns true if it changed the packet. A SYN without an MSS option, any other
/// packet, and a SYN with malformed options are left untouched.
pub fn clamp_mss(pkt: &mut [u8], max_mss: u16) -> bool {
    let Ok((layout, summary)) = parse(pkt) else {
        return false;
    };
    if summary.proto != PROTO_TCP || !summary.tcp_syn {
        return false;
    }
    let Ok(data_offset) = byte(pkt, layout.l4 + 12) else {
        return false;
    };
    let options_start = layout.l4 + TCP_HEADER_LEN;
    let options_end = layout.l4 + usize::from(data_offset >> 4) * 4;

    // First pass: the whole option list must be well formed.
    let mut at = options_start;
    loop {
        match next_option(pkt, at, options_end) {
            Err(()) => return false,
            Ok(None) => break,
            Ok(Some((kind, len))) => {
                if kind == TCP_OPTION_MSS && len != TCP_OPTION_MSS_LEN {
                    return false;
                }
                at += len;
            }
        }
    }

    // Second pass: lower every MSS option above the limit.
    let mut change = Delta::default();
    let mut changed = false;
    let mut at = options_start;
    while let Ok(Some((kind, len))) = next_option(pkt, at, options_end) {
        if kind == TCP_OPTION_MSS {
            if let Ok(mss) = be16(pkt, at + 2) {
                if mss > max_mss {
                    change.replace(pkt, at + 2, &max_mss.to_be_bytes());
                    changed = true;
                }
            }
        }
        at += len;
    }
    if changed {
        let mut ignored = Delta::default();
        adjust_checksum(
            pkt,
            layout.l4 + TCP_CHECKSUM_OFFSET,
            change,
            false,
            &mut ignored,
        );
    }
    changed
}

/// Reads the TCP option at `at` within `pkt[..end]`: its kind and total length, or
/// `None` at the end of the list. `Err` if the option is malformed.
fn next_option(pkt: &[u8], at: usize, end: usize) -> Result<Option<(u8, usize)>, ()> {
    if at >= end {
        return Ok(None);
    }
    let kind = byte(pkt, at).map_err(|_| ())?;
    match kind {
        TCP_OPTION_END => Ok(None),
        TCP_OPTION_NOP => Ok(Some((kind, 1))),
        _ => {
            if at + 2 > end {
                return Err(());
            }
            let len = usize::from(byte(pkt, at + 1).map_err(|_| ())?);
            if len < 2 || at + len > end {
                return Err(());
            }
            Ok(Some((kind, len)))
        }
    }
}
