//! A frame within the size limit must not make the decoder allocate far more than the frame.
//!
//! Each test file is its own process, so the process's peak resident memory (`VmHWM`) shows
//! what one decode allocated. The inputs are frames of the largest accepted size
//! ([`MAX_FRAME_BYTES`]) made of empty repeated sub-messages, two bytes each: prost turns each
//! into a whole struct (about 100–200 bytes), so a decoder that counts only after decoding
//! allocates most of a gigabyte for one 8 MiB frame. Found by review.

#![cfg(target_os = "linux")]

use bytes::Bytes;
use cairn_blockexc::{DecodeError, MAX_FRAME_BYTES, Message, codec::FrameParts};

/// Growth of the peak allowed for one decode: the input is built before the first reading, so
/// this only has to cover the decoder's own work (a few times the frame would already be a
/// bug; the old decoder took about 100 times it).
const ALLOWED_GROWTH_KIB: u64 = 64 * 1024;

fn peak_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/self/status")
}

/// Copies of `item`, as many as fit in a frame of `MAX_FRAME_BYTES` after `prefix`.
fn frame_of(prefix: &[u8], item: &[u8]) -> Vec<u8> {
    let n = (MAX_FRAME_BYTES - prefix.len() - 8) / item.len();
    let mut body = prefix.to_vec();
    body.extend(std::iter::repeat_n(item, n).flatten());
    body
}

/// The field-1 want list with `entries` empty entries: `0a <len> (0a 00)*`.
fn wantlist_of_empty_entries() -> Vec<u8> {
    let n = (MAX_FRAME_BYTES - 16) / 2;
    let mut len = Vec::new();
    let mut v = (2 * n) as u64;
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            len.push(b);
            break;
        }
        len.push(b | 0x80);
    }
    let mut body = vec![0x0a];
    body.extend(len);
    body.extend(std::iter::repeat_n([0x0a, 0x00], n).flatten());
    body
}

#[test]
fn frames_of_empty_repeated_fields_are_refused_before_they_are_built() {
    // Empty deliveries (field 3), empty presences (field 4), and one want list of empty entries.
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("deliveries", frame_of(&[], &[0x1a, 0x00])),
        ("presences", frame_of(&[], &[0x22, 0x00])),
        ("want-list entries", wantlist_of_empty_entries()),
    ];
    for (what, body) in cases {
        assert!(
            body.len() <= MAX_FRAME_BYTES,
            "{what}: frame within the limit"
        );
        let body = Bytes::from(body);
        let parts = FrameParts {
            parts: vec![body.slice(..), Bytes::new()],
            len: body.len(),
        };
        let before = peak_kib();
        let whole = Message::decode(body.clone());
        let cut = Message::decode_parts(parts);
        let grew = peak_kib().saturating_sub(before);
        let refused = |r: &Result<Message, DecodeError>| {
            matches!(
                r,
                Err(DecodeError::TooManyBlocks(_)
                    | DecodeError::TooManyPresences(_)
                    | DecodeError::TooManyEntries(_))
            )
        };
        assert!(refused(&whole), "{what}: {whole:?}");
        assert!(refused(&cut), "{what}: {cut:?}");
        assert!(
            grew <= ALLOWED_GROWTH_KIB,
            "{what}: decoding a {} KiB frame raised the peak by {grew} KiB",
            body.len() / 1024
        );
    }
}
