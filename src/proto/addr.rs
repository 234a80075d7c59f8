//! The tunnel's fixed addresses, the same in every client and every exit: the
//! exit maps each circuit 1:1 to an address of its own pool, so no address here
//! needs to be unique.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The client's address on its TUN device. Every client uses the same one: the exit
/// gives each circuit its own address from a pool, so clients need no unique
/// addresses and learn nothing of each other.
pub const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 2);
pub const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x64, 0, 0, 0, 0, 0, 2);
/// The exit's own address inside the tunnel: the source of the ICMP errors it
/// generates (exit policy rejections).
pub const EXIT_V4: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 1);
pub const EXIT_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x64, 0, 0, 0, 0, 0, 1);

/// The exit's tunnel address of `addr`'s family.
#[must_use]
pub fn exit_addr(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V4(_) => IpAddr::V4(EXIT_V4),
        IpAddr::V6(_) => IpAddr::V6(EXIT_V6),
    }
}
/// The resolver address inside the tunnel: the exit forwards DNS sent here to its
/// own resolvers, so a client's queries leave from the exit like its traffic.
pub const DNS_V4: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 53);
pub const DNS_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x64, 0, 0, 0, 0, 0, 0x53);

/// Whether `a` is one of the tunnel's fixed addresses above: an address of a TUN
/// device (an exit's, a mixed-mode client's), which no other host can reach.
#[must_use]
pub fn is_tunnel_fixed(a: IpAddr) -> bool {
    match a {
        IpAddr::V4(v4) => [CLIENT_V4, EXIT_V4, DNS_V4].contains(&v4),
        IpAddr::V6(v6) => [CLIENT_V6, EXIT_V6, DNS_V6].contains(&v6),
    }
}
