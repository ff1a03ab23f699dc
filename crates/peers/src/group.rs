//! Where an address is, seen from the book: its reach (loopback, private, public), its network
//! group (the unit of eclipse resistance), and whether it is a dialable address at all.
//!
//! The rules follow CometBFT `p2p/netaddress.go` (`Routable`, `Valid`, `Local`) and
//! `p2p/pex/addrbook.go` (`groupKeyFor`), which took them from btcd's `addrmgr/network.go`,
//! carried over from `host:port` to multiaddrs:
//!
//! * the host is the first component: `/ip4`, `/ip6`, `/dns`, `/dns4`, `/dns6`, `/dnsaddr` (and
//!   `/memory`, the in-process transport, which is loopback);
//! * IPv4: the group is the /16. IPv6: the /32 (the /36 inside Hurricane Electric's
//!   `2001:470::/32`, as bitcoind does), except that IPv6 forms carrying an IPv4 address
//!   (v4-mapped and v4-translated, NAT64 `64:ff9b::/96`, 6to4 `2002::/16`, Teredo `2001::/32`)
//!   are grouped by the /16 of that IPv4 address, so tunnelling does not buy more groups;
//! * DNS names (not in CometBFT, whose addresses are IPs): the last two labels, lowercased
//!   (`a.b.example.com` → `example.com`). One registered domain is one group, however many
//!   names under it are announced. Public suffixes like `co.uk` make this coarser than needed,
//!   never finer, which is the safe direction;
//! * non-public addresses: in [`Routability::Strict`] mode every loopback address is the group
//!   `Local` and every other non-public one the group `Unroutable` (CometBFT's `"local"` and
//!   `"unroutable"`); in [`Routability::AllowLocal`] mode each non-public host is its own group
//!   ([`NetGroup::Host`]), so a LAN or a set of `127.0.0.x` test nodes spreads over buckets
//!   instead of competing for one (with CometBFT's rule a whole LAN shares one /16, so a handful
//!   of buckets). This granularity only spreads addresses *within* the new buckets their
//!   source may use: the book groups every non-public *source* as `Local` or `Unroutable`
//!   whatever the mode, so a LAN peer taking many private addresses gains nothing. Nodes that
//!   share one IP (an in-process network on `127.0.0.1`) share one group: one new bucket (64
//!   peers) per source group, and 4 old buckets.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use libp2p::{Multiaddr, PeerId, multiaddr::Protocol};
use serde::{Deserialize, Serialize};

use crate::params::{MAX_MULTIADDR_LEN, MAX_MULTIADDR_TEXT_LEN};

/// Which addresses the book accepts. The default is [`Routability::AllowLocal`].
///
/// CometBFT's `addr_book_strict = true` (its default) refuses every non-routable address, which
/// makes PEX look broken on private and test networks (tendermint/tendermint#1733, #1736);
/// turning it off accepts private addresses from anyone. `AllowLocal` sits between the two and
/// is the default because it is safe on the public internet and works on a LAN out of the box.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Routability {
    /// Only public addresses enter the book (CometBFT `addr_book_strict = true`). For a node
    /// that lives on the public internet and never needs a LAN peer.
    Strict,
    /// Public addresses from anyone; loopback and private addresses (RFC 1918, link-local,
    /// unique-local, CGNAT, `localhost`, `/memory`) only when we add them ourselves
    /// ([`crate::Source::Local`]) or hear them from a peer that is itself on a non-public
    /// address. A public peer's private addresses are some other network's, never ours, and
    /// accepting them would let strangers point our dialer at our own LAN.
    ///
    /// Whatever the setting, non-public addresses are never given to a public requester (see
    /// [`crate::Audience`]).
    #[default]
    AllowLocal,
}

/// How far an address reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reach {
    /// This machine only: `127.0.0.0/8`, `0.0.0.0/8`, `::1`, `localhost`, `/memory`.
    Loopback,
    /// A private or otherwise non-public range: RFC 1918, link-local, unique-local, CGNAT,
    /// benchmarking, documentation, reserved, single-label and `.local`-style names, and any
    /// host kind the book does not know (onion, unix sockets).
    Private,
    /// Reachable over the internet.
    Public,
}

impl Reach {
    /// `true` for [`Reach::Public`].
    pub fn is_public(self) -> bool {
        self == Reach::Public
    }
}

/// The reach of an address (see [`Reach`]). Addresses without a host this module knows are
/// [`Reach::Private`].
pub fn reach(addr: &Multiaddr) -> Reach {
    match addr.iter().next() {
        Some(Protocol::Ip4(ip)) => ip4_reach(ip),
        Some(Protocol::Ip6(ip)) => ip6_reach(ip),
        Some(
            Protocol::Dns(name)
            | Protocol::Dns4(name)
            | Protocol::Dns6(name)
            | Protocol::Dnsaddr(name),
        ) => dns_reach(&name),
        Some(Protocol::Memory(_)) => Reach::Loopback,
        _ => Reach::Private,
    }
}

/// `true` when the address is reachable over the internet ([`Reach::Public`]).
pub fn is_public(addr: &Multiaddr) -> bool {
    reach(addr).is_public()
}

/// The network group of an address: addresses in one group share their share of the book.
///
/// Serialised in the book file (a source's group is kept with each entry); the variants are part
/// of the file format.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NetGroup {
    /// An IPv4 /16 (also IPv4 carried inside IPv6): its first two octets.
    Ip4([u8; 2]),
    /// An IPv6 /32, or /36 inside `2001:470::/32`: the prefix, zero-padded to 5 bytes.
    Ip6([u8; 5]),
    /// A public DNS name's last two labels, lowercased.
    Domain(String),
    /// [`Routability::Strict`]: every loopback address.
    Local,
    /// [`Routability::Strict`]: every other non-public address; in both modes, a source address
    /// with no host the book understands.
    Unroutable,
    /// [`Routability::AllowLocal`]: one non-public host (an IP in text form, a DNS name, or
    /// `memory`).
    Host(String),
    /// Addresses we added ourselves ([`crate::Source::Local`]): configuration, bootstrap list.
    Ourselves,
}

impl NetGroup {
    /// An unambiguous byte encoding, fed to the keyed hash: a tag, then the payload
    /// (length-prefixed when its length varies).
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        match self {
            NetGroup::Ip4(p) => {
                out.push(1);
                out.extend_from_slice(p);
            }
            NetGroup::Ip6(p) => {
                out.push(2);
                out.extend_from_slice(p);
            }
            NetGroup::Domain(name) => {
                out.push(3);
                push_len_prefixed(out, name.as_bytes());
            }
            NetGroup::Local => out.push(4),
            NetGroup::Unroutable => out.push(5),
            NetGroup::Host(name) => {
                out.push(6);
                push_len_prefixed(out, name.as_bytes());
            }
            NetGroup::Ourselves => out.push(7),
        }
    }
}

fn push_len_prefixed(out: &mut Vec<u8>, bytes: &[u8]) {
    // Names come from multiaddrs of at most MAX_MULTIADDR_LEN bytes, so u32 always fits.
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
}

impl fmt::Display for NetGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NetGroup::Ip4([a, b]) => write!(f, "{a}.{b}.0.0/16"),
            NetGroup::Ip6(p) => write!(f, "ip6:{}", hex::encode(p)),
            NetGroup::Domain(d) => write!(f, "dns:{d}"),
            NetGroup::Local => f.write_str("local"),
            NetGroup::Unroutable => f.write_str("unroutable"),
            NetGroup::Host(h) => write!(f, "host:{h}"),
            NetGroup::Ourselves => f.write_str("ourselves"),
        }
    }
}

/// The network group of `addr` under the given routability mode (see the module docs).
pub fn network_group(addr: &Multiaddr, routability: Routability) -> NetGroup {
    let Some(host) = addr.iter().next() else {
        return NetGroup::Unroutable;
    };
    let r = reach(addr);
    if !r.is_public() {
        return match routability {
            Routability::Strict if r == Reach::Loopback => NetGroup::Local,
            Routability::Strict => NetGroup::Unroutable,
            Routability::AllowLocal => match host {
                Protocol::Ip4(ip) => NetGroup::Host(ip.to_string()),
                Protocol::Ip6(ip) => NetGroup::Host(canonical_ip(ip).to_string()),
                Protocol::Dns(n) | Protocol::Dns4(n) | Protocol::Dns6(n) | Protocol::Dnsaddr(n) => {
                    NetGroup::Host(normalise_name(&n))
                }
                Protocol::Memory(_) => NetGroup::Host("memory".to_owned()),
                _ => NetGroup::Unroutable,
            },
        };
    }
    match host {
        Protocol::Ip4(ip) => ip4_group(ip),
        Protocol::Ip6(ip) => ip6_group(ip),
        Protocol::Dns(n) | Protocol::Dns4(n) | Protocol::Dns6(n) | Protocol::Dnsaddr(n) => {
            NetGroup::Domain(domain_of(&normalise_name(&n)))
        }
        _ => NetGroup::Unroutable,
    }
}

/// Why an address is not one the book keeps.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidAddr {
    /// Longer than [`MAX_MULTIADDR_LEN`] bytes.
    #[error("address is {len} bytes long, more than {MAX_MULTIADDR_LEN}")]
    TooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// The first component is not `/ip4`, `/ip6`, `/dns*` or `/memory`.
    #[error("address does not start with an IP, a DNS name or /memory")]
    NoHost,
    /// An IP or DNS host not followed by `/tcp/<port>` or `/udp/<port>`.
    #[error("address has no /tcp or /udp port")]
    NoPort,
    /// Port 0 cannot be dialled.
    #[error("port 0 cannot be dialled")]
    PortZero,
    /// The unspecified address, IPv4 broadcast, multicast, or IPv6 documentation
    /// (`2001:db8::/32`): never a peer (CometBFT `Valid`).
    #[error("{0} is never a peer's address")]
    ReservedIp(IpAddr),
    /// An empty DNS name, or one with characters a host name never has.
    #[error("bad DNS name")]
    BadName,
    /// The address ends in `/p2p/<id>` with another peer's id.
    #[error("address names peer {found}, not the peer it was given for")]
    OtherPeer {
        /// The id in the address.
        found: PeerId,
    },
    /// The address's text form does not parse back to the same address (a DNS component
    /// holding a `/`, say, which the binary form carries and the text form cannot). The book
    /// file keeps addresses as text, so such an address could not be read back.
    #[error("address does not survive its text form")]
    NoTextForm,
    /// Its text form is longer than [`MAX_MULTIADDR_TEXT_LEN`] characters.
    #[error("address is {len} characters long as text, more than {MAX_MULTIADDR_TEXT_LEN}")]
    TextTooLong {
        /// Its length in characters.
        len: usize,
    },
}

/// Checks that `addr` is a dialable address of `peer`, and returns it without a trailing
/// `/p2p/<peer>` (the book keys entries by peer id; one form per address avoids duplicates).
///
/// The address returned is one whose text form parses back to it, so the book file (which
/// keeps addresses as text) always reads back what was saved: only the host and the port are
/// looked at closely, and the components after them come from peers in binary form.
pub fn validate(addr: &Multiaddr, peer: &PeerId) -> Result<Multiaddr, InvalidAddr> {
    let addr = validate_shape(addr, peer)?;
    let text = addr.to_string();
    if text.len() > MAX_MULTIADDR_TEXT_LEN {
        return Err(InvalidAddr::TextTooLong { len: text.len() });
    }
    if text.parse::<Multiaddr>().ok().as_ref() != Some(&addr) {
        return Err(InvalidAddr::NoTextForm);
    }
    Ok(addr)
}

/// [`validate`] without the text-form check: length, `/p2p/` suffix, host, port.
fn validate_shape(addr: &Multiaddr, peer: &PeerId) -> Result<Multiaddr, InvalidAddr> {
    let len = addr.len();
    if len > MAX_MULTIADDR_LEN {
        return Err(InvalidAddr::TooLong { len });
    }
    let mut addr = addr.clone();
    if let Some(Protocol::P2p(id)) = addr.iter().last() {
        if id != *peer {
            return Err(InvalidAddr::OtherPeer { found: id });
        }
        addr.pop();
    }
    let mut parts = addr.iter();
    match parts.next() {
        Some(Protocol::Ip4(ip)) => check_ip(IpAddr::V4(ip))?,
        Some(Protocol::Ip6(ip)) => check_ip(IpAddr::V6(ip))?,
        Some(Protocol::Dns(n) | Protocol::Dns4(n) | Protocol::Dns6(n)) => check_name(&n)?,
        // `/dnsaddr/<name>` resolves (TXT records) to whole multiaddrs: no port follows.
        Some(Protocol::Dnsaddr(n)) => {
            check_name(&n)?;
            return Ok(addr);
        }
        Some(Protocol::Memory(0)) => return Err(InvalidAddr::PortZero),
        Some(Protocol::Memory(_)) => return Ok(addr),
        _ => return Err(InvalidAddr::NoHost),
    }
    match parts.next() {
        Some(Protocol::Tcp(0) | Protocol::Udp(0)) => Err(InvalidAddr::PortZero),
        Some(Protocol::Tcp(_) | Protocol::Udp(_)) => Ok(addr),
        _ => Err(InvalidAddr::NoPort),
    }
}

fn check_ip(ip: IpAddr) -> Result<(), InvalidAddr> {
    let bad = match canonical_ip_addr(ip) {
        IpAddr::V4(v4) => v4.is_unspecified() || v4.is_broadcast() || v4.is_multicast(),
        IpAddr::V6(v6) => {
            v6.is_unspecified() || v6.is_multicast() || in6(v6, [0x2001, 0x0db8], 32) // RFC 3849
        }
    };
    if bad {
        Err(InvalidAddr::ReservedIp(ip))
    } else {
        Ok(())
    }
}

fn check_name(name: &str) -> Result<(), InvalidAddr> {
    // An IP address written as a name would pass as a public host whatever it is
    // (`/dns4/10.0.0.1`, `/dns/127.0.0.1`): resolvers answer such a name with the address itself
    // (found by review). Addresses go in `/ip4` and `/ip6`, where they are judged.
    if name.trim_end_matches('.').parse::<IpAddr>().is_ok() {
        return Err(InvalidAddr::BadName);
    }
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
        && name.trim_end_matches('.').split('.').all(|l| !l.is_empty());
    if ok {
        Ok(())
    } else {
        Err(InvalidAddr::BadName)
    }
}

fn normalise_name(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

fn domain_of(name: &str) -> String {
    let labels: Vec<&str> = name.rsplitn(3, '.').collect();
    match labels.as_slice() {
        [tld, second, ..] => format!("{second}.{tld}"),
        _ => name.to_owned(),
    }
}

fn dns_reach(name: &str) -> Reach {
    let name = normalise_name(name);
    if name == "localhost" || name.ends_with(".localhost") {
        return Reach::Loopback;
    }
    const PRIVATE_SUFFIXES: [&str; 5] =
        [".local", ".lan", ".internal", ".home.arpa", ".localdomain"];
    if !name.contains('.') || PRIVATE_SUFFIXES.iter().any(|s| name.ends_with(s)) {
        return Reach::Private;
    }
    Reach::Public
}

/// An IPv6 address carrying an IPv4-mapped address is treated as that IPv4 address (Go's `To4`
/// does the same in CometBFT).
fn canonical_ip(ip: Ipv6Addr) -> IpAddr {
    match ip.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(ip),
    }
}

fn canonical_ip_addr(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => canonical_ip(v6),
        v4 => v4,
    }
}

fn in4(ip: Ipv4Addr, net: [u8; 4], bits: u32) -> bool {
    let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
    u32::from(ip) & mask == u32::from(Ipv4Addr::from(net)) & mask
}

fn in6(ip: Ipv6Addr, prefix: [u16; 2], bits: u32) -> bool {
    let net = Ipv6Addr::new(prefix[0], prefix[1], 0, 0, 0, 0, 0, 0);
    let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
    u128::from(ip) & mask == u128::from(net) & mask
}

fn ip4_reach(ip: Ipv4Addr) -> Reach {
    if ip.is_loopback() || in4(ip, [0, 0, 0, 0], 8) {
        return Reach::Loopback; // CometBFT `Local`: loopback and 0.0.0.0/8
    }
    let private = in4(ip, [10, 0, 0, 0], 8) // RFC 1918
        || in4(ip, [172, 16, 0, 0], 12) // RFC 1918
        || in4(ip, [192, 168, 0, 0], 16) // RFC 1918
        || in4(ip, [169, 254, 0, 0], 16) // RFC 3927 link-local
        || in4(ip, [100, 64, 0, 0], 10) // RFC 6598 carrier-grade NAT (btcd)
        || in4(ip, [198, 18, 0, 0], 15) // RFC 2544 benchmarking (btcd)
        || in4(ip, [192, 0, 2, 0], 24) // RFC 5737 documentation (btcd)
        || in4(ip, [198, 51, 100, 0], 24) // RFC 5737
        || in4(ip, [203, 0, 113, 0], 24) // RFC 5737
        || in4(ip, [240, 0, 0, 0], 4) // reserved, and broadcast
        || ip.is_multicast()
        || ip.is_unspecified();
    if private {
        Reach::Private
    } else {
        Reach::Public
    }
}

fn ip6_reach(ip: Ipv6Addr) -> Reach {
    if let IpAddr::V4(v4) = canonical_ip(ip) {
        return ip4_reach(v4);
    }
    if ip.is_loopback() {
        return Reach::Loopback;
    }
    let private = in6(ip, [0xfc00, 0], 7) // RFC 4193 unique local
        || in6(ip, [0xfe80, 0], 10) // RFC 4862 link-local (CometBFT checks the /64)
        || in6(ip, [0x2001, 0x0010], 28) // RFC 4843 ORCHID
        || in6(ip, [0x2001, 0x0db8], 32) // RFC 3849 documentation
        || ip.is_multicast()
        || ip.is_unspecified();
    if private {
        Reach::Private
    } else {
        Reach::Public
    }
}

fn ip4_group(ip: Ipv4Addr) -> NetGroup {
    let [a, b, _, _] = ip.octets();
    NetGroup::Ip4([a, b])
}

fn ip6_group(ip: Ipv6Addr) -> NetGroup {
    let o = ip.octets();
    let embedded = |b: &[u8]| -> NetGroup {
        match b {
            [a, b, ..] => NetGroup::Ip4([*a, *b]),
            _ => NetGroup::Unroutable,
        }
    };
    if let IpAddr::V4(v4) = canonical_ip(ip) {
        return ip4_group(v4);
    }
    // RFC 6145 (::ffff:0:a.b.c.d) and RFC 6052 (64:ff9b::/96): the last four bytes.
    if u128::from(ip) >> 32 == 0xffff_0000
        || u128::from(ip) >> 32 == 0x0064_ff9b_0000_0000_0000_0000
    {
        return embedded(&o[12..]);
    }
    // RFC 3964 6to4 (2002::/16): bytes 2..6.
    if in6(ip, [0x2002, 0], 16) {
        return embedded(&o[2..6]);
    }
    // RFC 4380 Teredo (2001::/32): the last four bytes, inverted.
    if in6(ip, [0x2001, 0], 32) {
        return NetGroup::Ip4([o[12] ^ 0xff, o[13] ^ 0xff]);
    }
    // Hurricane Electric hands out /36s from 2001:470::/32 (bitcoind's exception).
    if in6(ip, [0x2001, 0x0470], 32) {
        return NetGroup::Ip6([o[0], o[1], o[2], o[3], o[4] & 0xf0]);
    }
    NetGroup::Ip6([o[0], o[1], o[2], o[3], 0])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ma(s: &str) -> Multiaddr {
        s.parse().unwrap()
    }

    fn group(s: &str) -> NetGroup {
        network_group(&ma(s), Routability::Strict)
    }

    #[test]
    fn ipv4_groups_by_slash_16() {
        assert_eq!(group("/ip4/8.8.8.8/tcp/1"), NetGroup::Ip4([8, 8]));
        assert_eq!(group("/ip4/8.8.200.1/udp/1/quic-v1"), NetGroup::Ip4([8, 8]));
        assert_ne!(group("/ip4/8.9.8.8/tcp/1"), group("/ip4/8.8.8.8/tcp/1"));
    }

    #[test]
    fn ipv6_groups_by_slash_32_and_embedded_ipv4() {
        assert_eq!(
            group("/ip6/2a00:1450:4001:81b::200e/tcp/1"),
            NetGroup::Ip6([0x2a, 0x00, 0x14, 0x50, 0])
        );
        assert_eq!(
            group("/ip6/2a00:1450:ffff::1/tcp/1"),
            group("/ip6/2a00:1450:4001::1/tcp/1")
        );
        // he.net: /36.
        assert_ne!(
            group("/ip6/2001:470:1000::1/tcp/1"),
            group("/ip6/2001:470:2000::1/tcp/1")
        );
        assert_eq!(
            group("/ip6/2001:470:1000::1/tcp/1"),
            group("/ip6/2001:470:1fff::1/tcp/1")
        );
        // IPv4 inside IPv6 is grouped as the IPv4 address.
        assert_eq!(group("/ip6/::ffff:8.8.4.4/tcp/1"), NetGroup::Ip4([8, 8]));
        assert_eq!(group("/ip6/64:ff9b::808:404/tcp/1"), NetGroup::Ip4([8, 8]));
        assert_eq!(group("/ip6/2002:808:404::1/tcp/1"), NetGroup::Ip4([8, 8]));
        // Teredo: 8.8.4.4 inverted is f7f7:fbfb.
        assert_eq!(
            group("/ip6/2001:0:1:2:3:4:f7f7:fbfb/tcp/1"),
            NetGroup::Ip4([8, 8])
        );
    }

    #[test]
    fn dns_groups_by_registered_domain() {
        assert_eq!(
            group("/dns4/a.b.Example.COM./tcp/1"),
            NetGroup::Domain("example.com".into())
        );
        assert_eq!(
            group("/dns/example.com/tcp/1"),
            group("/dnsaddr/x.example.com")
        );
        assert_eq!(reach(&ma("/dns/localhost/tcp/1")), Reach::Loopback);
        assert_eq!(reach(&ma("/dns/nas.local/tcp/1")), Reach::Private);
        assert_eq!(reach(&ma("/dns/nas/tcp/1")), Reach::Private);
    }

    #[test]
    fn non_public_addresses_by_mode() {
        for (a, r) in [
            ("/ip4/127.0.0.5/tcp/1", Reach::Loopback),
            ("/ip4/0.1.2.3/tcp/1", Reach::Loopback),
            ("/ip6/::1/tcp/1", Reach::Loopback),
            ("/memory/7", Reach::Loopback),
            ("/ip4/10.1.2.3/tcp/1", Reach::Private),
            ("/ip4/172.20.0.1/tcp/1", Reach::Private),
            ("/ip4/192.168.1.1/tcp/1", Reach::Private),
            ("/ip4/169.254.1.1/tcp/1", Reach::Private),
            ("/ip4/100.64.1.1/tcp/1", Reach::Private),
            ("/ip6/fd00::1/tcp/1", Reach::Private),
            ("/ip6/fe80::1/tcp/1", Reach::Private),
            ("/ip6/::ffff:10.0.0.1/tcp/1", Reach::Private),
            ("/ip4/1.1.1.1/tcp/1", Reach::Public),
            ("/ip4/172.32.0.1/tcp/1", Reach::Public),
            ("/ip6/2a00::1/tcp/1", Reach::Public),
        ] {
            assert_eq!(reach(&ma(a)), r, "{a}");
        }
        assert_eq!(group("/ip4/127.0.0.5/tcp/1"), NetGroup::Local);
        assert_eq!(group("/ip4/10.0.0.1/tcp/1"), NetGroup::Unroutable);
        let allow = |s| network_group(&ma(s), Routability::AllowLocal);
        assert_eq!(
            allow("/ip4/127.0.0.5/tcp/1"),
            NetGroup::Host("127.0.0.5".into())
        );
        assert_ne!(allow("/ip4/127.0.0.5/tcp/1"), allow("/ip4/127.0.0.6/tcp/1"));
        assert_eq!(allow("/ip4/8.8.8.8/tcp/1"), NetGroup::Ip4([8, 8]));
    }

    #[test]
    fn validation() {
        let p =
            PeerId::from_multihash(libp2p::multihash::Multihash::wrap(0, b"p").unwrap()).unwrap();
        let q =
            PeerId::from_multihash(libp2p::multihash::Multihash::wrap(0, b"q").unwrap()).unwrap();
        let ok = |s: &str| validate(&ma(s), &p);
        assert_eq!(ok("/ip4/1.2.3.4/tcp/5"), Ok(ma("/ip4/1.2.3.4/tcp/5")));
        assert_eq!(
            ok(&format!("/ip4/1.2.3.4/tcp/5/p2p/{p}")),
            Ok(ma("/ip4/1.2.3.4/tcp/5"))
        );
        assert_eq!(
            ok(&format!("/ip4/1.2.3.4/tcp/5/p2p/{q}")),
            Err(InvalidAddr::OtherPeer { found: q })
        );
        assert!(ok("/ip4/1.2.3.4/udp/5/quic-v1").is_ok());
        assert!(ok("/dnsaddr/bootstrap.example.org").is_ok());
        assert_eq!(ok("/ip4/1.2.3.4/tcp/0"), Err(InvalidAddr::PortZero));
        assert_eq!(ok("/ip4/1.2.3.4"), Err(InvalidAddr::NoPort));
        assert!(matches!(
            ok("/ip4/0.0.0.0/tcp/1"),
            Err(InvalidAddr::ReservedIp(_))
        ));
        assert!(matches!(
            ok("/ip4/255.255.255.255/tcp/1"),
            Err(InvalidAddr::ReservedIp(_))
        ));
        assert!(matches!(
            ok("/ip6/2001:db8::1/tcp/1"),
            Err(InvalidAddr::ReservedIp(_))
        ));
        assert!(matches!(
            ok("/ip6/::/tcp/1"),
            Err(InvalidAddr::ReservedIp(_))
        ));
        assert_eq!(ok("/tcp/5"), Err(InvalidAddr::NoHost));
        assert_eq!(ok("/dns/a..b/tcp/5"), Err(InvalidAddr::BadName));
        assert_eq!(ok("/dns4/10.0.0.1/tcp/5"), Err(InvalidAddr::BadName));
        assert_eq!(ok("/dns/127.0.0.1./tcp/5"), Err(InvalidAddr::BadName));
        assert!(ok("/dns4/10.0.0.1.example.org/tcp/5").is_ok());
        let long = format!("/dns/{}/tcp/5", "a".repeat(400));
        assert!(matches!(ok(&long), Err(InvalidAddr::TooLong { .. })));
        // Short as bytes, long as text (the form the book file keeps): 253 bytes, over 1,000
        // characters.
        let padded = format!("/ip4/1.2.3.4/tcp/5{}", "/ip4/255.255.255.255".repeat(49));
        let padded: Multiaddr = padded.parse().unwrap();
        assert!(padded.len() <= MAX_MULTIADDR_LEN, "{}", padded.len());
        assert!(matches!(
            validate(&padded, &p),
            Err(InvalidAddr::TextTooLong { .. })
        ));
        // Binary forms that do not survive their text form, after the host and port.
        for tail in [Protocol::Dns("x/y".into()), Protocol::Dnsaddr("p/q".into())] {
            let odd = ma("/ip4/1.2.3.4/tcp/5").with(tail);
            assert_eq!(validate(&odd, &p), Err(InvalidAddr::NoTextForm), "{odd}");
        }
        assert!(ok("/ip4/1.2.3.4/tcp/5/ws").is_ok());
    }
}
