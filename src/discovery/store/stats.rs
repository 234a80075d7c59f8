//! What a [`Store`](super::Store) counts, by outcome.

use super::{Inserted, Rejected};
use crate::proto::descriptor::DescriptorError;

/// The names of [`StoreStats::rejected_by_reason`]'s groups, in order.
pub const REJECTION_GROUPS: [&str; 6] = [
    "bad signature",
    "expired",
    "not yet valid",
    "malformed",
    "over a limit or held by another identity",
    "duplicate or stale",
];

/// What a [`Store`](super::Store) did, by outcome. Every rejection is counted once, under one
/// reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct StoreStats {
    /// Descriptors of new gateways.
    pub added: u64,
    /// Newer versions replacing held ones.
    pub replaced: u64,
    /// Self-served descriptors replacing another identity's claim.
    pub reclaimed: u64,
    /// Descriptors removed by [`Store::expire`](super::Store::expire).
    pub expired: u64,
    /// Rejected: longer than the size cap.
    pub too_long: u64,
    /// Rejected: malformed (layout or field rules).
    pub malformed: u64,
    /// Rejected: the signature does not verify.
    pub bad_signature: u64,
    /// Rejected: published too far in the future.
    pub not_yet_valid: u64,
    /// Rejected: already expired on arrival.
    pub arrived_expired: u64,
    /// Claims kept as contenders.
    pub contenders: u64,
    /// Contests settled by the gateway's own descriptor.
    pub settled: u64,
    /// Rejected: already held.
    pub duplicate: u64,
    /// Rejected: not newer than the held version.
    pub stale: u64,
    /// Rejected: another identity holds the onion key and it already has a
    /// contender.
    pub other_identity: u64,
    /// Rejected: the identity holds another onion key.
    pub identity_in_use: u64,
    /// Rejected: store full.
    pub total_cap: u64,
    /// Rejected: per-answer cap.
    pub answer_cap: u64,
    /// Rejected: per-source cap.
    pub source_cap: u64,
    /// Rejected: per-network cap.
    pub prefix_cap: u64,
}

impl StoreStats {
    /// All rejections.
    pub fn rejected(&self) -> u64 {
        self.rejected_by_reason().iter().sum()
    }

    /// The rejections in the groups a crawl reports ([`REJECTION_GROUPS`]).
    #[must_use]
    pub fn rejected_by_reason(&self) -> [u64; 6] {
        [
            self.bad_signature,
            self.arrived_expired,
            self.not_yet_valid,
            self.malformed + self.too_long,
            self.total_cap
                + self.answer_cap
                + self.source_cap
                + self.prefix_cap
                + self.identity_in_use
                + self.other_identity,
            self.duplicate + self.stale,
        ]
    }

    pub(super) fn count(&mut self, result: &Result<Inserted, Rejected>) {
        let counter = match result {
            Ok(Inserted::New) => &mut self.added,
            Ok(Inserted::Replaced) => &mut self.replaced,
            Ok(Inserted::Reclaimed) => &mut self.reclaimed,
            Ok(Inserted::Contender) => &mut self.contenders,
            Err(Rejected::Invalid(error)) => match error {
                DescriptorError::TooLong(_) => &mut self.too_long,
                DescriptorError::BadSignature => &mut self.bad_signature,
                DescriptorError::NotYetValid => &mut self.not_yet_valid,
                DescriptorError::Expired => &mut self.arrived_expired,
                DescriptorError::Truncated
                | DescriptorError::Version(_)
                | DescriptorError::BadField(_)
                | DescriptorError::IdentityMismatch
                | DescriptorError::LifetimeTooLong
                | DescriptorError::TrailingBytes => &mut self.malformed,
            },
            Err(Rejected::Duplicate) => &mut self.duplicate,
            Err(Rejected::Stale) => &mut self.stale,
            Err(Rejected::OtherIdentity) => &mut self.other_identity,
            Err(Rejected::IdentityInUse) => &mut self.identity_in_use,
            Err(Rejected::TotalCap) => &mut self.total_cap,
            Err(Rejected::AnswerCap) => &mut self.answer_cap,
            Err(Rejected::SourceCap) => &mut self.source_cap,
            Err(Rejected::PrefixCap) => &mut self.prefix_cap,
        };
        *counter += 1;
    }
}
