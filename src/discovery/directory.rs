//! A gateway's directory service: its own signed descriptor (re-signed at half its
//! lifetime), the store it serves, and the [`Server`] sessions of the DIRECTORY
//! circuits that ask it. Sans-IO: unix seconds and [`Instant`]s are passed in, the
//! answers go to an [`Outbox`].

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

use rand_core::{CryptoRng, RngCore};
use thiserror::Error;

use super::outbox::Outbox;
use super::server::{Server, Session};
use super::store::{Rejected, Source, Store, StoreLimits};
use crate::node::{CircuitId, Node};
use crate::proto::descriptor::{Descriptor, DescriptorError, PaddingBudget};
use crate::proto::identity::Identity;
use crate::proto::wire::PAYLOAD_OFFSET;

/// Why a gateway's own descriptor cannot be published.
#[derive(Debug, Error)]
pub enum DirectoryError {
    #[error(
        "cannot sign this gateway's descriptor (check discovery.publish and listen_ports): {0}"
    )]
    Sign(DescriptorError),
    #[error("own descriptor refused: {0:?}")]
    OwnRefused(Rejected),
}

/// What a gateway publishes about itself and how it serves others.
#[derive(Debug, Clone)]
pub struct DirectorySettings {
    /// The addresses to publish; none: the gateway is not announced.
    pub addrs: Vec<IpAddr>,
    /// The UDP port range it listens on.
    pub ports: (u16, u16),
    /// The exit's policy summary (`None`: not an exit).
    pub exit_summary: Option<String>,
    /// Whether it answers `Get`s (`discovery.share`).
    pub share: bool,
    /// `Get`s answered per second at most.
    pub rate: u32,
    /// Seconds a signed descriptor is valid.
    pub lifetime: u64,
    /// The padding budget it states (its `padding_rate` and `padding_share`).
    pub padding: PaddingBudget,
}

/// A gateway's own descriptor and the directory service it runs.
pub struct Directory {
    pub store: Store,
    server: Server,
    sessions: HashMap<CircuitId, Session>,
    identity: Identity,
    /// This gateway's descriptor before signing; `None` when it has no address to
    /// publish (e.g. it listens on loopback only).
    template: Option<Descriptor>,
    lifetime: u64,
    resign_at: u64,
    /// When the descriptor in the store was published (unix seconds; 0: none yet).
    published: u64,
}

impl Directory {
    /// Signs this gateway's descriptor (unless it has no address to publish) and
    /// starts a store holding it.
    pub fn new(
        identity: Identity,
        settings: DirectorySettings,
        now_unix: u64,
    ) -> Result<Self, DirectoryError> {
        let DirectorySettings {
            addrs,
            ports,
            exit_summary,
            share,
            rate,
            lifetime,
            padding,
        } = settings;
        let signing = identity.signing_key();
        let summary = exit_summary;
        let template = (!addrs.is_empty()).then(|| Descriptor {
            identity: signing.verifying_key().to_bytes(),
            onion_key: identity.public().0,
            addrs,
            ports,
            exit: summary.is_some(),
            policy_summary: summary.unwrap_or_default(),
            published: 0,
            expires: 0,
            padding,
        });
        let mut dir = Self {
            store: Store::new(StoreLimits::default()),
            server: Server::new(share, rate),
            sessions: HashMap::new(),
            identity,
            template,
            lifetime,
            resign_at: 0,
            published: 0,
        };
        dir.resign(now_unix)?;
        Ok(dir)
    }

    /// Re-signs the descriptor at half its lifetime.
    pub fn tick(&mut self, now: u64) -> Result<(), DirectoryError> {
        if now >= self.resign_at {
            self.resign(now)?;
        }
        Ok(())
    }

    /// When (unix seconds) [`Directory::tick`] re-signs next; `None` when the
    /// gateway publishes no descriptor.
    #[must_use]
    pub fn resign_at(&self) -> Option<u64> {
        (self.resign_at != u64::MAX).then_some(self.resign_at)
    }

    /// Publishes a new exit policy summary (an exit's policy reloaded): re-signs the
    /// descriptor at once if the summary changed.
    pub fn set_exit_summary(&mut self, summary: String, now: u64) -> Result<(), DirectoryError> {
        match self.template.as_mut() {
            Some(t) if t.exit && t.policy_summary != summary => t.policy_summary = summary,
            _ => return Ok(()),
        }
        self.resign(now)
    }

    fn resign(&mut self, now: u64) -> Result<(), DirectoryError> {
        let Some(mut desc) = self.template.clone() else {
            self.resign_at = u64::MAX;
            return Ok(());
        };
        // A store keeps only a strictly newer descriptor of the same identity.
        let now = now.max(self.published.saturating_add(1));
        desc.published = now;
        desc.expires = now + self.lifetime;
        let bytes = desc
            .sign(&self.identity.signing_key())
            .map_err(DirectoryError::Sign)?;
        self.store
            .insert(&bytes, now, Source::Own)
            .map_err(DirectoryError::OwnRefused)?;
        self.resign_at = now + self.lifetime / 2;
        self.published = now;
        Ok(())
    }

    /// This gateway's current signed descriptor, if it publishes one.
    #[must_use]
    pub fn own(&self) -> Option<&[u8]> {
        self.template.as_ref()?;
        self.store
            .iter()
            .find(|e| e.source() == Source::Own)
            .map(|e| e.bytes())
    }

    /// Takes a request that arrived on a DIRECTORY circuit: a published descriptor
    /// (stored), or a `Get` (answered into `out`, each answer in a buffer from
    /// `buffer`).
    #[allow(clippy::too_many_arguments)]
    pub fn on_request(
        &mut self,
        now: Instant,
        now_unix: u64,
        rng: &mut (impl RngCore + CryptoRng),
        node: &mut Node,
        circuit: CircuitId,
        request: &[u8],
        mut buffer: impl FnMut() -> Vec<u8>,
        out: &mut Outbox,
    ) {
        if self.server.publish(now, &mut self.store, request, now_unix) {
            return;
        }
        let session = self.sessions.entry(circuit).or_default();
        let mut answers = Vec::new();
        self.server
            .handle(now, rng, &self.store, session, request, &mut answers);
        for payload in answers {
            let mut buf = buffer();
            buf.resize(PAYLOAD_OFFSET, 0);
            buf.extend_from_slice(&payload);
            match node.send_backward(now, circuit, buf, payload.len()) {
                Ok(t) => out.transmits.extend(t),
                Err(e) => tracing::debug!("directory answer dropped: {e}"),
            }
        }
    }

    /// Forgets a closed circuit's session.
    pub fn closed(&mut self, circuit: CircuitId) {
        self.sessions.remove(&circuit);
    }
}
