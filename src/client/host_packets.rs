//! What the client does to the packets of its TUN device besides routing them:
//! it lowers the TCP MSS so that a segment fits in one cell, and refuses a packet
//! that no known exit would carry the way an exit refusing it would.

use crate::proto::addr;
use crate::proto::ip;
use crate::proto::wire::MAX_PAYLOAD;

/// TCP MSS that keeps a segment in one cell: the cell payload less the IPv4 (20)
/// or IPv6 (40) header and the TCP header (20).
const MSS_V4: u16 = (MAX_PAYLOAD - 40) as u16;
const MSS_V6: u16 = (MAX_PAYLOAD - 60) as u16;

/// Lowers the MSS of a TCP SYN (either direction) so that segments fit in one cell.
pub fn clamp_mss(pkt: &mut [u8]) {
    let mss = if pkt.first().is_some_and(|b| b >> 4 == 6) {
        MSS_V6
    } else {
        MSS_V4
    };
    ip::clamp_mss(pkt, mss);
}

/// Writes into `answer` the ICMP "administratively prohibited" for `pkt`, from the
/// exit's tunnel address, and says whether there is one to send (none for packets
/// that are never answered, such as ICMP errors).
pub fn refusal(pkt: &[u8], answer: &mut Vec<u8>) -> bool {
    let Ok(s) = ip::summarize(pkt) else {
        return false;
    };
    ip::icmp_prohibited(pkt, addr::exit_addr(s.dst), answer).is_ok()
}
