//! A client with valid circuits forges forward cells and link control against the
//! gateways (`anonnet_fuzz::run`).
#![no_main]

use anonnet_fuzz::{run, Side};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| run(data, Side::Client));
