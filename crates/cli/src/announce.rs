//! What `cairn start` announces: the IP in its DHT record and the libp2p addresses in its
//! provider record, from its listen addresses and `--nat`.

use std::net::{IpAddr, Ipv4Addr};

use cairn_node::net::{Multiaddr, Protocol};

use crate::config::Nat;

/// Most addresses put into the provider record.
pub(crate) const MAX_ANNOUNCED_ADDRS: usize = 16;

/// The IP of a multiaddr, if it has one.
fn ip_of(a: &Multiaddr) -> Option<IpAddr> {
    a.iter().find_map(|p| match p {
        Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
        Protocol::Ip6(ip) => Some(IpAddr::V6(ip)),
        _ => None,
    })
}

/// The IP put into the DHT record: `extip:`'s when it is an IPv4 address, else the first
/// non-loopback IPv4 address the node listens on, else 127.0.0.1. The DHT runs over IPv4 only
/// (its socket binds `0.0.0.0`, and nodes read only an IPv4 address from a record), so an
/// IPv6 `extip:` goes into the provider record alone: in the DHT record it would make the node
/// unreachable there.
pub(crate) fn dht_ip(nat: Nat, listening: &[Multiaddr]) -> IpAddr {
    match nat {
        Nat::ExtIp(ip @ IpAddr::V4(_)) => ip,
        Nat::ExtIp(IpAddr::V6(_)) | Nat::Auto => listening
            .iter()
            .filter_map(ip_of)
            .find(|ip| ip.is_ipv4() && !ip.is_loopback() && !ip.is_unspecified())
            .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)),
    }
}

/// The libp2p addresses put into the provider record: the listen addresses with an IP (not an
/// unspecified one), with `extip:`'s IP (v4 or v6) in place of theirs, each once (one port on
/// several interfaces is one address behind `extip:`), in the order they come; at most
/// [`MAX_ANNOUNCED_ADDRS`].
pub(crate) fn provider_addrs(nat: Nat, listening: &[Multiaddr]) -> Vec<Multiaddr> {
    let mut announced: Vec<Multiaddr> = Vec::new();
    for a in listening {
        if announced.len() == MAX_ANNOUNCED_ADDRS {
            break;
        }
        if ip_of(a).is_none_or(|ip| ip.is_unspecified()) {
            continue;
        }
        let a = match nat {
            Nat::ExtIp(ext) => a
                .iter()
                .map(|p| match (p, ext) {
                    (Protocol::Ip4(_) | Protocol::Ip6(_), IpAddr::V4(ip)) => Protocol::Ip4(ip),
                    (Protocol::Ip4(_) | Protocol::Ip6(_), IpAddr::V6(ip)) => Protocol::Ip6(ip),
                    (p, _) => p,
                })
                .collect(),
            Nat::Auto => a.clone(),
        };
        // A linear search: the list holds at most MAX_ANNOUNCED_ADDRS.
        if !announced.contains(&a) {
            announced.push(a);
        }
    }
    announced
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(list: &[&str]) -> Vec<Multiaddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    /// Without `extip:` the listen addresses are announced as they are (but the unspecified
    /// ones), and the DHT record takes the first non-loopback IPv4 address.
    #[test]
    fn without_extip_the_listen_addresses_are_announced() {
        let listening = addrs(&[
            "/ip4/0.0.0.0/tcp/1",
            "/ip4/127.0.0.1/tcp/8070",
            "/ip6/::1/tcp/8070",
            "/ip4/192.168.1.5/tcp/8070",
        ]);
        assert_eq!(
            provider_addrs(Nat::Auto, &listening),
            addrs(&[
                "/ip4/127.0.0.1/tcp/8070",
                "/ip6/::1/tcp/8070",
                "/ip4/192.168.1.5/tcp/8070",
            ])
        );
        assert_eq!(
            dht_ip(Nat::Auto, &listening),
            "192.168.1.5".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            dht_ip(Nat::Auto, &listening[..3]),
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        );
    }

    /// `extip:` with an IPv4 address: every listen address takes it, and the addresses that
    /// become the same (one port on several interfaces) are announced once.
    #[test]
    fn an_ipv4_extip_replaces_every_ip_once() {
        let listening = addrs(&[
            "/ip4/127.0.0.1/tcp/8070",
            "/ip4/192.168.1.5/tcp/8070",
            "/ip6/::1/tcp/8070",
            "/ip4/10.0.0.2/tcp/8071",
        ]);
        let nat = Nat::ExtIp("203.0.113.7".parse().unwrap());
        assert_eq!(
            provider_addrs(nat, &listening),
            addrs(&["/ip4/203.0.113.7/tcp/8070", "/ip4/203.0.113.7/tcp/8071"])
        );
        assert_eq!(
            dht_ip(nat, &listening),
            "203.0.113.7".parse::<IpAddr>().unwrap()
        );
    }

    /// `extip:` with an IPv6 address goes into the provider record too (it was left out: the
    /// interface addresses were announced), but not into the DHT record, which must be IPv4.
    #[test]
    fn an_ipv6_extip_replaces_every_ip_once() {
        let listening = addrs(&[
            "/ip4/127.0.0.1/tcp/8070",
            "/ip6/::1/tcp/8070",
            "/ip4/192.168.1.5/tcp/8070",
        ]);
        let nat = Nat::ExtIp("2001:db8::7".parse().unwrap());
        assert_eq!(
            provider_addrs(nat, &listening),
            addrs(&["/ip6/2001:db8::7/tcp/8070"])
        );
        // The DHT, IPv4 only, keeps an IPv4 address of the node's.
        assert_eq!(
            dht_ip(nat, &listening),
            "192.168.1.5".parse::<IpAddr>().unwrap()
        );
    }

    /// Duplicates do not take the record's slots: 40 interfaces on 40 ports behind one
    /// `extip:` give 16 distinct addresses.
    #[test]
    fn duplicates_do_not_fill_the_record() {
        let mut listening = Vec::new();
        for port in 0..40u16 {
            for host in ["127.0.0.1", "192.168.1.5"] {
                listening.push(format!("/ip4/{host}/tcp/{}", 9000 + port).parse().unwrap());
            }
        }
        let nat = Nat::ExtIp("203.0.113.7".parse().unwrap());
        let announced = provider_addrs(nat, &listening);
        let expected: Vec<Multiaddr> = (0..MAX_ANNOUNCED_ADDRS as u16)
            .map(|p| {
                format!("/ip4/203.0.113.7/tcp/{}", 9000 + p)
                    .parse()
                    .unwrap()
            })
            .collect();
        assert_eq!(announced, expected);
        // The same listen address twice (Auto) is announced once.
        let twice = addrs(&["/ip4/192.168.1.5/tcp/1", "/ip4/192.168.1.5/tcp/1"]);
        assert_eq!(provider_addrs(Nat::Auto, &twice), twice[..1].to_vec());
    }
}
