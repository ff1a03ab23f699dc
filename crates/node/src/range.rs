//! Byte ranges of a dataset and the blocks that cover them.
//!
//! A dataset is a sequence of blocks of `block_size` bytes (the last one zero-padded), so byte
//! `b` lives in block `b / block_size`. A [`ByteRange`] names the bytes `start..end` of the
//! dataset (half-open); [`ByteRange::blocks`] gives the indices of exactly the blocks that hold
//! them, and [`ByteRange::within_block`] the part of one of those blocks that is in the range.
//! Streaming a range reads (or fetches) those blocks and nothing else.

use std::ops::Range;

/// The bytes `start..end` of a dataset (half-open; `start <= end`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ByteRange {
    start: u64,
    end: u64,
}

/// A range whose end is before its start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("byte range {start}..{end} ends before it starts")]
pub struct InvertedRange {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
}

impl ByteRange {
    /// The bytes `start..end`.
    pub fn new(start: u64, end: u64) -> Result<ByteRange, InvertedRange> {
        if start <= end {
            Ok(ByteRange { start, end })
        } else {
            Err(InvertedRange { start, end })
        }
    }

    /// Every byte of a dataset of `size` bytes.
    pub fn full(size: u64) -> ByteRange {
        ByteRange {
            start: 0,
            end: size,
        }
    }

    /// The first byte.
    pub fn start(&self) -> u64 {
        self.start
    }

    /// One past the last byte.
    pub fn end(&self) -> u64 {
        self.end
    }

    /// How many bytes.
    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    /// Whether the range holds no byte.
    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// The indices of the blocks of `block_size` bytes that hold at least one byte of the range
    /// (empty for an empty range or a zero block size).
    pub fn blocks(&self, block_size: u64) -> Range<u64> {
        if self.is_empty() || block_size == 0 {
            return 0..0;
        }
        self.start / block_size..self.end.div_ceil(block_size)
    }

    /// The part of block `index` (of `block_size` bytes) inside the range, as offsets into the
    /// block; empty when the block holds none of it.
    pub fn within_block(&self, index: u64, block_size: u64) -> Range<u64> {
        let block_start = index.saturating_mul(block_size);
        let block_end = block_start.saturating_add(block_size);
        let from = self.start.clamp(block_start, block_end);
        let to = self.end.clamp(from, block_end);
        from - block_start..to - block_start
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn examples() {
        let bs = 10;
        let r = ByteRange::new(0, 1).unwrap();
        assert_eq!((r.blocks(bs), r.within_block(0, bs)), (0..1, 0..1));
        // Across a block boundary.
        let r = ByteRange::new(9, 11).unwrap();
        assert_eq!(r.blocks(bs), 0..2);
        assert_eq!(
            (r.within_block(0, bs), r.within_block(1, bs)),
            (9..10, 0..1)
        );
        // Exactly one whole block.
        let r = ByteRange::new(10, 20).unwrap();
        assert_eq!((r.blocks(bs), r.within_block(1, bs)), (1..2, 0..10));
        // Blocks outside the range hold nothing of it.
        assert!(r.within_block(0, bs).is_empty() && r.within_block(2, bs).is_empty());
        assert_eq!(ByteRange::new(5, 5).unwrap().blocks(bs), 0..0);
        assert_eq!(ByteRange::full(25).blocks(bs), 0..3);
        assert_eq!(ByteRange::full(25).blocks(0), 0..0);
        assert_eq!(
            ByteRange::new(3, 2),
            Err(InvertedRange { start: 3, end: 2 })
        );
        // No overflow at the top of the u64 space.
        let r = ByteRange::new(u64::MAX - 1, u64::MAX).unwrap();
        assert_eq!(r.blocks(1 << 16).end, u64::MAX.div_ceil(1 << 16));
        assert_eq!(
            r.within_block(u64::MAX / (1 << 16), 1 << 16).end,
            (1 << 16) - 1
        );
    }

    proptest! {
        /// The blocks of a range are exactly those it needs: each holds at least one of its
        /// bytes, and their parts, in order, are the range's bytes with no gap or overlap.
        #[test]
        fn block_span_covers_exactly_the_range(
            block_size in 1u64..=300,
            size in 0u64..5_000,
            a in any::<u64>(),
            b in any::<u64>(),
        ) {
            let (a, b) = (a % (size + 1), b % (size + 1));
            let r = ByteRange::new(a.min(b), a.max(b)).unwrap();
            let span = r.blocks(block_size);
            let mut at = r.start();
            for i in span.clone() {
                let part = r.within_block(i, block_size);
                prop_assert!(!part.is_empty(), "block {i} holds none of {r:?}");
                prop_assert_eq!(i * block_size + part.start, at);
                at = i * block_size + part.end;
            }
            prop_assert_eq!(at, r.end());
            prop_assert!(span.end <= size.div_ceil(block_size));
            // Every other block holds nothing of the range.
            for i in (0..span.start).chain(span.end..span.end + 2) {
                prop_assert!(r.within_block(i, block_size).is_empty());
            }
            if r.is_empty() {
                prop_assert!(span.is_empty());
            }
        }
    }
}
