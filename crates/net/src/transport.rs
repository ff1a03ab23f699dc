//! The transport: TCP (no delay), Noise, then Yamux and/or Mplex, negotiated by
//! multistream-select — the reference's stack (`codex-protocol.md` §1), plus Yamux.
//!
//! The reference offers only Mplex (`/mplex/6.7.0`); cairn offers Yamux first and Mplex second,
//! so two cairn nodes use Yamux and a reference node gets Mplex. [`Muxers`] can narrow the
//! offer to one of them (benchmarks compare the two).

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
    let base = tcp::tokio::Transport::new(tcp::Config::default().nodelay(true))
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
