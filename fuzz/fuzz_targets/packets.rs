//! Every parser and rewriter of IP packets, on the fuzzer's bytes: what the exit does
//! with a client's packet (policy, NAT, MSS clamp, ICMP refusals) and with a packet
//! from the internet, and what the client does to packets it reads from `anon0`. The
//! first byte picks the path; none may panic, and a packet the exit forwards or
//! answers keeps within the size it was given or the largest ICMP answer.
#![no_main]

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Mutex;
use std::time::Instant;

use anonnet::client::host_packets as client_packets;
use anonnet::exit::nat;
use anonnet::exit::policy::ExitPolicy;
use anonnet::exit::{Exit, ExitSettings, Verdict};
use anonnet::node::CircuitId;
use anonnet::proto::framing::Carrier;
use anonnet::proto::ip;
use libfuzzer_sys::fuzz_target;

/// One exit for the whole run, so that its flow and circuit tables fill up as in a
/// long-lived gateway.
static EXIT: Mutex<Option<Exit>> = Mutex::new(None);

fn exit() -> Exit {
    let policy = ExitPolicy::new(
        &["reject *:25".to_string()],
        &[IpAddr::V4(Ipv4Addr::new(198, 18, 4, 2))],
    )
    .expect("policy");
    Exit::new(ExitSettings {
        pool4: "100.96.0.0/29".parse().expect("pool4"),
        pool6: "fd00:96::/125".parse().expect("pool6"),
        policy,
        max_flows: 16,
        max_pps: 1000,
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let mut pkt = rest.to_vec();
    let mut answer = Vec::new();
    match which % 6 {
        0 | 1 => {
            let mut guard = EXIT.lock().unwrap_or_else(|e| e.into_inner());
            let exit = guard.get_or_insert_with(exit);
            if which % 6 == 0 {
                let circuit = CircuitId(u64::from(which >> 3));
                match exit.from_circuit(Instant::now(), circuit, &mut pkt, &mut answer) {
                    Verdict::Forward => assert_eq!(pkt.len(), rest.len()),
                    Verdict::Answer => assert!(answer.len() <= 1280),
                    Verdict::Drop => {}
                }
                if which & 0x80 != 0 {
                    if let Some(closed) = exit.close(Instant::now(), circuit) {
                        exit.release(closed);
                    }
                }
            } else {
                let _ = exit.from_tun(&mut pkt);
            }
        }
        2 => {
            let _ = ip::summarize(&pkt);
            let _ = nat::set_src(&mut pkt, IpAddr::V4(Ipv4Addr::new(100, 96, 0, 1)));
            let _ = nat::set_dst(&mut pkt, "fd00:96::1".parse().expect("addr"));
        }
        3 => {
            let _ = ip::clamp_mss(&mut pkt, 1000);
            assert_eq!(pkt.len(), rest.len());
        }
        4 => {
            let _ =
                ip::icmp_prohibited(&pkt, IpAddr::V4(Ipv4Addr::new(198, 18, 4, 2)), &mut answer);
        }
        _ => {
            let carrier = if which & 0x80 == 0 {
                Carrier::Data
            } else {
                Carrier::VData
            };
            client_packets::clamp_mss(&mut pkt, carrier);
            let _ = client_packets::refusal(&pkt, &mut answer);
        }
    }
});
