//! Adaptive padding (PROTOCOL §5, SECURITY "Timing analysis"): a `maybenot`
//! framework per own circuit, fed with the circuit's traffic and driven by the
//! node's clock and RNG. Each padding the machines schedule goes out as one PADDING
//! to the circuit's last hop, which echoes it back, so every link of the circuit
//! carries it in both directions and no relay can tell it from DATA.
//!
//! The machines' `BlockOutgoing` actions are not carried out (a client never holds
//! back its own traffic), and a padding's `replace` flag is not honoured: every
//! scheduled padding is sent.

use std::time::Instant;

use maybenot::{Framework, Machine, MachineId, TriggerAction, TriggerEvent};
use rand_chacha_09::rand_core::SeedableRng;
use rand_chacha_09::ChaCha12Rng;
use rand_core::{CryptoRng, RngCore};

use crate::proto::wire::MAX_PAYLOAD;

use super::{CircuitId, Node, Timer};

/// How many rounds of actions one input may cause: an internal timer's
/// `TimerBegin` can lead to another action, which a machine could repeat forever.
const ROUNDS: usize = 4;

/// The machines of a client's adaptive padding.
#[derive(Debug, Clone, PartialEq)]
pub struct Adaptive {
    /// Each circuit runs these machines, instantiated with its own randomness.
    pub machines: Vec<MachineSpec>,
}

/// A padding machine a client may run (docs/SECURITY.md, timing analysis), from
/// `maybenot-machines`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MachineSpec {
    /// Tor's netflow padding: one padding after 1.5 to 9.5 s (uniform) in which
    /// the circuit sent nothing.
    Netflow,
    /// FRONT: from the circuit's first cell, a number of paddings drawn per
    /// circuit from `1..budget`, spread over a window drawn from
    /// `window_min..window_max` seconds with a Rayleigh profile (most of it early),
    /// approximated by `states` states.
    Front {
        budget: u32,
        window_min: f64,
        window_max: f64,
        states: usize,
    },
}

/// `front` alone: [`MachineSpec::Front`] with these.
pub const FRONT_DEFAULT: MachineSpec = MachineSpec::Front {
    budget: 150,
    window_min: 1.0,
    window_max: 14.0,
    states: 4,
};

/// Bad machine names and parameters (config).
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum MachineError {
    #[error("unknown padding machine \"{0}\" (known: netflow, front [budget window_min window_max states])")]
    Unknown(String),
    #[error(
        "front takes 4 numbers or none: budget (2..=100000), window_min and window_max \
         (seconds, 0.1 <= window_min < window_max <= 600) and states (1..=16), not \"{0}\""
    )]
    Front(String),
}

impl std::str::FromStr for MachineSpec {
    type Err = MachineError;

    fn from_str(s: &str) -> Result<Self, MachineError> {
        let mut words = s.split_whitespace();
        match (words.next(), words.next()) {
            (Some("netflow"), None) => Ok(Self::Netflow),
            (Some("front"), None) => Ok(FRONT_DEFAULT),
            (Some("front"), Some(_)) => front(s).ok_or_else(|| MachineError::Front(s.into())),
            _ => Err(MachineError::Unknown(s.into())),
        }
    }
}

/// `front budget window_min window_max states`, each within its bounds.
fn front(s: &str) -> Option<MachineSpec> {
    let w: Vec<&str> = s.split_whitespace().skip(1).collect();
    let [b, lo, hi, n] = w.as_slice() else {
        return None;
    };
    let budget: u32 = b.parse().ok().filter(|b| (2..=100_000).contains(b))?;
    let window_min: f64 = lo.parse().ok()?;
    let window_max: f64 = hi.parse().ok()?;
    let states: usize = n.parse().ok().filter(|n| (1..=16).contains(n))?;
    (window_min >= 0.1 && window_min < window_max && window_max <= 600.0).then_some(
        MachineSpec::Front {
            budget,
            window_min,
            window_max,
            states,
        },
    )
}

impl std::fmt::Display for MachineSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Netflow => f.write_str("netflow"),
            Self::Front {
                budget,
                window_min,
                window_max,
                states,
            } => write!(f, "front {budget} {window_min} {window_max} {states}"),
        }
    }
}

impl MachineSpec {
    fn machines(self, rng: &mut ChaCha12Rng) -> Vec<Machine> {
        match self {
            Self::Netflow => vec![maybenot_machines::netflow::simple_netflow()],
            Self::Front {
                budget,
                window_min,
                window_max,
                states,
            } => {
                // maybenot's times are microseconds.
                let (lo, hi) = (window_min * 1e6, window_max * 1e6);
                maybenot_machines::front::front(budget, lo, hi, states, rng)
            }
        }
    }
}

/// One own circuit's framework and the deadlines of its machines.
pub(super) struct Padder {
    framework: Framework<Vec<Machine>, ChaCha12Rng>,
    /// When each machine's scheduled padding is due.
    pad_at: Vec<Option<Instant>>,
    /// When each machine's internal timer ends.
    timer_at: Vec<Option<Instant>>,
    /// The most padding, in percent of the cells the circuit sends, its gateways
    /// allow ([`Node::limit_padding`]); 100 until they say.
    share: u8,
    /// Cells other than PADDING the circuit sent, and paddings.
    pub(super) normal: u64,
    padded: u64,
    /// Follow-up events of the actions of one round and of the round before (kept
    /// for their capacity).
    these: Vec<TriggerEvent>,
    next: Vec<TriggerEvent>,
}

impl Padder {
    /// A framework for a circuit that came up at `now`; `None` when the machines
    /// are not valid (the config checks them first).
    pub(super) fn new(cfg: &Adaptive, now: Instant, rng: &mut impl RngCore) -> Option<Self> {
        let mut seed = [0u8; 32];
        rng.fill_bytes(&mut seed);
        let mut rng = ChaCha12Rng::from_seed(seed);
        let machines: Vec<Machine> = cfg
            .machines
            .iter()
            .flat_map(|m| m.machines(&mut rng))
            .collect();
        let n = machines.len();
        // No framework-wide cap: the shipped machines carry their own allowance, and
        // the circuit's share ([`Node::limit_padding`]) caps what is sent.
        let framework = Framework::new(machines, 1.0, 0.0, now, rng).ok()?;
        Some(Self {
            framework,
            pad_at: vec![None; n],
            timer_at: vec![None; n],
            share: 100,
            normal: 0,
            padded: 0,
            these: Vec::new(),
            next: Vec::new(),
        })
    }

    /// Feeds `events` at `now` and carries out the actions they cause, and those
    /// their follow-up events cause, for at most [`ROUNDS`] rounds.
    pub(super) fn trigger(&mut self, now: Instant, events: &[TriggerEvent]) {
        let (mut these, mut next) = (
            std::mem::take(&mut self.these),
            std::mem::take(&mut self.next),
        );
        next.clear();
        self.apply(now, events, &mut next);
        for _ in 1..ROUNDS {
            if next.is_empty() {
                break;
            }
            std::mem::swap(&mut these, &mut next);
            next.clear();
            self.apply(now, &these, &mut next);
        }
        (self.these, self.next) = (these, next);
    }

    fn apply(&mut self, now: Instant, events: &[TriggerEvent], next: &mut Vec<TriggerEvent>) {
        for action in self.framework.trigger_events(events, now) {
            match *action {
                TriggerAction::SendPadding {
                    timeout, machine, ..
                } => set(&mut self.pad_at, machine, now.checked_add(timeout)),
                TriggerAction::UpdateTimer {
                    duration,
                    replace,
                    machine,
                } => {
                    // A deadline past the clock's range never comes.
                    let at = now.checked_add(duration);
                    let current = self.timer_at.get(machine.into_raw()).copied().flatten();
                    if replace || current.is_none_or(|c| at.is_none_or(|a| a > c)) {
                        set(&mut self.timer_at, machine, at);
                        next.push(TriggerEvent::TimerBegin { machine });
                    }
                }
                TriggerAction::Cancel { machine, timer } => {
                    use maybenot::Timer as T;
                    if matches!(timer, T::Action | T::All) {
                        set(&mut self.pad_at, machine, None);
                    }
                    if matches!(timer, T::Internal | T::All) {
                        set(&mut self.timer_at, machine, None);
                    }
                }
                TriggerAction::BlockOutgoing { .. } => {}
            }
        }
    }

    /// Feeds `events` at `now`; the earliest deadline of any machine after them.
    pub(super) fn on(&mut self, now: Instant, events: &[TriggerEvent]) -> Option<Instant> {
        if !events.is_empty() {
            self.trigger(now, events);
        }
        self.deadline()
    }

    /// Whether one more padding stays within the share: counts it if so.
    fn may_pad(&mut self) -> bool {
        let padded = self.padded.saturating_add(1);
        let all = padded.saturating_add(self.normal);
        if padded.saturating_mul(100) > u64::from(self.share).saturating_mul(all) {
            return false;
        }
        self.padded = padded;
        true
    }

    /// The earliest deadline of any machine.
    fn deadline(&self) -> Option<Instant> {
        self.pad_at
            .iter()
            .chain(&self.timer_at)
            .flatten()
            .min()
            .copied()
    }

    /// Takes the machines whose padding is due at `now` (into `due`) and ends the
    /// internal timers that are due, feeding their `TimerEnd`.
    pub(super) fn take_due(&mut self, now: Instant, due: &mut Vec<MachineId>) {
        for (m, at) in self.pad_at.iter_mut().enumerate() {
            if at.is_some_and(|t| t <= now) {
                *at = None;
                due.push(MachineId::from_raw(m));
            }
        }
        let mut ended = Vec::new();
        for (m, at) in self.timer_at.iter_mut().enumerate() {
            if at.is_some_and(|t| t <= now) {
                *at = None;
                ended.push(TriggerEvent::TimerEnd {
                    machine: MachineId::from_raw(m),
                });
            }
        }
        if !ended.is_empty() {
            self.trigger(now, &ended);
        }
    }
}

fn set(slots: &mut [Option<Instant>], machine: MachineId, at: Option<Instant>) {
    if let Some(s) = slots.get_mut(machine.into_raw()) {
        *s = at;
    }
}

/// What a cell other than PADDING sent on an own circuit tells its machines.
pub(super) const SENT: [TriggerEvent; 2] = [TriggerEvent::NormalSent, TriggerEvent::TunnelSent];
/// What a cell other than PADDING received tells them.
pub(super) const RECEIVED: [TriggerEvent; 2] = [TriggerEvent::TunnelRecv, TriggerEvent::NormalRecv];
/// What a PADDING received tells them.
pub(super) const PADDING_RECEIVED: [TriggerEvent; 2] =
    [TriggerEvent::TunnelRecv, TriggerEvent::PaddingRecv];

impl Node {
    /// Keeps own circuit `id`'s padding within `share` percent of the cells it
    /// sends: the least share its gateways' descriptors allow (PROTOCOL §10). A
    /// padding beyond it is not sent (`padding_capped`), though its machine goes on
    /// as if it were.
    pub fn limit_padding(&mut self, id: CircuitId, share: u8) {
        if let Some(p) = self.own.get_mut(&id).and_then(|o| o.padder.as_mut()) {
            p.share = share.min(100);
        }
    }

    /// Feeds `events` to own circuit `id`'s machines, if it pads, and sets its
    /// padding timer.
    pub(super) fn pad_event(&mut self, now: Instant, id: CircuitId, events: &[TriggerEvent]) {
        let Some(p) = self.own.get_mut(&id).and_then(|o| o.padder.as_mut()) else {
            return;
        };
        let at = p.on(now, events);
        self.timers.set(Timer::Padding(id), at);
    }

    /// Own circuit `id`'s padding timer: sends the paddings that are due, each one
    /// full-size PADDING to the last hop with an echo, unless it would go over the
    /// circuit's share (the machine is told it went, all the same), and ends due
    /// machine timers.
    pub(super) fn pad_tick(
        &mut self,
        now: Instant,
        rng: &mut (impl RngCore + CryptoRng),
        id: CircuitId,
    ) {
        let mut due = Vec::new();
        let Some(own) = self.own.get_mut(&id) else {
            return;
        };
        let last = own.hops.len().saturating_sub(1);
        if let Some(p) = own.padder.as_mut() {
            p.take_due(now, &mut due);
        }
        for machine in due {
            let allowed = self
                .own
                .get_mut(&id)
                .and_then(|o| o.padder.as_mut())
                .is_some_and(|p| p.may_pad());
            if allowed {
                let buf = self.spare.pop().unwrap_or_default();
                let Ok(t) = self.send_padding(now, rng, id, last, MAX_PAYLOAD, true, buf) else {
                    continue;
                };
                self.transmits.extend(t);
            } else {
                self.stats.padding_capped += 1;
            }
            let sent = [
                TriggerEvent::PaddingSent { machine },
                TriggerEvent::TunnelSent,
            ];
            self.pad_event(now, id, &sent);
        }
        self.pad_event(now, id, &[]);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use rand_chacha_09::rand_core::SeedableRng;

    use super::*;

    #[test]
    fn machine_names_parse_with_bounded_parameters() {
        assert_eq!("netflow".parse(), Ok(MachineSpec::Netflow));
        assert_eq!("front".parse(), Ok(FRONT_DEFAULT));
        assert_eq!(
            " front  30 0.5 9 2 ".parse(),
            Ok(MachineSpec::Front {
                budget: 30,
                window_min: 0.5,
                window_max: 9.0,
                states: 2
            })
        );
        for bad in ["", "netflow 1", "tamaraw 1 2", "FRONT"] {
            assert_eq!(
                bad.parse::<MachineSpec>(),
                Err(MachineError::Unknown(bad.into()))
            );
        }
        for bad in [
            "front 1 1 14 4",
            "front 100001 1 14 4",
            "front 150 0.05 14 4",
            "front 150 14 14 4",
            "front 150 1 601 4",
            "front 150 1 14 0",
            "front 150 1 14 17",
            "front 150 1 NaN 4",
            "front 150 1 14",
            "front 150 1 14 4 5",
        ] {
            assert_eq!(
                bad.parse::<MachineSpec>(),
                Err(MachineError::Front(bad.into())),
                "{bad}"
            );
        }
        for m in ["netflow", "front 30 0.5 9 2"] {
            assert_eq!(m.parse::<MachineSpec>().unwrap().to_string(), m);
        }
    }

    /// Every machine the bounds admit is built, whatever its draws (FRONT's
    /// construction searches numerically; maybenot validates each machine).
    #[test]
    fn every_admitted_front_machine_is_built() {
        let mut rng = ChaCha12Rng::seed_from_u64(5);
        for budget in [2, 150, 100_000] {
            for (lo, hi) in [(0.1, 0.2), (1.0, 14.0), (599.0, 600.0), (0.1, 600.0)] {
                for states in [1, 4, 16] {
                    let spec = MachineSpec::Front {
                        budget,
                        window_min: lo,
                        window_max: hi,
                        states,
                    };
                    for _ in 0..4 {
                        let machines = spec.machines(&mut rng);
                        assert_eq!(machines.len(), 1, "{spec}");
                        assert!(machines.iter().all(|m| m.validate().is_ok()), "{spec}");
                    }
                }
            }
        }
    }
}
