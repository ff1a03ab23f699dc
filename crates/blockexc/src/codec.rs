//! Framing: an unsigned-varint (LEB128) length, then that many bytes of protobuf
//! (`codex-protocol.md` §2.1; libp2p's `writeLp`/`readLp`).
//!
//! Reading is defensive: the length is checked against the limit *before* any body byte is read,
//! and the body buffer grows with the bytes that actually arrive ([`READ_CHUNK_BYTES`] at a
//! time), so a peer that announces a large frame and then trickles bytes holds only what it has
//! sent. A zero-length frame is a valid empty message. End of stream between frames is a clean
//! close; inside a frame it is an error.

use std::io;

use bytes::{Bytes, BytesMut};
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// How much the receive buffer grows per read while a frame body arrives: large enough that a
/// 1.3 MB delivery message takes a handful of reads, small enough that an announced-but-unsent
/// frame costs little.
pub const READ_CHUNK_BYTES: usize = 256 * 1024;

/// Longest varint length prefix (10 bytes encode any `u64`).
const MAX_PREFIX_BYTES: usize = 10;

/// An encoded message ready to send: length prefix and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame(Bytes);

impl Frame {
    /// Wraps already-prefixed bytes. Use [`crate::Message::to_frame`] to build one.
    pub(crate) fn new(bytes: Bytes) -> Frame {
        Frame(bytes)
    }

    /// Prefixes raw bytes with their length, whatever they contain (for test doubles that
    /// must send garbage that is still correctly framed).
    pub fn from_body(body: &[u8]) -> Frame {
        let mut prefix = unsigned_varint::encode::usize_buffer();
        let prefix = unsigned_varint::encode::usize(body.len(), &mut prefix);
        let mut out = Vec::with_capacity(prefix.len() + body.len());
        out.extend_from_slice(prefix);
        out.extend_from_slice(body);
        Frame(Bytes::from(out))
    }

    /// The bytes on the wire.
    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }

    /// Length on the wire.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the frame is empty (never true for a built frame: the prefix is at least 1 byte).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The announced length is over the limit.
    #[error("frame of {len} bytes announced, limit {max}")]
    TooLarge {
        /// Announced length.
        len: u64,
        /// The limit.
        max: usize,
    },
    /// The length prefix is not a valid varint.
    #[error("bad length prefix")]
    BadPrefix,
    /// The stream failed or ended inside a frame.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Reads one frame body. `Ok(None)` is a clean end of stream before any byte of a new frame.
pub async fn read_frame<R>(io: &mut R, max: usize) -> Result<Option<Bytes>, FrameError>
where
    R: AsyncRead + Unpin,
{
    let mut prefix = [0u8; MAX_PREFIX_BYTES];
    let mut n = 0;
    loop {
        let mut byte = [0u8; 1];
        if io.read(&mut byte).await? == 0 {
            if n == 0 {
                return Ok(None);
            }
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
        }
        if n == MAX_PREFIX_BYTES {
            return Err(FrameError::BadPrefix);
        }
        prefix[n] = byte[0];
        n += 1;
        if unsigned_varint::decode::is_last(byte[0]) {
            break;
        }
    }
    let (len, _) = unsigned_varint::decode::u64(&prefix[..n]).map_err(|_| FrameError::BadPrefix)?;
    let len = match usize::try_from(len) {
        Ok(l) if l <= max => l,
        _ => return Err(FrameError::TooLarge { len, max }),
    };
    let mut body = BytesMut::with_capacity(len.min(READ_CHUNK_BYTES));
    while body.len() < len {
        let start = body.len();
        let grow = (len - start).min(READ_CHUNK_BYTES);
        body.resize(start + grow, 0);
        io.read_exact(&mut body[start..]).await?;
    }
    Ok(Some(body.freeze()))
}

/// Bytes a frame with a body of `body_len` bytes takes on the wire: the varint prefix and the
/// body (what the traffic counters count for a frame read).
pub fn wire_len(body_len: usize) -> usize {
    let mut prefix = unsigned_varint::encode::usize_buffer();
    unsigned_varint::encode::usize(body_len, &mut prefix).len() + body_len
}

/// Writes one frame and flushes.
pub async fn write_frame<W>(io: &mut W, frame: &Frame) -> io::Result<()>
where
    W: AsyncWrite + Unpin,
{
    io.write_all(frame.as_bytes()).await?;
    io.flush().await
}

#[cfg(test)]
mod tests {
    use futures::executor::block_on;

    use super::*;

    fn read_all(bytes: &[u8], max: usize) -> Vec<Result<Option<Bytes>, String>> {
        let mut io = futures::io::Cursor::new(bytes.to_vec());
        let mut out = Vec::new();
        loop {
            let r = block_on(read_frame(&mut io, max)).map_err(|e| e.to_string());
            let stop = !matches!(r, Ok(Some(_)));
            out.push(r);
            if stop {
                return out;
            }
        }
    }

    #[test]
    fn frames_round_trip_and_zero_length_is_empty() {
        let mut wire = Vec::new();
        for body in [&b""[..], b"a", &[7u8; 300]] {
            wire.extend_from_slice(Frame::from_body(body).as_bytes());
        }
        let got = read_all(&wire, 1024);
        assert_eq!(got.len(), 4);
        assert_eq!(got[0].as_ref().ok(), Some(&Some(Bytes::new())));
        assert_eq!(got[1].as_ref().ok(), Some(&Some(Bytes::from_static(b"a"))));
        assert_eq!(
            got[2]
                .as_ref()
                .ok()
                .and_then(|b| b.as_ref())
                .map(Bytes::len),
            Some(300)
        );
        assert!(matches!(got[3], Ok(None)));
    }

    #[test]
    fn wire_len_counts_the_prefix() {
        for len in [0, 1, 127, 128, 300, 16_383, 16_384, 1 << 21] {
            let body = vec![0u8; len];
            assert_eq!(wire_len(len), Frame::from_body(&body).len(), "{len}");
        }
    }

    #[test]
    fn limit_is_inclusive_and_checked_before_the_body() {
        // Exactly `max` bytes is accepted (as the reference accepts exactly 100 MiB).
        let ok = Frame::from_body(&[1u8; 64]);
        assert!(matches!(read_all(ok.as_bytes(), 64)[0], Ok(Some(_))));
        // One more is refused from the prefix alone: no body bytes are needed.
        let err = block_on(read_frame(&mut &[0x41u8][..], 64));
        assert!(matches!(
            err,
            Err(FrameError::TooLarge { len: 65, max: 64 })
        ));
        // A huge announced length is refused without allocating it.
        let err = block_on(read_frame(
            &mut &[0x80, 0x80, 0x80, 0x80, 0x7f][..],
            1 << 20,
        ));
        assert!(matches!(err, Err(FrameError::TooLarge { .. })));
    }

    #[test]
    fn truncated_frames_and_bad_prefixes_are_errors() {
        assert!(matches!(
            block_on(read_frame(&mut &[0x05, 1, 2][..], 64)),
            Err(FrameError::Io(_))
        ));
        assert!(matches!(
            block_on(read_frame(&mut &[0x80][..], 64)),
            Err(FrameError::Io(_))
        ));
        assert!(matches!(
            block_on(read_frame(&mut &[0xff; 11][..], usize::MAX)),
            Err(FrameError::BadPrefix)
        ));
    }
}
