//! The identify message a cairn node sends must be one the reference node accepts.
//!
//! The reference (nim-libp2p `libp2p/protocols/identify.nim`, `decodeMsg`, as vendored by
//! nim-codex bd360322) decodes the reply field by field and fails the whole message, and with it
//! the connection upgrade ("Incorrect message received!"), if any present field does not decode:
//! the public key (1), listen addresses (2), observed address (4), and the signed peer record (8),
//! which it reads as a standard libp2p envelope (domain `libp2p-peer-record`, payload type
//! `0x0301`). A live reference node dropped every connection from cairn when cairn sent
//! rust-libp2p's legacy record (domain `libp2p-routing-state`). This test reads the raw reply
//! over `/ipfs/id/1.0.0` and applies those rules.

use std::time::Duration;

use cairn_net::{Keypair, NetConfig, Protocol, start, transport::Muxers};
use futures::{AsyncReadExt, StreamExt};
use libp2p::{
    Multiaddr, StreamProtocol, Swarm,
    core::{PeerRecord, SignedEnvelope},
    identity::PublicKey,
    swarm::{self, SwarmEvent},
};
use prost::Message;
use tokio_util::sync::CancellationToken;

/// Bound on every wait in this test.
const WAIT: Duration = Duration::from_secs(20);
/// The identify protocol.
const IDENTIFY: StreamProtocol = StreamProtocol::new("/ipfs/id/1.0.0");
/// The largest identify message the reference reads (`readLp(64*1024)`).
const REFERENCE_MAX_IDENTIFY: usize = 64 * 1024;

/// The identify message (libp2p identify spec), with the fields the reference reads.
#[derive(Clone, PartialEq, Message)]
struct Identify {
    #[prost(bytes = "vec", optional, tag = "1")]
    public_key: Option<Vec<u8>>,
    #[prost(bytes = "vec", repeated, tag = "2")]
    listen_addrs: Vec<Vec<u8>>,
    #[prost(string, repeated, tag = "3")]
    protocols: Vec<String>,
    #[prost(bytes = "vec", optional, tag = "4")]
    observed_addr: Option<Vec<u8>>,
    #[prost(string, optional, tag = "5")]
    protocol_version: Option<String>,
    #[prost(string, optional, tag = "6")]
    agent_version: Option<String>,
    #[prost(bytes = "vec", optional, tag = "8")]
    signed_peer_record: Option<Vec<u8>>,
}

/// Reads one unsigned-varint length-prefixed message to the end of the stream.
async fn read_reply(mut stream: libp2p::Stream) -> Vec<u8> {
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let (len, rest) = unsigned_varint::decode::usize(&raw).unwrap();
    assert_eq!(len, rest.len(), "one length-prefixed message");
    assert!(
        len <= REFERENCE_MAX_IDENTIFY,
        "{len} bytes is more than the reference reads"
    );
    rest.to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_identify_reply_decodes_as_the_reference_decodes_it() {
    let cancel = CancellationToken::new();
    let key = Keypair::generate_secp256k1();
    let (node, mut events, _task) = start(
        key.clone(),
        NetConfig {
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
            agent: "cairn/test".into(),
            ..NetConfig::default()
        },
        cancel.child_token(),
    )
    .await
    .unwrap();
    tokio::spawn(async move { while events.recv().await.is_some() {} });
    let addr = node.listen_addrs().await.unwrap()[0]
        .clone()
        .with(Protocol::P2p(node.local_peer_id()));

    // A client with only a raw-stream behaviour, over Mplex as the reference dials.
    let client_key = Keypair::generate_secp256k1();
    let mut client = Swarm::new(
        cairn_net::transport::build(&client_key, Muxers::Mplex).unwrap(),
        libp2p_stream::Behaviour::new(),
        client_key.public().to_peer_id(),
        swarm::Config::with_tokio_executor(),
    );
    let mut control = client.behaviour().new_control();
    client.dial(addr).unwrap();
    let connected = async {
        loop {
            if let SwarmEvent::ConnectionEstablished { .. } = client.select_next_some().await {
                return;
            }
        }
    };
    tokio::time::timeout(WAIT, connected).await.unwrap();
    tokio::spawn(async move { while client.next().await.is_some() {} });
    let stream = tokio::time::timeout(WAIT, control.open_stream(node.local_peer_id(), IDENTIFY))
        .await
        .unwrap()
        .unwrap();
    let raw = tokio::time::timeout(WAIT, read_reply(stream))
        .await
        .unwrap();
    let msg = Identify::decode(raw.as_slice()).unwrap();

    let public = PublicKey::try_decode_protobuf(msg.public_key.as_deref().unwrap()).unwrap();
    assert_eq!(public, key.public(), "field 1: our key");
    assert!(
        public.try_into_secp256k1().is_ok(),
        "the reference parses only secp256k1 keys"
    );
    for a in &msg.listen_addrs {
        Multiaddr::try_from(a.clone()).unwrap();
    }
    assert!(!msg.listen_addrs.is_empty(), "field 2: where we listen");
    if let Some(observed) = &msg.observed_addr {
        Multiaddr::try_from(observed.clone()).unwrap();
    }
    assert_eq!(msg.protocol_version.as_deref(), Some("ipfs/0.1.0"));
    assert_eq!(msg.agent_version.as_deref(), Some("cairn/test"));
    assert!(
        msg.protocols.iter().any(|p| p == "/codex/blockexc/1.0.0"),
        "{:?}",
        msg.protocols
    );
    // Field 8 is optional for the reference; when present it must be a standard peer record
    // signed by our key, or the reference drops the connection.
    if let Some(spr) = &msg.signed_peer_record {
        let envelope = SignedEnvelope::from_protobuf_encoding(spr).unwrap();
        let record = PeerRecord::from_signed_envelope_interop(envelope).unwrap_or_else(|e| {
            panic!("field 8 is not a standard libp2p-peer-record envelope: {e}")
        });
        assert_eq!(record.peer_id(), key.public().to_peer_id());
    }
    cancel.cancel();
}
