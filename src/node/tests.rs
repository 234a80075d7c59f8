use super::*;

/// A relayed circuit is one boxed `Relay` plus its entries in `relays` and
/// `circuits`; its size is the bulk of a gateway's memory per idle circuit
/// (docs/DESIGN.md, memory per circuit).
#[test]
fn a_relayed_circuit_stays_small() {
    eprintln!(
        "Relay {} bytes, Entry {} bytes",
        std::mem::size_of::<Relay>(),
        std::mem::size_of::<Entry>()
    );
    assert!(std::mem::size_of::<Relay>() <= 1440);
    assert!(std::mem::size_of::<Entry>() <= 16);
}
