//! Cookies under load (PROTOCOL §8), after WireGuard: a gateway that receives LINK_INITs
//! faster than half its handshake rate answers a LINK_INIT without a valid mac2 with a
//! COOKIE_REPLY instead of a handshake. The cookie is a MAC of the sender's address under a secret that changes
//! every two minutes, so only a sender that receives at its address can prove it
//! (mac2); spoofed floods then cost a MAC and a small reply, never a handshake. Senders
//! that did prove their address are limited per /32 (IPv4) or /64 (IPv6).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use rand_core::{CryptoRng, RngCore};

use crate::proto::crypto::{self, KEY_LEN, MAC_LEN, TAG_LEN, XNONCE_LEN};
use crate::proto::wire::{
    self, COOKIE_REPLY_NONCE, COOKIE_REPLY_SEALED, LINK_INIT_MAC1, LINK_INIT_MAC2, LINK_INIT_MAC2ED,
};

use super::{Node, Timer, Transmit};
use crate::proto::bucket::TokenBucket;

/// How long a cookie secret is used (WireGuard's value).
pub(super) const COOKIE_SECRET_LIFE: Duration = Duration::from_secs(120);
/// How long an initiator uses a cookie it received: a little less than the secret's
/// life, so a cookie is not used just as the gateway stops accepting it.
pub(super) const COOKIE_USE: Duration = Duration::from_secs(115);
/// A gateway is under load while LINK_INITs with a valid mac1 arrive faster than half
/// its `handshake_rate` (beyond a burst of as many), and for this long after. The
/// arrivals are counted whether or not they are admitted, so a flood keeps the gateway
/// under load for as long as it lasts (a measure of the bucket's level instead would
/// end the load state while the flood goes on, since under load few take a token).
pub(super) const LOAD_HOLD: Duration = Duration::from_secs(1);
/// Handshakes per second (and burst) from one /32 or /64 while under load.
pub(super) const SOURCE_RATE: u32 = 20;
/// Most sources tracked; a table that fills up is cleared (WireGuard's table is
/// likewise bounded and collected every second).
pub(super) const SOURCE_CAP: usize = 1 << 16;
/// A source's bucket is full again, and forgotten, after this long without a
/// handshake; the sources are swept this often while there are any.
pub(super) const SOURCE_IDLE: Duration = Duration::from_secs(1);

/// The gateway's cookie secrets: the current one and the one before it.
#[derive(Default)]
pub(super) struct CookieJar {
    current: [u8; KEY_LEN],
    previous: Option<[u8; KEY_LEN]>,
    born: Option<Instant>,
}

impl CookieJar {
    /// Draws a new secret if the current one is older than [`COOKIE_SECRET_LIFE`];
    /// the current one stays valid as `previous` if it is not older than twice that.
    fn rotate(&mut self, now: Instant, rng: &mut impl RngCore) {
        let age = self.born.map(|b| now.saturating_duration_since(b));
        if age.is_some_and(|a| a < COOKIE_SECRET_LIFE) {
            return;
        }
        self.previous = age
            .filter(|&a| a < 2 * COOKIE_SECRET_LIFE)
            .map(|_| self.current);
        rng.fill_bytes(&mut self.current);
        self.born = Some(now);
    }

    /// Whether `mac2` over `covered` was made with a cookie of `remote` under the
    /// current or the previous secret.
    fn verifies(&self, remote: SocketAddr, covered: &[u8], mac2: &[u8]) -> bool {
        self.born.is_some()
            && [Some(self.current), self.previous]
                .into_iter()
                .flatten()
                .any(|secret| crypto::mac_verify(&cookie(&secret, remote), covered, mac2))
    }
}

/// `cookie = MAC(secret, family ‖ address ‖ port)`.
fn cookie(secret: &[u8; KEY_LEN], remote: SocketAddr) -> [u8; MAC_LEN] {
    let mut data = [0u8; 19];
    let len = match remote.ip() {
        IpAddr::V4(a) => {
            data[..1].copy_from_slice(&[4]);
            data[1..5].copy_from_slice(&a.octets());
            5
        }
        IpAddr::V6(a) => {
            data[..1].copy_from_slice(&[6]);
            data[1..17].copy_from_slice(&a.octets());
            17
        }
    };
    let (head, _) = data.split_at_mut(len + 2);
    let (_, port) = head.split_at_mut(len);
    port.copy_from_slice(&remote.port().to_be_bytes());
    crypto::mac(secret, head)
}

/// Token buckets per source network.
#[derive(Default)]
pub(super) struct SourceLimits {
    buckets: HashMap<(bool, u64), TokenBucket>,
}

impl SourceLimits {
    /// Whether one more handshake from `ip` is allowed at `now`.
    pub(super) fn admit(&mut self, now: Instant, ip: IpAddr) -> bool {
        let key = match ip.to_canonical() {
            IpAddr::V4(a) => (false, u64::from(u32::from(a))),
            IpAddr::V6(a) => (true, (u128::from(a) >> 64) as u64),
        };
        if self.buckets.len() >= SOURCE_CAP && !self.buckets.contains_key(&key) {
            self.buckets.clear();
        }
        self.buckets
            .entry(key)
            .or_insert_with(|| TokenBucket::new(SOURCE_RATE, SOURCE_RATE, now))
            .take(now)
    }

    /// Forgets sources whose bucket is full again (idle for [`SOURCE_IDLE`] or more).
    pub(super) fn collect(&mut self, now: Instant) {
        self.buckets
            .retain(|_, b| now.saturating_duration_since(b.last_used()) < SOURCE_IDLE);
    }

    pub(super) fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

impl Node {
    /// Counts one LINK_INIT whose mac1 verified and tells whether the gateway is under
    /// load (see [`LOAD_HOLD`]).
    pub(super) fn under_load(&mut self, now: Instant) -> bool {
        let half = self.cfg.handshake_rate / 2;
        let arrivals = self
            .arrivals
            .get_or_insert_with(|| TokenBucket::new(half, half, now));
        if !arrivals.take(now) {
            self.load_until = Some(now + LOAD_HOLD);
        }
        self.load_until.is_some_and(|t| now < t)
    }

    /// Under load: whether the LINK_INIT in `buf` proves its source address (mac2) and
    /// that source is within its limit. A LINK_INIT without a valid mac2 is answered
    /// with a COOKIE_REPLY.
    pub(super) fn admit_under_load(
        &mut self,
        now: Instant,
        rng: &mut (impl RngCore + CryptoRng),
        local: Option<SocketAddr>,
        remote: SocketAddr,
        sender: u32,
        buf: &[u8],
    ) -> bool {
        let (Some(covered), Some(mac2), Some(mac1)) = (
            buf.get(LINK_INIT_MAC2ED),
            buf.get(LINK_INIT_MAC2),
            buf.get(LINK_INIT_MAC1),
        ) else {
            self.stats.dropped_malformed += 1;
            return false;
        };
        self.cookies.rotate(now, rng);
        if !self.cookies.verifies(remote, covered, mac2) {
            let Some(key) = self.cookie_key else {
                return false;
            };
            let mut nonce = [0u8; XNONCE_LEN];
            rng.fill_bytes(&mut nonce);
            let sealed =
                crypto::seal_cookie(&key, &nonce, mac1, &cookie(&self.cookies.current, remote));
            self.transmits.push_back(Transmit {
                src: local,
                dst: remote,
                buf: wire::emit_cookie_reply(sender, &nonce, &sealed),
            });
            self.stats.cookies_sent += 1;
            return false;
        }
        self.timers
            .set_earlier(Timer::Housekeeping, now + SOURCE_IDLE);
        if !self.sources.admit(now, remote.ip()) {
            self.stats.dropped_rate_limited += 1;
            return false;
        }
        true
    }

    /// Initiator: a COOKIE_REPLY to its pending LINK_INIT `receiver`. The cookie is
    /// kept for [`COOKIE_USE`] and the handshake sent again at once, with mac2.
    pub(super) fn on_cookie_reply(
        &mut self,
        now: Instant,
        rng: &mut (impl RngCore + CryptoRng),
        receiver: u32,
        buf: &[u8],
    ) {
        let found = self.by_index.get(&receiver).and_then(|&id| {
            let l = self.links.get(&id)?;
            let p = l.pending.as_ref().filter(|p| p.rx == receiver)?;
            Some((id, l.peer_key?, p.mac1))
        });
        let Some((id, key, mac1)) = found else {
            self.stats.dropped_unknown_index += 1;
            return;
        };
        let (Some(nonce), Some(sealed)) = (
            buf.get(COOKIE_REPLY_NONCE)
                .and_then(|b| <&[u8; XNONCE_LEN]>::try_from(b).ok()),
            buf.get(COOKIE_REPLY_SEALED)
                .and_then(|b| <&[u8; MAC_LEN + TAG_LEN]>::try_from(b).ok()),
        ) else {
            self.stats.dropped_malformed += 1;
            return;
        };
        let Some(cookie) = crypto::open_cookie(&crypto::cookie_key(&key), nonce, &mac1, sealed)
        else {
            self.stats.dropped_auth += 1;
            return;
        };
        if let Some(link) = self.links.get_mut(&id) {
            link.cookie = Some((cookie, now));
        }
        self.stats.cookies_received += 1;
        self.send_link_init(now, rng, id);
    }
}

#[cfg(test)]
mod tests {
    // Tests index and unwrap what they built themselves.
    #![allow(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use rand_chacha::rand_core::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    #[test]
    fn sources_are_limited_per_slash32_and_slash64() {
        let mut s = SourceLimits::default();
        let t = Instant::now();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let burst = SOURCE_RATE as usize;
        for _ in 0..burst {
            assert!(s.admit(t, ip("198.18.0.1")));
        }
        assert!(!s.admit(t, ip("198.18.0.1")));
        assert!(s.admit(t, ip("198.18.0.2")), "another /32");
        for i in 0..burst {
            assert!(s.admit(t, ip(&format!("2001:db8:0:1::{i:x}"))));
        }
        assert!(!s.admit(t, ip("2001:db8:0:1:ffff::1")), "the same /64");
        assert!(s.admit(t, ip("2001:db8:0:2::1")), "another /64");
        // A second later each has its tokens back; idle sources are forgotten.
        let later = t + Duration::from_secs(1);
        assert!(s.admit(later, ip("198.18.0.1")));
        s.collect(later + Duration::from_secs(1));
        assert!(s.buckets.is_empty());
    }

    #[test]
    fn a_cookie_binds_the_address_and_expires_with_its_secrets() {
        let mut jar = CookieJar::default();
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let t = Instant::now();
        let a: SocketAddr = "198.18.0.1:9000".parse().unwrap();
        let b: SocketAddr = "198.18.0.1:9001".parse().unwrap();
        assert!(!jar.verifies(a, b"init", &[0; MAC_LEN]), "no secret yet");
        jar.rotate(t, &mut rng);
        let mac2 = crypto::mac(&cookie(&jar.current, a), b"init");
        assert!(jar.verifies(a, b"init", &mac2));
        assert!(!jar.verifies(b, b"init", &mac2), "another port");
        jar.rotate(t + COOKIE_SECRET_LIFE, &mut rng);
        assert!(jar.verifies(a, b"init", &mac2), "the previous secret");
        jar.rotate(t + 2 * COOKIE_SECRET_LIFE, &mut rng);
        assert!(!jar.verifies(a, b"init", &mac2), "two secrets later");
    }
}
