//! Framing: an unsigned-varint (LEB128) length, then that many bytes of protobuf
//! (`codex-protocol.md` §2.1; libp2p's `writeLp`/`readLp`).
//!
//! Reading is defensive: the length is checked against the limit *before* any body byte is read,
//! and the body buffer grows with the bytes that actually arrive ([`READ_CHUNK_BYTES`] at a
//! time), so a peer that announces a large frame and then trickles bytes holds only what it has
//! sent. A zero-length frame is a valid empty message. End of stream between frames is a clean
//! close; inside a frame it is an error.
//!
//! [`read_frame_parts`] reads a frame cut at its top-level protobuf fields: each large
//! length-delimited field (a block delivery, about 64 KiB) in a buffer of its own, runs of small
//! fields together. Decoding the parts one after the other (protobuf merges concatenated
//! encodings) gives the same message as decoding the whole body, and the blocks delivered point
//! into buffers of their own size: a block kept in memory keeps only its own delivery alive, not
//! the whole 1.3 MB frame, and the allocator serves these buffers from memory it already has
//! instead of mapping fresh pages for every frame.

use std::io;

use bytes::{Bytes, BytesMut};
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// How much the receive buffer grows per read while a frame body arrives: large enough that a
/// 1.3 MB delivery message takes a handful of reads, small enough that an announced-but-unsent
/// frame costs little.
pub const READ_CHUNK_BYTES: usize = 256 * 1024;

/// Longest varint length prefix (10 bytes encode any `u64`).
const MAX_PREFIX_BYTES: usize = 10;

/// A top-level length-delimited field at least this long gets a buffer of its own in
/// [`read_frame_parts`]; shorter fields share one. A block delivery (64 KiB of data) is far
/// above it; want-list entries, presences and the small scalar fields are far below. It also
/// bounds the number of parts: at most two per this many bytes of frame.
pub const OWN_BUFFER_FIELD_BYTES: usize = 16 * 1024;

/// Top-level fields a frame may hold: a message is a want list, up to
/// [`crate::MAX_BLOCKS_PER_MESSAGE`] deliveries, up to [`crate::MAX_PRESENCES_PER_MESSAGE`]
/// presences and a few single fields (pending bytes, account, payment). A frame with more is
/// refused as it is read, before it costs a read per field.
pub const MAX_FIELDS_PER_FRAME: usize =
    crate::MAX_BLOCKS_PER_MESSAGE + crate::MAX_PRESENCES_PER_MESSAGE + 16;

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
    /// The frame body is not a sequence of protobuf fields that fits the frame
    /// ([`read_frame_parts`] only).
    #[error("malformed frame body: {0}")]
    Malformed(&'static str),
}

/// Reads one frame body. `Ok(None)` is a clean end of stream before any byte of a new frame.
pub async fn read_frame<R>(io: &mut R, max: usize) -> Result<Option<Bytes>, FrameError>
where
    R: AsyncRead + Unpin,
{
    let Some(first) = read_frame_start(io).await? else {
        return Ok(None);
    };
    let len = read_frame_len(io, first, max).await?;
    let mut body = BytesMut::new();
    read_into(io, &mut body, len).await?;
    Ok(Some(body.freeze()))
}

/// A frame body cut at top-level protobuf field boundaries (see the module docs).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FrameParts {
    /// The parts, in order; their concatenation is the frame body.
    pub parts: Vec<Bytes>,
    /// Length of the body (the sum of the parts' lengths).
    pub len: usize,
}

/// Reads one frame as [`FrameParts`]. `Ok(None)` is a clean end of stream before any byte of a
/// new frame. A body that is not a sequence of whole protobuf fields (an unknown wire type, a
/// varint or field running past the end of the frame) is [`FrameError::Malformed`]; what the
/// fields contain is checked when the parts are decoded.
pub async fn read_frame_parts<R>(io: &mut R, max: usize) -> Result<Option<FrameParts>, FrameError>
where
    R: AsyncRead + Unpin,
{
    let Some(first) = read_frame_start(io).await? else {
        return Ok(None);
    };
    read_frame_parts_from(io, first, max).await.map(Some)
}

/// Waits for the first byte of the next frame; `Ok(None)` at a clean end of stream. The
/// handler puts no deadline on this wait (a stream may rest between frames for as long as the
/// connection lasts) and a deadline on [`read_frame_parts_from`], which reads the rest.
pub async fn read_frame_start<R>(io: &mut R) -> io::Result<Option<u8>>
where
    R: AsyncRead + Unpin,
{
    let mut byte = [0u8; 1];
    if io.read(&mut byte).await? == 0 {
        return Ok(None);
    }
    Ok(Some(byte[0]))
}

/// [`read_frame_parts`] for a frame whose first byte, `first`, [`read_frame_start`] has read.
pub async fn read_frame_parts_from<R>(
    io: &mut R,
    first: u8,
    max: usize,
) -> Result<FrameParts, FrameError>
where
    R: AsyncRead + Unpin,
{
    let len = read_frame_len(io, first, max).await?;
    read_frame_body(io, len).await
}

/// The body of a frame whose length prefix, `len`, [`read_frame_len`] has read, as
/// [`FrameParts`].
pub async fn read_frame_body<R>(io: &mut R, len: usize) -> Result<FrameParts, FrameError>
where
    R: AsyncRead + Unpin,
{
    let mut parts = Vec::new();
    let mut small = BytesMut::new();
    let mut left = len;
    let mut fields = 0usize;
    while left > 0 {
        // Each field costs a few one-byte reads of the stream; a frame of millions of tiny
        // fields (`28 00` repeated) cost that many reads (found by review).
        fields += 1;
        if fields > MAX_FIELDS_PER_FRAME {
            return Err(FrameError::Malformed("too many fields in one message"));
        }
        let mut header = [0u8; 2 * MAX_PREFIX_BYTES];
        let (tag, tag_len) = read_body_varint(io, &mut header, left).await?;
        let mut header_len = tag_len;
        let field_len = match tag & 7 {
            // varint
            0 => {
                let (_, n) =
                    read_body_varint(io, &mut header[header_len..], left - header_len).await?;
                header_len += n;
                0
            }
            // 64-bit, 32-bit
            1 => 8,
            5 => 4,
            // length-delimited
            2 => {
                let (n, prefix_len) =
                    read_body_varint(io, &mut header[header_len..], left - header_len).await?;
                header_len += prefix_len;
                usize::try_from(n).map_err(|_| FrameError::Malformed("field length"))?
            }
            _ => return Err(FrameError::Malformed("wire type")),
        };
        let total = header_len
            .checked_add(field_len)
            .filter(|t| *t <= left)
            .ok_or(FrameError::Malformed(
                "field runs past the end of the frame",
            ))?;
        if field_len >= OWN_BUFFER_FIELD_BYTES {
            if !small.is_empty() {
                parts.push(std::mem::take(&mut small).freeze());
            }
            let mut own = BytesMut::with_capacity(total.min(READ_CHUNK_BYTES));
            own.extend_from_slice(&header[..header_len]);
            read_into(io, &mut own, field_len).await?;
            parts.push(own.freeze());
        } else {
            small.extend_from_slice(&header[..header_len]);
            read_into(io, &mut small, field_len).await?;
        }
        left -= total;
    }
    if !small.is_empty() {
        parts.push(small.freeze());
    }
    Ok(FrameParts { parts, len })
}

/// Reads the rest of a frame's length prefix, whose first byte is `first`, and checks it
/// against `max`.
pub async fn read_frame_len<R>(io: &mut R, first: u8, max: usize) -> Result<usize, FrameError>
where
    R: AsyncRead + Unpin,
{
    let mut prefix = [0u8; MAX_PREFIX_BYTES];
    prefix[0] = first;
    let mut n = 1;
    while !unsigned_varint::decode::is_last(prefix[n - 1]) {
        let mut byte = [0u8; 1];
        if io.read(&mut byte).await? == 0 {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
        }
        if n == MAX_PREFIX_BYTES {
            return Err(FrameError::BadPrefix);
        }
        prefix[n] = byte[0];
        n += 1;
    }
    let (len, _) = unsigned_varint::decode::u64(&prefix[..n]).map_err(|_| FrameError::BadPrefix)?;
    match usize::try_from(len) {
        Ok(l) if l <= max => Ok(l),
        _ => Err(FrameError::TooLarge { len, max }),
    }
}

/// Reads one protobuf varint of a frame body into `out` (at most `left` bytes, the rest of the
/// frame); returns its value and length.
async fn read_body_varint<R>(
    io: &mut R,
    out: &mut [u8],
    left: usize,
) -> Result<(u64, usize), FrameError>
where
    R: AsyncRead + Unpin,
{
    let limit = left.min(MAX_PREFIX_BYTES).min(out.len());
    let mut n = 0;
    loop {
        if n == limit {
            return Err(FrameError::Malformed("varint"));
        }
        io.read_exact(&mut out[n..=n]).await?;
        n += 1;
        if unsigned_varint::decode::is_last(out[n - 1]) {
            break;
        }
    }
    let (v, _) =
        unsigned_varint::decode::u64(&out[..n]).map_err(|_| FrameError::Malformed("varint"))?;
    Ok((v, n))
}

/// Appends exactly `n` bytes from `io` to `buf`, growing it by at most [`READ_CHUNK_BYTES`] at
/// a time, so a peer holds only as much of our memory as it has sent.
async fn read_into<R>(io: &mut R, buf: &mut BytesMut, n: usize) -> Result<(), FrameError>
where
    R: AsyncRead + Unpin,
{
    let end = buf.len() + n;
    while buf.len() < end {
        let start = buf.len();
        let grow = (end - start).min(READ_CHUNK_BYTES);
        buf.resize(start + grow, 0);
        io.read_exact(&mut buf[start..]).await?;
    }
    Ok(())
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

    fn parts(bytes: &[u8], max: usize) -> Result<Option<FrameParts>, FrameError> {
        block_on(read_frame_parts(
            &mut futures::io::Cursor::new(bytes.to_vec()),
            max,
        ))
    }

    /// Reading in parts keeps the frame limits and refuses bodies that are not whole fields.
    #[test]
    fn frame_parts_limits_and_malformed_bodies() {
        // Limit checked from the prefix alone; clean end of stream; empty frame.
        assert!(matches!(
            parts(&[0x41], 64),
            Err(FrameError::TooLarge { len: 65, max: 64 })
        ));
        assert!(matches!(parts(&[], 64), Ok(None)));
        assert_eq!(parts(&[0x00], 64).unwrap(), Some(FrameParts::default()));
        // Field 1, length 3, but only 2 bytes in the frame.
        let past_end = Frame::from_body(&[0x0a, 0x03, 1, 2]);
        assert!(matches!(
            parts(past_end.as_bytes(), 64),
            Err(FrameError::Malformed(_))
        ));
        // Wire types 3, 4 (groups), 6 and 7 are refused.
        for wire_type in [3u8, 4, 6, 7] {
            let body = [0x08 | wire_type, 0];
            let frame = Frame::from_body(&body);
            assert!(
                matches!(parts(frame.as_bytes(), 64), Err(FrameError::Malformed(_))),
                "wire type {wire_type}"
            );
        }
        // A varint that runs to the end of the frame.
        let frame = Frame::from_body(&[0x08, 0x80]);
        assert!(matches!(
            parts(frame.as_bytes(), 64),
            Err(FrameError::Malformed(_))
        ));
        // A frame cut short by the end of the stream.
        let mut cut = Frame::from_body(&[0x0a, 0x03, 1, 2, 3]).as_bytes().to_vec();
        cut.pop();
        assert!(matches!(parts(&cut, 64), Err(FrameError::Io(_))));
        // Small fields share one part; a large one gets its own, between them.
        let mut body = vec![0x08, 0x01, 0x12, 0x01, 0xaa];
        body.extend_from_slice(&[0x1a, 0x80, 0x80, 0x01]); // field 3, 16384 bytes
        body.extend(std::iter::repeat_n(5u8, 16_384));
        body.extend_from_slice(&[0x28, 0x07]);
        let got = parts(Frame::from_body(&body).as_bytes(), 1 << 20)
            .unwrap()
            .unwrap();
        let lens: Vec<usize> = got.parts.iter().map(Bytes::len).collect();
        assert_eq!(lens, [5, 4 + 16_384, 2]);
        assert_eq!(got.parts.concat(), body);
        // As many fields as a message can hold are read; one more is refused.
        let tiny = |n: usize| {
            let body: Vec<u8> = std::iter::repeat_n([0x28u8, 0x00], n).flatten().collect();
            parts(Frame::from_body(&body).as_bytes(), 1 << 20)
        };
        assert!(tiny(MAX_FIELDS_PER_FRAME).is_ok());
        assert!(matches!(
            tiny(MAX_FIELDS_PER_FRAME + 1),
            Err(FrameError::Malformed(_))
        ));
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
