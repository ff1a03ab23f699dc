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
