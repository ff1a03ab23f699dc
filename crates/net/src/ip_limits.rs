//! Inbound connections per remote host.
//!
//! `connection_limits` bounds inbound connections only in total: at most
//! [`crate::service::MAX_PENDING_INCOMING`] in their handshake and `--max-inbound-peers`
//! established. One host could take all of them: open the pending ones and send nothing
//! (each holds its slot for the transport's upgrade timeout, then it opens another), or connect
//! with a handful of throwaway identities, which the block exchange keeps alive for good. No
//! other node could then connect to us (review). CometBFT refuses a second connection from one
//! IP by default; we allow a few, since several nodes may share one address behind a NAT.
//!
//! This behaviour refuses an inbound connection from a host that already has
//! [`MAX_PENDING_INCOMING_PER_HOST`] connections in their handshake, or, once the handshake
//! is done, [`MAX_INBOUND_PER_HOST`] established inbound connections. A host is an IPv4
//! address or an IPv6 /64 (what one machine gets). Loopback is exempt: local test networks
//! and benchmarks run many nodes on 127.0.0.1, and a local user can do worse than connect.
//! Outbound connections are ours and not counted.

use std::{
    collections::HashMap,
    convert::Infallible,
    net::IpAddr,
    task::{Context, Poll},
};

use libp2p::{
    Multiaddr, PeerId,
    core::{ConnectedPoint, Endpoint, multiaddr::Protocol, transport::PortUse},
    swarm::{
        ConnectionClosed, ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler,
        THandlerInEvent, THandlerOutEvent, ToSwarm, behaviour::ConnectionEstablished, dummy,
    },
};

/// Inbound connections still in their handshake from one host. Honest nodes open one at a
/// time (two when both sides dial at once).
pub const MAX_PENDING_INCOMING_PER_HOST: usize = 4;
/// Established inbound connections from one host: a few nodes behind one NAT, one connection
/// each (the per-peer limit allows two when both sides dial at once).
pub const MAX_INBOUND_PER_HOST: usize = 4;

/// A remote host: an IPv4 address, or the /64 of an IPv6 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Host {
    /// An IPv4 address (or an IPv4-mapped IPv6 one).
    V4([u8; 4]),
    /// The first 64 bits of an IPv6 address.
    V6([u8; 8]),
}

impl Host {
    /// The host of `addr`'s first `/ip4` or `/ip6` part; `None` for loopback (exempt) or an
    /// address without one (a relay or memory transport, never from TCP).
    pub fn of(addr: &Multiaddr) -> Option<Host> {
        let ip = addr.iter().find_map(|p| match p {
            Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
            Protocol::Ip6(ip) => Some(IpAddr::V6(ip)),
            _ => None,
        })?;
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        if ip.is_loopback() {
            return None;
        }
        Some(match ip {
            IpAddr::V4(v4) => Host::V4(v4.octets()),
            IpAddr::V6(v6) => {
                let mut prefix = [0u8; 8];
                prefix.copy_from_slice(&v6.octets()[..8]);
                Host::V6(prefix)
            }
        })
    }
}

/// Why a connection was refused.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// Too many connections from the host in their handshake.
    #[error("{0} inbound connections from this host are in their handshake already")]
    Pending(usize),
    /// Too many established inbound connections from the host.
    #[error("{0} inbound connections from this host are established already")]
    Established(usize),
}

/// Connections counted per host, by connection id.
#[derive(Debug, Default)]
struct Counted {
    by_id: HashMap<ConnectionId, Host>,
    per_host: HashMap<Host, usize>,
}

impl Counted {
    fn count(&self, host: &Host) -> usize {
        self.per_host.get(host).copied().unwrap_or(0)
    }

    fn add(&mut self, id: ConnectionId, host: Host) {
        if self.by_id.insert(id, host).is_none() {
            *self.per_host.entry(host).or_default() += 1;
        }
    }

    fn remove(&mut self, id: &ConnectionId) {
        let Some(host) = self.by_id.remove(id) else {
            return;
        };
        if let Some(n) = self.per_host.get_mut(&host) {
            *n -= 1;
            if *n == 0 {
                self.per_host.remove(&host);
            }
        }
    }

    fn len(&self) -> usize {
        self.by_id.len()
    }
}

/// The behaviour (module docs).
#[derive(Debug)]
pub struct Behaviour {
    max_pending: usize,
    max_established: usize,
    pending: Counted,
    established: Counted,
}

impl Default for Behaviour {
    fn default() -> Behaviour {
        Behaviour::new(MAX_PENDING_INCOMING_PER_HOST, MAX_INBOUND_PER_HOST)
    }
}

impl Behaviour {
    /// Limits of `max_pending` handshakes and `max_established` connections per host.
    pub fn new(max_pending: usize, max_established: usize) -> Behaviour {
        Behaviour {
            max_pending,
            max_established,
            pending: Counted::default(),
            established: Counted::default(),
        }
    }

    /// Inbound connections counted: (in their handshake, established).
    pub fn counted(&self) -> (usize, usize) {
        (self.pending.len(), self.established.len())
    }
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_pending_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        _local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        let Some(host) = Host::of(remote_addr) else {
            return Ok(());
        };
        let n = self.pending.count(&host);
        if n >= self.max_pending {
            return Err(ConnectionDenied::new(Refused::Pending(n)));
        }
        self.pending.add(connection_id, host);
        Ok(())
    }

    fn handle_established_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        _peer: PeerId,
        _local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.pending.remove(&connection_id);
        if let Some(host) = Host::of(remote_addr) {
            let n = self.established.count(&host);
            if n >= self.max_established {
                return Err(ConnectionDenied::new(Refused::Established(n)));
            }
        }
        // Counted once established (another behaviour may still refuse it).
        Ok(dummy::ConnectionHandler)
    }

    fn handle_established_outbound_connection(
        &mut self,
        _connection_id: ConnectionId,
        _peer: PeerId,
        _addr: &Multiaddr,
        _role_override: Endpoint,
        _port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match event {
            FromSwarm::ConnectionEstablished(ConnectionEstablished {
                connection_id,
                endpoint: ConnectedPoint::Listener { send_back_addr, .. },
                ..
            }) => {
                self.pending.remove(&connection_id);
                if let Some(host) = Host::of(send_back_addr) {
                    self.established.add(connection_id, host);
                }
            }
            FromSwarm::ConnectionClosed(ConnectionClosed { connection_id, .. }) => {
                self.established.remove(&connection_id);
            }
            FromSwarm::ListenFailure(f) => self.pending.remove(&f.connection_id),
            _ => {}
        }
    }

    fn on_connection_handler_event(
        &mut self,
        _peer: PeerId,
        _connection: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        libp2p::core::util::unreachable(event)
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> Multiaddr {
        s.parse().unwrap()
    }

    #[test]
    fn hosts_are_ipv4_addresses_and_ipv6_prefixes_and_loopback_is_exempt() {
        let a = Host::of(&addr("/ip4/192.0.2.1/tcp/1"));
        assert_eq!(a, Host::of(&addr("/ip4/192.0.2.1/tcp/2")));
        assert_ne!(a, Host::of(&addr("/ip4/192.0.2.2/tcp/1")));
        assert_eq!(a, Host::of(&addr("/ip6/::ffff:192.0.2.1/tcp/1")));
        let b = Host::of(&addr("/ip6/2001:db8:1:2::1/tcp/1"));
        assert!(b.is_some());
        assert_eq!(b, Host::of(&addr("/ip6/2001:db8:1:2:ffff::9/tcp/1")));
        assert_ne!(b, Host::of(&addr("/ip6/2001:db8:1:3::1/tcp/1")));
        for exempt in [
            "/ip4/127.0.0.1/tcp/1",
            "/ip4/127.9.9.9/tcp/1",
            "/ip6/::1/tcp/1",
        ] {
            assert_eq!(Host::of(&addr(exempt)), None, "{exempt}");
        }
        assert_eq!(Host::of(&addr("/memory/5")), None);
    }

    fn listener(remote: &Multiaddr) -> ConnectedPoint {
        ConnectedPoint::Listener {
            local_addr: addr("/ip4/192.0.2.100/tcp/8070"),
            send_back_addr: remote.clone(),
        }
    }

    /// Drives the behaviour as the swarm does: pending, then established (counted by the
    /// swarm event), then closed.
    #[test]
    fn one_host_gets_a_bounded_number_of_inbound_connections() {
        let mut b = Behaviour::new(2, 3);
        let local = addr("/ip4/192.0.2.100/tcp/8070");
        let host = addr("/ip4/198.51.100.7/tcp/4001");
        let other = addr("/ip4/198.51.100.8/tcp/4001");
        let lo = addr("/ip4/127.0.0.1/tcp/4001");
        let mut next = 0;
        let mut id = || {
            next += 1;
            ConnectionId::new_unchecked(next)
        };
        // Handshakes: two from the host, the third refused; others and loopback unaffected.
        let (p1, p2) = (id(), id());
        assert!(
            b.handle_pending_inbound_connection(p1, &local, &host)
                .is_ok()
        );
        assert!(
            b.handle_pending_inbound_connection(p2, &local, &host)
                .is_ok()
        );
        assert!(
            b.handle_pending_inbound_connection(id(), &local, &host)
                .is_err()
        );
        assert!(
            b.handle_pending_inbound_connection(id(), &local, &other)
                .is_ok()
        );
        for _ in 0..10 {
            assert!(
                b.handle_pending_inbound_connection(id(), &local, &lo)
                    .is_ok()
            );
        }
        // A handshake that fails frees its slot.
        let failed = ListenFailureArgs::new(p2, &local, &host);
        b.on_swarm_event(failed.event());
        assert!(
            b.handle_pending_inbound_connection(id(), &local, &host)
                .is_ok()
        );
        // Established: three from the host, the fourth refused.
        let peer = PeerId::random();
        let mut established = Vec::new();
        for _ in 0..3 {
            let c = id();
            assert!(
                b.handle_established_inbound_connection(c, peer, &local, &host)
                    .is_ok()
            );
            let endpoint = listener(&host);
            b.on_swarm_event(FromSwarm::ConnectionEstablished(ConnectionEstablished {
                peer_id: peer,
                connection_id: c,
                endpoint: &endpoint,
                failed_addresses: &[],
                other_established: 0,
            }));
            established.push(c);
        }
        assert!(
            b.handle_established_inbound_connection(id(), peer, &local, &host)
                .is_err()
        );
        assert!(
            b.handle_established_inbound_connection(id(), peer, &local, &other)
                .is_ok()
        );
        // One closes: room for one more.
        let endpoint = listener(&host);
        b.on_swarm_event(FromSwarm::ConnectionClosed(ConnectionClosed {
            peer_id: peer,
            connection_id: established[0],
            endpoint: &endpoint,
            cause: None,
            remaining_established: 2,
        }));
        assert!(
            b.handle_established_inbound_connection(id(), peer, &local, &host)
                .is_ok()
        );
        assert_eq!(b.counted().1, 2);
    }

    /// What a `ListenFailure` event borrows.
    struct ListenFailureArgs {
        id: ConnectionId,
        local: Multiaddr,
        remote: Multiaddr,
        error: libp2p::swarm::ListenError,
    }

    impl ListenFailureArgs {
        fn new(id: ConnectionId, local: &Multiaddr, remote: &Multiaddr) -> ListenFailureArgs {
            ListenFailureArgs {
                id,
                local: local.clone(),
                remote: remote.clone(),
                error: libp2p::swarm::ListenError::Aborted,
            }
        }

        fn event(&self) -> FromSwarm<'_> {
            FromSwarm::ListenFailure(libp2p::swarm::behaviour::ListenFailure {
                local_addr: &self.local,
                send_back_addr: &self.remote,
                error: &self.error,
                connection_id: self.id,
                peer_id: None,
            })
        }
    }
}
