//! Why a circuit did not come up, in words that name the hop to blame.
//!
//! A failed build says little by itself. A hop that is down, unreachable or given
//! with a wrong key is silent (a gateway ignores a handshake made for another key),
//! so the client hears only that nothing came back in time; and a DESTROY reaches
//! the client from its entry, whichever hop refused. So `up` asks again, hop by hop
//! (`diagnose`): it builds each longer prefix of the path as a DIRECTORY circuit,
//! a service every gateway offers (PROTOCOL §11), until one fails, and blames the
//! last hop of that prefix ([`blame`]). When the whole path comes up that way, the
//! last hop answered but would not be the exit ([`blame_exit`]).

use std::fmt;

use crate::node::{DownReason, Event, HopSpec};
use crate::proto::identity::PublicKey;
use crate::proto::wire::{DestroyReason, Service};
use crate::runtime::client::build;
use crate::runtime::driver::Driver;

/// Why a build failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildError {
    /// The node would not start it (the reason in words).
    NotStarted(String),
    /// It went down before it was up.
    Down(DownReason),
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotStarted(e) => f.write_str(e),
            Self::Down(why) => f.write_str(&words(*why)),
        }
    }
}

/// A circuit's end, for a person.
#[must_use]
pub fn words(why: DownReason) -> String {
    match why {
        DownReason::BuildTimeout => "no answer in time".into(),
        DownReason::BuildRejected => "refused".into(),
        DownReason::Silent => "nothing came back for too long".into(),
        DownReason::LinkDead => "the entry stopped answering".into(),
        DownReason::EntryUnanswered => "the entry did not answer".into(),
        DownReason::EntryLeft => "the entry closed its link (it stopped)".into(),
        DownReason::Destroyed(r) => format!("closed by a hop ({})", destroy_words(r)),
        DownReason::Truncated { hop, reason } => format!(
            "hop {} lost its link to the next hop ({})",
            hop.saturating_add(1),
            destroy_words(reason)
        ),
        DownReason::KeysExpired => "its keys expired".into(),
        DownReason::Closed => "closed".into(),
    }
}

fn destroy_words(r: DestroyReason) -> &'static str {
    match r {
        DestroyReason::Requested => "asked to",
        DestroyReason::Timeout => "timed out",
        DestroyReason::Unreachable => "a hop could not reach the next one, or is full",
        DestroyReason::Protocol => "refused",
    }
}

/// Hop `i` of `path`, for a person: `hop 2 of 3 (198.18.3.2:9000, key AbCdEfGh)`.
#[must_use]
pub fn hop_name(path: &[HopSpec], i: usize) -> String {
    match path.get(i) {
        Some(h) => {
            let key = PublicKey(h.key).short();
            format!(
                "hop {} of {} ({}, key {key})",
                i.saturating_add(1),
                path.len(),
                h.addr
            )
        }
        None => format!("hop {} of {}", i.saturating_add(1), path.len()),
    }
}

/// What a silent hop may be.
const SILENT: &str = "did not answer: it is down or unreachable, or the key given for it \
                      is wrong (a gateway ignores a handshake made for another key)";

/// The prefix of `path` ending at hop `i` failed for `why` as a DIRECTORY circuit,
/// the shorter prefixes having come up: what hop `i` did.
#[must_use]
pub fn blame(path: &[HopSpec], i: usize, why: &BuildError) -> String {
    let name = hop_name(path, i);
    match why {
        BuildError::NotStarted(e) => e.clone(),
        BuildError::Down(
            DownReason::EntryUnanswered
            | DownReason::BuildTimeout
            | DownReason::LinkDead
            | DownReason::Silent,
        ) => format!("{name} {SILENT}"),
        BuildError::Down(
            DownReason::Destroyed(DestroyReason::Unreachable | DestroyReason::Timeout)
            | DownReason::Truncated { .. },
        ) if i > 0 => format!("{name} {SILENT} (hop {i} could not open a link to it)"),
        BuildError::Down(DownReason::Destroyed(DestroyReason::Unreachable)) => {
            format!("{name} refused the circuit: it is full")
        }
        BuildError::Down(
            DownReason::Destroyed(DestroyReason::Protocol) | DownReason::BuildRejected,
        ) => {
            format!("{name} refused the circuit (it does not serve discovery, or refuses the hop after it)")
        }
        BuildError::Down(other) => format!("{name}: {}", words(*other)),
    }
}

/// Every prefix of `path` came up as a DIRECTORY circuit, but the circuit to its
/// last hop as the exit failed for `why`.
#[must_use]
pub fn blame_exit(path: &[HopSpec], why: &BuildError) -> String {
    let name = hop_name(path, path.len().saturating_sub(1));
    match why {
        BuildError::Down(
            DownReason::Destroyed(DestroyReason::Protocol) | DownReason::BuildRejected,
        ) => format!(
            "{name} is not an exit: it refused to carry the circuit's traffic out (an exit \
             runs `anonnet gateway --exit`)"
        ),
        BuildError::Down(DownReason::Destroyed(DestroyReason::Unreachable)) => {
            format!("{name} refused the circuit as its exit: it is full")
        }
        other => {
            format!("{name} answered, but the circuit to it as the exit did not come up ({other})")
        }
    }
}

/// Why the exit circuit through `path` failed for `why`, naming the hop: builds each
/// longer prefix as a DIRECTORY circuit until one fails (at most one build timeout
/// more), and closes those that came up.
pub(crate) async fn diagnose(
    d: &mut Driver,
    path: &[HopSpec],
    why: &BuildError,
    events: &mut Vec<Event>,
) -> String {
    match why {
        BuildError::NotStarted(e) => return e.clone(),
        BuildError::Down(DownReason::EntryUnanswered) => return blame(path, 0, why),
        BuildError::Down(_) => {}
    }
    for len in 1..=path.len() {
        let prefix = path.get(..len).unwrap_or(path);
        match build(d, prefix, Service::Directory, events).await {
            Ok(id) => d.node.close_circuit(id),
            Err(e) => {
                d.flush().await;
                return blame(path, len.saturating_sub(1), &e);
            }
        }
    }
    d.flush().await;
    blame_exit(path, why)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path() -> Vec<HopSpec> {
        (1u8..=3)
            .map(|i| HopSpec {
                addr: format!("198.18.{i}.2:9000").parse().expect("an address"),
                key: [i; 32],
            })
            .collect()
    }

    #[test]
    fn hops_are_named_by_place_address_and_key() {
        let p = path();
        let key = PublicKey([2; 32]).short();
        assert_eq!(
            hop_name(&p, 1),
            format!("hop 2 of 3 (198.18.2.2:9000, key {key})")
        );
    }

    #[test]
    fn silence_refusal_and_not_an_exit() {
        let p = path();
        let timeout = BuildError::Down(DownReason::BuildTimeout);
        let s = blame(&p, 1, &timeout);
        assert!(
            s.starts_with("hop 2 of 3 (198.18.2.2:9000") && s.contains("key given for it is wrong"),
            "{s}"
        );
        let s = blame(&p, 0, &BuildError::Down(DownReason::EntryUnanswered));
        assert!(
            s.starts_with("hop 1 of 3") && s.contains("did not answer"),
            "{s}"
        );
        let lost = BuildError::Down(DownReason::Destroyed(DestroyReason::Unreachable));
        assert!(blame(&p, 2, &lost).contains("hop 2 could not open a link to it"));
        assert!(blame(&p, 0, &lost).contains("is full"));
        let refused = BuildError::Down(DownReason::Destroyed(DestroyReason::Protocol));
        let s = blame_exit(&p, &refused);
        assert!(
            s.starts_with("hop 3 of 3 (198.18.3.2:9000") && s.contains("is not an exit"),
            "{s}"
        );
        let s = blame_exit(&p, &timeout);
        assert!(
            s.contains("answered, but") && s.contains("no answer in time"),
            "{s}"
        );
        assert_eq!(
            blame(&p, 0, &BuildError::NotStarted("no hops".into())),
            "no hops"
        );
    }

    #[test]
    fn every_reason_has_words() {
        for why in [
            DownReason::BuildTimeout,
            DownReason::BuildRejected,
            DownReason::Silent,
            DownReason::LinkDead,
            DownReason::EntryUnanswered,
            DownReason::EntryLeft,
            DownReason::Destroyed(DestroyReason::Requested),
            DownReason::Truncated {
                hop: 1,
                reason: DestroyReason::Timeout,
            },
            DownReason::KeysExpired,
            DownReason::Closed,
        ] {
            let w = words(why);
            assert!(!w.is_empty() && !w.contains("Destroyed"), "{why:?}: {w}");
        }
        assert!(words(DownReason::Truncated {
            hop: 1,
            reason: DestroyReason::Timeout
        })
        .starts_with("hop 2 lost"));
    }
}
