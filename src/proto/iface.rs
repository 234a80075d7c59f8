//! The tunnel devices' names and MTUs as both the kernel and the data path accept
//! them: one check, used when a config file is read and again before the kernel is
//! touched (a state file left by an earlier run names devices too).

use thiserror::Error;

use crate::proto::framing::MAX_PACKET;

/// Smallest MTU of a tunnel device: IPv6's minimum (every tunnel carries IPv6).
pub const MIN_MTU: u32 = 1280;
/// Largest MTU of a tunnel device: the largest packet the data path carries.
#[allow(clippy::cast_possible_truncation)]
pub const MAX_MTU: u32 = MAX_PACKET as u32;
/// Longest interface name the kernel takes (`IFNAMSIZ` less the NUL).
pub const MAX_NAME_LEN: usize = 15;

/// Why a device name or MTU is refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum IfaceError {
    #[error("{0:?} is not a usable interface name: use 1 to {MAX_NAME_LEN} letters, digits, '-', '_' or '.'")]
    Name(String),
    #[error("must be between {MIN_MTU} and {MAX_MTU}, got {0}")]
    Mtu(u32),
}

/// Checks an interface name: 1 to 15 ASCII letters, digits, `-`, `_` or `.`, not `.`
/// or `..`. The name also goes verbatim into nftables rulesets, so nothing else is
/// let through.
pub fn check_name(name: &str) -> Result<(), IfaceError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(IfaceError::Name(name.to_owned()))
    }
}

/// Checks a tunnel device's MTU: [`MIN_MTU`] to [`MAX_MTU`].
pub fn check_mtu(mtu: u32) -> Result<(), IfaceError> {
    if (MIN_MTU..=MAX_MTU).contains(&mtu) {
        Ok(())
    } else {
        Err(IfaceError::Mtu(mtu))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_kernel_and_nftables_take() {
        for ok in ["anon0", "anonexit0", "a", "wg-0_x.1", "123456789012345"] {
            assert_eq!(check_name(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "1234567890123456",
            "a b",
            "a/b",
            "a:b",
            "anon0\"; flush ruleset",
            "a!b",
            "ä",
        ] {
            assert_eq!(check_name(bad), Err(IfaceError::Name(bad.into())), "{bad}");
        }
    }

    #[test]
    fn mtus_from_ipv6_minimum_to_the_largest_packet() {
        assert_eq!(check_mtu(MIN_MTU), Ok(()));
        assert_eq!(check_mtu(MAX_MTU), Ok(()));
        assert_eq!(MAX_MTU, 4972);
        for bad in [0, 576, MIN_MTU - 1, MAX_MTU + 1, 65535] {
            assert_eq!(
                check_mtu(bad).map_err(|e| e.to_string()),
                Err(format!("must be between 1280 and 4972, got {bad}"))
            );
        }
    }
}
