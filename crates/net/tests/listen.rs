//! Listening: a fixed port another node holds is refused at start.

use cairn_net::{Keypair, NetConfig, NetError, start};
use tokio_util::sync::CancellationToken;

/// libp2p-tcp binds listeners with `SO_REUSEPORT`, so without a check a second node on a port
/// the first holds started fine and took about half of the first node's incoming connections.
#[tokio::test]
async fn a_listen_port_another_node_holds_is_refused() {
    let cancel = CancellationToken::new();
    let (first, _events, _task) = start(
        Keypair::generate_secp256k1(),
        NetConfig {
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
            ..NetConfig::default()
        },
        cancel.child_token(),
    )
    .await
    .unwrap();
    let taken = first
        .listen_addrs()
        .await
        .unwrap()
        .into_iter()
        .find(|a| a.to_string().starts_with("/ip4/127.0.0.1/tcp/"))
        .expect("a loopback listen address");
    let second = start(
        Keypair::generate_secp256k1(),
        NetConfig {
            listen: vec![taken.clone()],
            ..NetConfig::default()
        },
        cancel.child_token(),
    )
    .await;
    match second {
        Err(NetError::Listen(addr, reason)) => {
            assert_eq!(addr, taken);
            assert!(reason.to_lowercase().contains("in use"), "{reason}");
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("a second node listened on {taken}"),
    }
    cancel.cancel();
}

/// The check must not trip over the node itself: the same port over IPv4 and IPv6 (libp2p's
/// IPv6 listeners are IPv6-only) is two listeners, not a conflict.
#[tokio::test]
async fn the_same_port_over_ipv4_and_ipv6_is_no_conflict() {
    // A free port, found by binding port 0 and letting it go.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let v6 = std::net::TcpListener::bind("[::1]:0").is_ok();
    let mut listen = vec![format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap()];
    if v6 {
        listen.push(format!("/ip6/::/tcp/{port}").parse().unwrap());
    }
    let cancel = CancellationToken::new();
    let started = start(
        Keypair::generate_secp256k1(),
        NetConfig {
            listen,
            ..NetConfig::default()
        },
        cancel.child_token(),
    )
    .await;
    assert!(started.is_ok(), "{:?}", started.err());
    cancel.cancel();
}
