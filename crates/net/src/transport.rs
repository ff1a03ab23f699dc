//! The transport: TCP (no delay), Noise, then Yamux and/or Mplex, negotiated by
//! multistream-select — the reference's stack (`codex-protocol.md` §1), plus Yamux.
//!
//! The reference offers only Mplex (`/mplex/6.7.0`); cairn offers Yamux first and Mplex second,
//! so two cairn nodes use Yamux and a reference node gets Mplex. [`Muxers`] can narrow the
//! offer to one of them (benchmarks compare the two).
//!
//! Every TCP connection, dialled or accepted, has keepalive probes on ([`TCP_KEEPALIVE_IDLE`]):
//! the reference mounts no ping protocol, and the block exchange keeps connections open, so
//! without them a reference peer that vanished (powered off, cut off) kept its connection, and
//! the slot it takes, for good. libp2p-tcp has no keepalive setting; the option is set on each
//! socket as the transport hands it over.

use std::time::Duration;

use libp2p::{
    PeerId, Transport,
    core::{muxing::StreamMuxerBox, transport::Boxed, upgrade},
    identity::Keypair,
    noise, tcp, yamux,
};

/// Time allowed for the Noise handshake and muxer negotiation of a new connection.
pub const UPGRADE_TIMEOUT: Duration = Duration::from_secs(20);

/// Mplex channels per connection, as the reference allows (`maxChannCount` 200).
pub const MPLEX_MAX_STREAMS: usize = 200;

/// Mplex frames buffered per stream before the connection waits for that stream's reader.
/// rust-mplex's default reaction to a full buffer is to reset the stream, which would kill a
/// busy long-lived block-exchange stream; cairn blocks instead (backpressure). 64 frames of
/// [`MPLEX_SPLIT_SEND_BYTES`] hold three 20-block deliveries from a cairn peer.
pub const MPLEX_MAX_BUFFERED_FRAMES: usize = 64;

/// Mplex frame size when sending: 64 KiB, so a 1.3 MB delivery is 21 frames rather than 165 of
/// the default 8 KiB (the spec allows up to 1 MiB).
pub const MPLEX_SPLIT_SEND_BYTES: usize = 64 * 1024;

/// Idle time on a TCP connection before the kernel sends the first keepalive probe. Idle
/// means nothing sent or received, not even the swarm's pings.
pub const TCP_KEEPALIVE_IDLE: Duration = Duration::from_secs(60);

/// Time between unanswered keepalive probes.
pub const TCP_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// Unanswered keepalive probes after which the kernel closes the connection: a vanished peer's
/// connection closes about 2 minutes after it went quiet ([`TCP_KEEPALIVE_IDLE`] + 6 ×
/// [`TCP_KEEPALIVE_INTERVAL`]). A live peer answers probes from its kernel, whatever its
/// process is doing.
pub const TCP_KEEPALIVE_PROBES: u32 = 6;

/// Turns keepalive probes on for `stream` ([`TCP_KEEPALIVE_IDLE`]). A socket that refuses is
/// used as it is: probes only close dead connections sooner.
fn with_keepalive(stream: tcp::tokio::TcpStream) -> tcp::tokio::TcpStream {
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(TCP_KEEPALIVE_IDLE)
        .with_interval(TCP_KEEPALIVE_INTERVAL)
        .with_retries(TCP_KEEPALIVE_PROBES);
    if let Err(e) = socket2::SockRef::from(&stream.0).set_tcp_keepalive(&keepalive) {
        tracing::debug!(error = %e, "TCP keepalive not set");
    }
    stream
}

/// TCP (no delay, keepalive probes), before any upgrade.
fn tcp_transport() -> impl Transport<
    Output = tcp::tokio::TcpStream,
    Error = std::io::Error,
    ListenerUpgrade: Send,
    Dial: Send,
> + Send
+ Unpin {
    tcp::tokio::Transport::new(tcp::Config::default().nodelay(true))
        .map(|stream, _| with_keepalive(stream))
}

/// Which stream multiplexers to offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Muxers {
    /// Yamux first, Mplex second (the default).
    #[default]
    YamuxThenMplex,
    /// Only Yamux.
    Yamux,
    /// Only Mplex (what the reference offers).
    Mplex,
}

fn mplex() -> libp2p_mplex::Config {
    let mut c = libp2p_mplex::Config::new();
    c.set_max_num_streams(MPLEX_MAX_STREAMS)
        .set_max_buffer_size(MPLEX_MAX_BUFFERED_FRAMES)
        .set_max_buffer_behaviour(libp2p_mplex::MaxBufferBehaviour::Block)
        .set_split_send_size(MPLEX_SPLIT_SEND_BYTES);
    c
}

/// Builds the boxed transport for `key`.
pub fn build(
    key: &Keypair,
    muxers: Muxers,
) -> Result<Boxed<(PeerId, StreamMuxerBox)>, noise::Error> {
    let noise = noise::Config::new(key)?;
    let base = tcp_transport()
        .upgrade(upgrade::Version::V1)
        .authenticate(noise);
    Ok(match muxers {
        Muxers::YamuxThenMplex => base
            .multiplex(upgrade::SelectUpgrade::new(
                yamux::Config::default(),
                mplex(),
            ))
            .timeout(UPGRADE_TIMEOUT)
            .map(|(peer, m), _| (peer, StreamMuxerBox::new(m)))
            .boxed(),
        Muxers::Yamux => base
            .multiplex(yamux::Config::default())
            .timeout(UPGRADE_TIMEOUT)
            .map(|(peer, m), _| (peer, StreamMuxerBox::new(m)))
            .boxed(),
        Muxers::Mplex => base
            .multiplex(mplex())
            .timeout(UPGRADE_TIMEOUT)
            .map(|(peer, m), _| (peer, StreamMuxerBox::new(m)))
            .boxed(),
    })
}

/// Checks that no other socket listens on `addr`'s TCP port, for a listen address with a fixed
/// port (`/ip4|ip6/…/tcp/<port>`, port ≠ 0; anything else passes).
///
/// libp2p-tcp sets `SO_REUSEPORT` on every listening socket, so a second node told to listen on
/// a port another node holds binds it too, without an error, and the kernel then splits new
/// connections between the two: dials to the first node reach the second about half the time
/// and fail with a wrong peer id. A plain bind (no `SO_REUSEPORT`) of the same address fails
/// while any listener holds it, so it is tried first and dropped at once. An IPv6 probe is
/// IPv6-only, as libp2p-tcp's listeners are, so a node listening on the same port over IPv4
/// and IPv6 does not trip over itself.
pub fn probe_free_port(addr: &libp2p::Multiaddr) -> std::io::Result<()> {
    use libp2p::multiaddr::Protocol;
    use socket2::{Domain, Socket, Type};
    let mut parts = addr.iter();
    let ip: std::net::IpAddr = match parts.next() {
        Some(Protocol::Ip4(ip)) => ip.into(),
        Some(Protocol::Ip6(ip)) => ip.into(),
        _ => return Ok(()),
    };
    let port = match parts.next() {
        Some(Protocol::Tcp(port)) if port != 0 => port,
        _ => return Ok(()),
    };
    let at = std::net::SocketAddr::new(ip, port);
    let socket = Socket::new(Domain::for_address(at), Type::STREAM, None)?;
    if at.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    // As a listener that closed a moment ago left its port (connections in TIME_WAIT).
    socket.set_reuse_address(true)?;
    socket.bind(&at.into())?;
    socket.listen(1)
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;

    use libp2p::core::{
        Endpoint,
        transport::{DialOpts, ListenerId, PortUse, TransportEvent},
    };

    use super::*;

    const WAIT: Duration = Duration::from_secs(10);

    fn check_keepalive(stream: &tcp::tokio::TcpStream, side: &str) {
        let socket = socket2::SockRef::from(&stream.0);
        assert!(socket.keepalive().unwrap(), "{side}: probes on");
        assert_eq!(socket.tcp_keepalive_time().unwrap(), TCP_KEEPALIVE_IDLE);
        assert_eq!(
            socket.tcp_keepalive_interval().unwrap(),
            TCP_KEEPALIVE_INTERVAL
        );
        assert_eq!(
            socket.tcp_keepalive_retries().unwrap(),
            TCP_KEEPALIVE_PROBES
        );
    }

    /// The next event of transport `t`.
    async fn next<T: Transport + Unpin>(t: &mut T) -> TransportEvent<T::ListenerUpgrade, T::Error> {
        futures::future::poll_fn(|cx| Pin::new(&mut *t).poll(cx)).await
    }

    /// Both ends of a connection made by the transport have keepalive probes on, as set.
    #[tokio::test]
    async fn dialled_and_accepted_connections_have_keepalive_probes() {
        let mut listener = tcp_transport();
        listener
            .listen_on(ListenerId::next(), "/ip4/127.0.0.1/tcp/0".parse().unwrap())
            .unwrap();
        let addr = tokio::time::timeout(WAIT, async {
            loop {
                if let TransportEvent::NewAddress { listen_addr, .. } = next(&mut listener).await {
                    return listen_addr;
                }
            }
        })
        .await
        .expect("listening");
        let mut dialer = tcp_transport();
        let dial = dialer
            .dial(
                addr,
                DialOpts {
                    role: Endpoint::Dialer,
                    port_use: PortUse::New,
                },
            )
            .unwrap();
        let accept = async {
            loop {
                if let TransportEvent::Incoming { upgrade, .. } = next(&mut listener).await {
                    return upgrade.await;
                }
            }
        };
        let (dialled, accepted) = tokio::time::timeout(WAIT, futures::future::join(dial, accept))
            .await
            .expect("connected");
        check_keepalive(&dialled.unwrap(), "dialled");
        check_keepalive(&accepted.unwrap(), "accepted");
    }
}
