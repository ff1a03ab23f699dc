//! Frames: an unsigned-varint length prefix, then the protobuf body, one message per stream
//! direction. The prefix is checked against the bound for its direction before the body is
//! read, so a peer cannot make us allocate or buffer more than [`MAX_REQUEST_BYTES`] or
//! [`MAX_RESPONSE_BYTES`]. A malformed or oversized message fails the stream with
//! `InvalidData`, which the request-response behaviour reports as a failure for that one request.
//!
//! The codec counts the bytes it reads and writes (prefix and body) in its [`Traffic`] counters:
//! the codec is cloned for every stream, and the counters are shared handles, so the counts
//! cover every stream of the behaviour.

use std::io;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use prometheus_client::metrics::counter::Counter;

use crate::{Addrs, MAX_REQUEST_BYTES, MAX_RESPONSE_BYTES, Request};

/// The codec of `/cairn/pex/1.0.0`.
#[derive(Debug, Clone, Default)]
pub struct PexCodec {
    traffic: Traffic,
}

impl PexCodec {
    /// A codec counting its bytes in `traffic`.
    pub fn with_traffic(traffic: Traffic) -> Self {
        PexCodec { traffic }
    }
}

/// PEX bytes on the wire, both ways, counted by the codec (length prefixes included). The
/// handles are shared: clones count into the same totals.
#[derive(Debug, Clone, Default)]
pub struct Traffic {
    /// Bytes written (requests and answers).
    pub bytes_sent: Counter,
    /// Bytes read (requests and answers, including frames refused for their size: only the
    /// prefix of those is read).
    pub bytes_received: Counter,
}

/// Bytes the length prefix of a `len`-byte body takes.
fn prefix_len(len: usize) -> u64 {
    let mut buf = unsigned_varint::encode::usize_buffer();
    unsigned_varint::encode::usize(len, &mut buf).len() as u64
}

/// Reads one frame of at most `max` bytes, counting into `received` what it read: the prefix
/// as soon as it is read (a frame refused for its size counts too), the body once read.
/// Counted only after a decode, refused and cut frames went uncounted (found by review).
pub async fn read_frame<T: AsyncRead + Unpin>(
    io: &mut T,
    max: usize,
    received: &Counter,
) -> io::Result<Vec<u8>> {
    let len = unsigned_varint::aio::read_usize(&mut *io)
        .await
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    received.inc_by(prefix_len(len));
    if len > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes over the {max}-byte limit"),
        ));
    }
    let mut body = vec![0u8; len];
    io.read_exact(&mut body).await?;
    received.inc_by(len as u64);
    Ok(body)
}

/// Writes one frame and closes the writing side.
pub async fn write_frame<T: AsyncWrite + Unpin>(io: &mut T, body: &[u8]) -> io::Result<()> {
    let mut prefix = unsigned_varint::encode::usize_buffer();
    io.write_all(unsigned_varint::encode::usize(body.len(), &mut prefix))
        .await?;
    io.write_all(body).await?;
    io.close().await
}

fn invalid(e: impl std::error::Error + Send + Sync + 'static) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl libp2p::request_response::Codec for PexCodec {
    type Protocol = libp2p::StreamProtocol;
    type Request = Request;
    type Response = Addrs;

    async fn read_request<T>(&mut self, _: &Self::Protocol, io: &mut T) -> io::Result<Request>
    where
        T: AsyncRead + Unpin + Send,
    {
        let body = read_frame(io, MAX_REQUEST_BYTES, &self.traffic.bytes_received).await?;
        Request::decode(&body).map_err(invalid)
    }

    async fn read_response<T>(&mut self, _: &Self::Protocol, io: &mut T) -> io::Result<Addrs>
    where
        T: AsyncRead + Unpin + Send,
    {
        let body = read_frame(io, MAX_RESPONSE_BYTES, &self.traffic.bytes_received).await?;
        Addrs::decode(&body).map_err(invalid)
    }

    async fn write_request<T>(
        &mut self,
        _: &Self::Protocol,
        io: &mut T,
        req: Request,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        let body = req.encode();
        self.traffic
            .bytes_sent
            .inc_by(prefix_len(body.len()) + body.len() as u64);
        write_frame(io, &body).await
    }

    async fn write_response<T>(
        &mut self,
        _: &Self::Protocol,
        io: &mut T,
        res: Addrs,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        let body = res.encode();
        self.traffic
            .bytes_sent
            .inc_by(prefix_len(body.len()) + body.len() as u64);
        write_frame(io, &body).await
    }
}

#[cfg(test)]
mod tests {
    use futures::io::Cursor;
    use libp2p::{Multiaddr, identity::Keypair, request_response::Codec};

    use super::*;
    use crate::{PROTOCOL, PeerAddrs};

    fn list(n: usize) -> Addrs {
        let addr: Multiaddr = "/ip4/127.0.0.1/tcp/8070".parse().unwrap();
        Addrs::new(
            (0..n)
                .map(|_| PeerAddrs {
                    peer: Keypair::generate_ed25519().public().to_peer_id(),
                    addrs: vec![addr.clone()],
                })
                .collect(),
        )
    }

    #[tokio::test]
    async fn frames_round_trip_through_the_codec() {
        let mut c = PexCodec::default();
        let mut buf = Cursor::new(Vec::new());
        c.write_request(&PROTOCOL, &mut buf, Request::GetAddrs { max: 32 })
            .await
            .unwrap();
        let mut r = Cursor::new(buf.into_inner());
        assert_eq!(
            c.read_request(&PROTOCOL, &mut r).await.unwrap(),
            Request::GetAddrs { max: 32 }
        );
        let answer = list(250);
        let mut buf = Cursor::new(Vec::new());
        c.write_response(&PROTOCOL, &mut buf, answer.clone())
            .await
            .unwrap();
        let bytes = buf.into_inner();
        assert!(
            bytes.len() < MAX_RESPONSE_BYTES,
            "a full list fits: {}",
            bytes.len()
        );
        let mut r = Cursor::new(bytes);
        assert_eq!(c.read_response(&PROTOCOL, &mut r).await.unwrap(), answer);
    }

    #[tokio::test]
    async fn the_codec_counts_the_bytes_of_every_frame() {
        let traffic = Traffic::default();
        let mut writer = PexCodec::with_traffic(traffic.clone());
        let mut buf = Cursor::new(Vec::new());
        writer
            .write_response(&PROTOCOL, &mut buf, list(3))
            .await
            .unwrap();
        let framed = buf.get_ref().len() as u64;
        assert_eq!(traffic.bytes_sent.get(), framed);
        // A clone (one per stream) counts into the same totals.
        let mut reader = writer.clone();
        reader
            .read_response(&PROTOCOL, &mut Cursor::new(buf.into_inner()))
            .await
            .unwrap();
        assert_eq!(traffic.bytes_received.get(), framed);
        let mut buf = Cursor::new(Vec::new());
        writer
            .write_request(&PROTOCOL, &mut buf, Request::GetAddrs { max: 7 })
            .await
            .unwrap();
        assert_eq!(
            traffic.bytes_sent.get(),
            framed + buf.get_ref().len() as u64
        );
    }

    #[tokio::test]
    async fn oversized_prefixes_are_refused_before_reading_the_body() {
        // A prefix announcing 1 GiB, followed by nothing: refused on the prefix alone, which
        // is counted as received.
        let mut prefix = unsigned_varint::encode::usize_buffer();
        let bytes = unsigned_varint::encode::usize(1 << 30, &mut prefix).to_vec();
        let traffic = Traffic::default();
        let mut c = PexCodec::with_traffic(traffic.clone());
        let err = c
            .read_response(&PROTOCOL, &mut Cursor::new(bytes.clone()))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert_eq!(traffic.bytes_received.get(), bytes.len() as u64);
        // A frame read whole that does not decode counts whole.
        let garbage = [3u8, 0xff, 0xff, 0xff];
        assert!(
            c.read_request(&PROTOCOL, &mut Cursor::new(garbage.to_vec()))
                .await
                .is_err()
        );
        assert_eq!(
            traffic.bytes_received.get(),
            (bytes.len() + garbage.len()) as u64
        );
        // A push as large as a full answer (250 peers, 8 addresses each) is over the request
        // limit.
        let mut wide = list(250);
        for p in &mut wide.peers {
            p.addrs = (0..8)
                .map(|i| format!("/ip4/10.0.0.{i}/tcp/8070").parse().unwrap())
                .collect();
        }
        let mut buf = Cursor::new(Vec::new());
        write_frame(&mut buf, &Request::Push(wide).encode())
            .await
            .unwrap();
        assert!(buf.get_ref().len() > MAX_REQUEST_BYTES);
        let err = c
            .read_request(&PROTOCOL, &mut Cursor::new(buf.into_inner()))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[tokio::test]
    async fn truncated_and_garbage_frames_fail_cleanly() {
        let mut c = PexCodec::default();
        let mut buf = Cursor::new(Vec::new());
        write_frame(&mut buf, &list(3).encode()).await.unwrap();
        let bytes = buf.into_inner();
        for cut in 0..bytes.len() {
            assert!(
                c.read_response(&PROTOCOL, &mut Cursor::new(bytes[..cut].to_vec()))
                    .await
                    .is_err()
            );
        }
        let garbage = vec![5u8, 0xff, 0xff, 0xff, 0xff, 0xff];
        assert!(
            c.read_request(&PROTOCOL, &mut Cursor::new(garbage))
                .await
                .is_err()
        );
    }
}
