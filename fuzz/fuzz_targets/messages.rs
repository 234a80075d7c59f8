//! Every parser of bytes from the network, on the fuzzer's bytes: the link header,
//! link control, the LINK_INIT payload, BUILD and cell bodies, DATA payload framing
//! and reassembly, discovery messages, gateway descriptors, virtual circuits' JOIN,
//! JOINED and VDATA payloads and their reorder buffer. The first byte picks the
//! parser; none may panic (a reassembled packet, and the reorder buffer, also stay
//! within their bounds).
#![no_main]

use std::time::{Duration, Instant};

use anonnet::discovery::Message;
use anonnet::proto::descriptor::Descriptor;
use anonnet::proto::framing::{Carrier, Reassembler};
use anonnet::proto::reorder::{Reorder, REORDER_BYTES};
use anonnet::proto::vc::{split_vdata, Join, Joined};
use anonnet::proto::wire::{Body, BuildPayload, CtrlHeader, CtrlKind, Header, LinkInitReserved};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    match which % 11 {
        0 => {
            let _ = Header::parse(rest);
        }
        1 => {
            let _ = CtrlHeader::parse(rest);
        }
        2 => {
            let _ = LinkInitReserved::parse(rest);
        }
        3 => {
            let _ = CtrlKind::parse(rest.first().copied().unwrap_or(0), rest.len());
        }
        4 => {
            let _ = BuildPayload::parse(rest);
        }
        5 => {
            let _ = Body::parse(rest);
        }
        6 => {
            // Payloads of one circuit in a row: the input split at each 0xFE byte;
            // DATA or VDATA payloads as the first byte is even or odd.
            let carrier = match rest.first().map(|b| b % 2) {
                Some(1) => Carrier::VData,
                _ => Carrier::Data,
            };
            let mut r = Reassembler::new(carrier);
            let now = Instant::now();
            for chunk in rest.split(|&b| b == 0xFE) {
                let _ = carrier.classify(chunk);
                let mut buf = chunk.to_vec();
                if let Ok(Some(p)) = r.complete(now, &mut buf) {
                    assert!(p.len() <= carrier.max_packet());
                }
            }
        }
        7 => {
            let _ = Message::parse(rest);
        }
        8 => {
            let _ = Join::parse(rest);
            let _ = Joined::parse(rest);
        }
        9 => {
            // VDATA payloads of one virtual circuit in a row, split at each 0xFE
            // byte; the byte after a chunk's sequence number advances the clock.
            let mut r = Reorder::default();
            let (mut now, mut out) = (Instant::now(), Vec::new());
            for chunk in rest.split(|&b| b == 0xFE) {
                let Ok((seq, payload)) = split_vdata(chunk) else {
                    continue;
                };
                now += Duration::from_millis(u64::from(payload.first().copied().unwrap_or(0)));
                let _ = r.push(now, seq, payload.to_vec(), &mut out);
                r.poll(now, &mut out);
                assert!(r.held_bytes() <= REORDER_BYTES);
            }
        }
        _ => {
            let _ = Descriptor::verify(rest, 1_800_000_000);
        }
    }
});
