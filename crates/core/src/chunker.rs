//! Cutting a byte stream into fixed-size blocks.
//!
//! The reference chunker emits blocks of exactly `block_size` bytes and zero-pads the last one
//! (`codex-protocol.md` §4.4), so an 18-byte upload is one 65,536-byte block. [`Chunker`] is a
//! push-style state machine: feed it the stream piece by piece with [`Chunker::push`], and it hands
//! out each block as soon as it is complete; it never holds more than one block. The dataset size
//! (the real, unpadded byte count) is returned by [`Chunker::finish`].

use bytes::{Bytes, BytesMut};

/// The reference's default block size: 64 KiB (`DefaultBlockSize`).
pub const DEFAULT_BLOCK_SIZE: usize = 64 * 1024;

/// Cuts a stream into `block_size` blocks, zero-padding the last one.
#[derive(Debug)]
pub struct Chunker {
    block_size: usize,
    buf: BytesMut,
    total: u64,
}

impl Chunker {
    /// A chunker for blocks of `block_size` bytes (clamped to at least 1).
    pub fn new(block_size: usize) -> Chunker {
        let block_size = block_size.max(1);
        Chunker {
            block_size,
            buf: BytesMut::with_capacity(block_size),
            total: 0,
        }
    }

    /// The block size.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Bytes fed so far.
    pub fn bytes_in(&self) -> u64 {
        self.total
    }

    /// Feeds `data`; calls `emit` with every block completed by it, in order.
    pub fn push(&mut self, mut data: &[u8], mut emit: impl FnMut(Bytes)) {
        self.total += data.len() as u64;
        while !data.is_empty() {
            let room = self.block_size - self.buf.len();
            let take = room.min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buf.len() == self.block_size {
                let block = self.buf.split().freeze();
                self.buf.reserve(self.block_size);
                emit(block);
            }
        }
    }

    /// Feeds `data` like [`Chunker::push`], but without copying whole blocks that lie inside
    /// `data` at a block boundary of the stream: those are handed out as zero-copy slices of it.
    /// Only the bytes of blocks that straddle two pieces are copied. A slice keeps its whole piece
    /// alive until the block is dropped, so memory held downstream is bounded by the blocks in
    /// flight times the size of the pieces (an HTTP body's chunks are tens of KiB).
    pub fn push_bytes(&mut self, data: &Bytes, mut emit: impl FnMut(Bytes)) {
        let mut at = 0;
        if !self.buf.is_empty() {
            let take = (self.block_size - self.buf.len()).min(data.len());
            self.push(&data[..take], &mut emit);
            at = take;
        }
        while data.len() - at >= self.block_size {
            self.total += self.block_size as u64;
            emit(data.slice(at..at + self.block_size));
            at += self.block_size;
        }
        self.push(&data[at..], emit);
    }

    /// Ends the stream: returns the zero-padded last block (if the stream did not end on a block
    /// boundary) and the total number of real bytes fed.
    pub fn finish(mut self) -> (Option<Bytes>, u64) {
        if self.buf.is_empty() {
            return (None, self.total);
        }
        self.buf.resize(self.block_size, 0);
        (Some(self.buf.freeze()), self.total)
    }
}

/// The number of blocks a dataset of `dataset_size` bytes occupies.
pub fn blocks_count(dataset_size: u64, block_size: u64) -> u64 {
    if block_size == 0 {
        0
    } else {
        dataset_size.div_ceil(block_size)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn chunk_all(pieces: &[&[u8]], bs: usize) -> (Vec<Bytes>, u64) {
        let mut c = Chunker::new(bs);
        let mut out = Vec::new();
        for p in pieces {
            c.push(p, |b| out.push(b));
        }
        let (last, total) = c.finish();
        out.extend(last);
        (out, total)
    }

    #[test]
    fn pads_last_block_with_zeros() {
        let (blocks, total) = chunk_all(&[b"some file contents"], DEFAULT_BLOCK_SIZE);
        assert_eq!(total, 18);
        assert_eq!(blocks.len(), 1);
        assert_eq!(blocks[0].len(), DEFAULT_BLOCK_SIZE);
        assert_eq!(&blocks[0][..18], b"some file contents");
        assert!(blocks[0][18..].iter().all(|&b| b == 0));
    }

    #[test]
    fn edge_sizes() {
        for (size, expect) in [(0usize, 0usize), (1, 1), (15, 2), (16, 2), (17, 3), (32, 4)] {
            let data = vec![7u8; size];
            let (blocks, total) = chunk_all(&[&data], 8);
            assert_eq!(blocks.len(), expect, "size {size}");
            assert_eq!(total, size as u64);
            assert_eq!(blocks_count(total, 8) as usize, expect);
        }
    }

    proptest! {
        /// However the stream is split, the blocks are the padded concatenation.
        #[test]
        fn split_invariant(data in proptest::collection::vec(any::<u8>(), 0..2000),
                           cuts in proptest::collection::vec(0usize..2000, 0..8),
                           bs in 1usize..300) {
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(data.len())).collect();
            cuts.sort_unstable();
            let mut pieces = Vec::new();
            let mut prev = 0;
            for c in cuts { pieces.push(&data[prev..c]); prev = c; }
            pieces.push(&data[prev..]);
            let (blocks, total) = chunk_all(&pieces, bs);
            prop_assert_eq!(total, data.len() as u64);
            prop_assert!(blocks.iter().all(|b| b.len() == bs));
            let joined: Vec<u8> = blocks.iter().flat_map(|b| b.iter().copied()).collect();
            prop_assert_eq!(&joined[..data.len()], &data[..]);
            prop_assert!(joined[data.len()..].iter().all(|&b| b == 0));
            prop_assert_eq!(blocks.len() as u64, blocks_count(total, bs as u64));

            // The zero-copy path cuts the same blocks.
            let mut c = Chunker::new(bs);
            let mut zc = Vec::new();
            for p in &pieces {
                c.push_bytes(&Bytes::copy_from_slice(p), |b| zc.push(b));
            }
            let (last, zc_total) = c.finish();
            zc.extend(last);
            prop_assert_eq!(zc_total, total);
            prop_assert_eq!(zc, blocks);
        }
    }
}
