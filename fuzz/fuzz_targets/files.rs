//! Every parser of what anonnet reads from files or the command line, on the fuzzer's
//! bytes: client and gateway configs, identity files, guard state, the directory
//! cache, the handshake replay file, exit policy rules, port summaries and public
//! keys. The first byte picks the parser; none may panic.
#![no_main]

use anonnet::client::path::Guards;
use anonnet::config::{parse_client, parse_gateway};
use anonnet::discovery::{Store, StoreLimits};
use anonnet::exit::policy::Rule;
use anonnet::proto::identity::{Identity, PublicKey};
use anonnet::proto::ports::PortSummary;
use anonnet::runtime::replay;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    match which % 5 {
        0 => {
            let _ = Store::decode_cache(rest, 1_800_000_000, StoreLimits::default());
        }
        1 => {
            let _ = replay::parse(rest, 1_800_000_000_000);
        }
        _ => {
            let Ok(text) = std::str::from_utf8(rest) else {
                return;
            };
            match which % 5 {
                2 => {
                    let _ = parse_client(text);
                    let _ = parse_gateway(text);
                }
                3 => {
                    let _ = Identity::parse_file_text(text);
                    let _ = Guards::from_toml(text);
                    let _ = text.parse::<PublicKey>();
                }
                _ => {
                    let _ = text.parse::<Rule>();
                    let _ = text.parse::<PortSummary>();
                }
            }
        }
    }
});
