//! Per-cell cryptographic costs of anonnet, anchored on ring's raw ChaCha20-Poly1305.
//!
//! Run with `cargo bench --bench crypto -- --warm-up-time 1 --measurement-time 3`.
//! Results and their interpretation: `docs/PERFORMANCE.md`.

use std::hint::black_box;
use std::time::Instant;

use anonnet::proto::crypto::{header_mask, nonce_bytes, KEY_LEN, TAG_LEN};
use anonnet::proto::onion::{read_slot0, shift_out, wrap_forward, Generation, HopKeys, Side};
use anonnet::proto::wire::{SLOTS_LEN, SLOT_LEN};
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};

/// Body sizes: a small packet, the IPv4 minimum MTU, and a full-size datagram.
const SIZES: [usize; 3] = [64, 576, 1400];

/// The split of a fake hop handshake: `(k_i2r, k_r2i)`.
const SPLIT: ([u8; KEY_LEN], [u8; KEY_LEN]) = ([1; KEY_LEN], [2; KEY_LEN]);

fn client_gen() -> Generation {
    Generation::new(SPLIT, Side::Client, Instant::now(), false)
}

fn gateway_gen() -> Generation {
    Generation::new(SPLIT, Side::Gateway, Instant::now(), false)
}

/// A forward layer sealed by the client: `(ctr, tag, body)`.
type SealedCell = (u64, [u8; TAG_LEN], Vec<u8>);

fn seal_cell(client: &mut Generation, n: usize) -> SealedCell {
    let mut body = vec![0xA5; n];
    let own = client
        .seal(false, &mut body)
        .unwrap_or_else(|| unreachable!("counter far below the limit"));
    let (ctr, tag) = read_slot0(&own);
    (ctr, tag, body)
}

/// Bench 1: ring's raw ChaCha20-Poly1305 seal: the anchor every other number is compared to.
fn ring_raw(c: &mut Criterion) {
    let mut g = c.benchmark_group("ring_raw");
    let key = LessSafeKey::new(
        UnboundKey::new(&CHACHA20_POLY1305, &[1; KEY_LEN])
            .unwrap_or_else(|_| unreachable!("32-byte key")),
    );
    for n in SIZES {
        g.throughput(Throughput::Bytes(n as u64));
        let mut body = vec![0xA5; n];
        let mut ctr = 0u64;
        g.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter(|| {
                ctr += 1;
                let nonce = Nonce::assume_unique_for_key(nonce_bytes(ctr));
                let tag = key
                    .seal_in_place_separate_tag(nonce, Aad::empty(), black_box(&mut body))
                    .unwrap_or_else(|_| unreachable!("small input"));
                let _tag = black_box(tag);
            });
        });
    }
    g.finish();
}

/// Bench 2: One anonnet AEAD layer: counter + flags, ring seal, slot `ctr ‖ tag`.
fn hop_seal(c: &mut Criterion) {
    let mut g = c.benchmark_group("hop_seal");
    for n in SIZES {
        g.throughput(Throughput::Bytes(n as u64));
        let mut gen = client_gen();
        let mut body = vec![0xA5; n];
        g.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter(|| black_box(gen.seal(false, black_box(&mut body))));
        });
    }
    g.finish();
}

/// Bench 3: `Generation::open` on the gateway: replay check, ring open, window update.
/// Each counter opens once, so cells are pre-sealed (untimed) with increasing counters.
fn hop_open(c: &mut Criterion) {
    let mut g = c.benchmark_group("hop_open");
    for n in SIZES {
        g.throughput(Throughput::Bytes(n as u64));
        let mut client = client_gen();
        let mut gw = gateway_gen();
        g.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter_batched(
                || seal_cell(&mut client, n),
                |(ctr, tag, mut body)| {
                    let r = gw.open(ctr, &tag, &mut body);
                    assert!(r.is_ok());
                    body
                },
                BatchSize::SmallInput,
            );
        });
    }
    g.finish();
}

/// Bench 4: What a forward relay does per cell: open its layer, then shift the slots out
/// with its 192-byte slot keystream (3 ChaCha20 blocks).
fn hop_relay_forward(c: &mut Criterion) {
    let mut g = c.benchmark_group("hop_relay_forward");
    for n in SIZES {
        g.throughput(Throughput::Bytes(n as u64));
        let mut client = client_gen();
        let mut gw = gateway_gen();
        let mut rng = ChaCha20Rng::from_seed([7; 32]);
        g.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter_batched(
                || {
                    let mut slots = [0u8; SLOTS_LEN];
                    rng.fill_bytes(&mut slots);
                    let mut body = vec![0xA5; n];
                    let own = client
                        .seal(false, &mut body)
                        .unwrap_or_else(|| unreachable!("counter far below the limit"));
                    slots[..SLOT_LEN].copy_from_slice(&own);
                    (slots, body)
                },
                |(mut slots, mut body)| {
                    let (ctr, tag) = read_slot0(&slots);
                    let r = gw.open(ctr, &tag, &mut body);
                    assert!(r.is_ok());
                    let ks = gw.open_keystream(ctr);
                    shift_out(&mut slots, &ks);
                    (slots, body)
                },
                BatchSize::SmallInput,
            );
        });
    }
    g.finish();
}

/// Bench 5: The client's full 3-hop forward wrap: RNG slot fill, 3 seals, 2 slot keystreams.
fn wrap_3hop(c: &mut Criterion) {
    let mut g = c.benchmark_group("wrap_3hop");
    for n in SIZES {
        g.throughput(Throughput::Bytes(n as u64));
        let mut hops: [HopKeys; 3] = core::array::from_fn(|i| {
            let k = u8::try_from(i).unwrap_or(0);
            HopKeys::new(Generation::new(
                ([10 + k; KEY_LEN], [20 + k; KEY_LEN]),
                Side::Client,
                Instant::now(),
                false,
            ))
        });
        let mut rng = ChaCha20Rng::from_seed([9; 32]);
        let mut slots = [0u8; SLOTS_LEN];
        let mut body = vec![0xA5; n];
        g.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter(|| {
                let r = wrap_forward(&mut hops, 2, &mut slots, black_box(&mut body), &mut rng);
                black_box(r);
                black_box(&slots);
            });
        });
    }
    g.finish();
}

/// Bench 6: The per-link header mask: 28 bytes XORed with one ChaCha20 block whose block
/// counter and nonce come from the 16-byte sample (`docs/PROTOCOL.md` §2, CELL).
fn mask_header(c: &mut Criterion) {
    let mut g = c.benchmark_group("mask_header");
    g.throughput(Throughput::Bytes(28));
    let key = [3u8; KEY_LEN];
    let sample: [u8; 16] = core::array::from_fn(|i| u8::try_from(i * 17).unwrap_or(0));
    let mut buf = [0u8; 28];
    g.bench_function("28", |b| {
        b.iter(|| {
            let mask = header_mask(black_box(&key), black_box(&sample));
            for (b, m) in buf.iter_mut().zip(mask) {
                *b ^= m;
            }
            black_box(&buf);
        });
    });
    g.finish();
}

criterion_group!(
    benches,
    ring_raw,
    hop_seal,
    hop_open,
    hop_relay_forward,
    wrap_3hop,
    mask_header
);
criterion_main!(benches);
