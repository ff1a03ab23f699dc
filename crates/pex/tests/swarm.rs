//! Two libp2p swarms on loopback TCP speak `/cairn/pex/1.0.0` through the request-response
//! behaviour: a `GetAddrs` gets the answerer's list back; a push arrives as a request the
//! receiver can recognise (and penalise). Every wait has a deadline.

use std::time::Duration;

use cairn_pex::{Addrs, PeerAddrs, Request};
use futures::StreamExt;
use libp2p::{
    Multiaddr, Swarm, SwarmBuilder, noise,
    request_response::{self, Message},
    swarm::SwarmEvent,
    tcp, yamux,
};

const DEADLINE: Duration = Duration::from_secs(20);

type Pex = request_response::Behaviour<cairn_pex::PexCodec>;

fn swarm() -> Swarm<Pex> {
    SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            yamux::Config::default,
        )
        .unwrap()
        .with_behaviour(|_| cairn_pex::behaviour())
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(30)))
        .build()
}

fn sample() -> Addrs {
    Addrs::new(vec![PeerAddrs {
        peer: libp2p::identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id(),
        addrs: vec!["/ip4/127.0.0.1/tcp/4001".parse().unwrap()],
    }])
}

#[tokio::test]
async fn get_addrs_is_answered_and_a_push_is_seen_as_a_push() {
    let mut a = swarm();
    let mut b = swarm();
    b.listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap())
        .unwrap();
    let addr: Multiaddr = loop {
        if let SwarmEvent::NewListenAddr { address, .. } = b.select_next_some().await {
            break address;
        }
    };
    let b_id = *b.local_peer_id();
    a.dial(addr.clone()).unwrap();
    a.add_peer_address(b_id, addr);
    let answer = sample();

    let run = async {
        let asked = a
            .behaviour_mut()
            .send_request(&b_id, Request::GetAddrs { max: 32 });
        let mut pushed = false;
        let mut got_list = None;
        let mut saw_push = false;
        while got_list.is_none() || !saw_push {
            tokio::select! {
                ev = a.select_next_some() => {
                    if let SwarmEvent::Behaviour(request_response::Event::Message {
                        message: Message::Response { request_id, response }, ..
                    }) = ev
                        && request_id == asked
                    {
                        got_list = Some(response);
                        if !pushed {
                            pushed = true;
                            a.behaviour_mut().send_request(&b_id, Request::Push(sample()));
                        }
                    }
                }
                ev = b.select_next_some() => {
                    if let SwarmEvent::Behaviour(request_response::Event::Message {
                        message: Message::Request { request, channel, .. }, ..
                    }) = ev {
                        match request {
                            Request::GetAddrs { max } => {
                                assert_eq!(max, 32);
                                b.behaviour_mut().send_response(channel, answer.clone()).unwrap();
                            }
                            Request::Push(list) => {
                                assert_eq!(list.peers.len(), 1);
                                saw_push = true;
                                b.behaviour_mut().send_response(channel, Addrs::default()).unwrap();
                            }
                        }
                    }
                }
            }
        }
        got_list
    };
    let got = tokio::time::timeout(DEADLINE, run)
        .await
        .expect("the exchange finished in time");
    assert_eq!(got, Some(answer));
}
