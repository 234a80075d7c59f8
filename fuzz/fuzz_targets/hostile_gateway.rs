//! The gateways of a client's circuits forge backward cells against the client
//! (`anonnet_fuzz::run`).
#![no_main]

use anonnet_fuzz::{run, Side};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| run(data, Side::Gateway));
