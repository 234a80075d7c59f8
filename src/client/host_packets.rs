//! What the client does to the packets of its TUN device besides routing them:
//! it lowers the TCP MSS so that a segment fits in one cell, and refuses a packet
//! that no known exit would carry the way an exit refusing it would.

use crate::proto::addr;
use crate::proto::framing::Carrier;
use crate::proto::ip;

/// Lowers the MSS of a TCP SYN (either direction) so that segments fit in one cell
/// of `carrier`: its payload less the IPv4 (20) or IPv6 (40) header and the TCP
/// header (20). 1,208 and 1,188 in DATA cells; 1,204 and 1,184 in the VDATA cells of
/// a virtual circuit.
pub fn clamp_mss(pkt: &mut [u8], carrier: Carrier) {
    let headers = if pkt.first().is_some_and(|b| b >> 4 == 6) {
        60
    } else {
        40
    };
    let mss = u16::try_from(carrier.capacity() - headers).unwrap_or(u16::MAX);
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
