//! HTTP range requests and conditional requests on the download endpoints (RFC 9110 §13–14).
//!
//! * `Range: bytes=a-b`, `bytes=a-` and `bytes=-n` (one range) are answered `206 Partial
//!   Content` with `Content-Range: bytes a-b/size`; a range that starts at or past the end (or
//!   `bytes=-0`) is `416 Range Not Satisfiable` with `Content-Range: bytes */size`.
//! * A `Range` that does not parse (`bytes=5-2`, `bytes=x`, another unit, …) is ignored: the
//!   whole dataset, `200` (RFC 9110 §14.2: an unknown unit MUST be ignored; an invalid
//!   ranges-specifier MAY be ignored).
//! * Several ranges (`bytes=0-9,20-29`): ignored, `200` with the whole dataset, unless none of
//!   them is satisfiable, then `416`. Why not `multipart/byteranges`: no client of a storage
//!   node needs it (browsers, media players, download managers and `cairn download` ask for one
//!   range), and a server MAY always ignore `Range` (§14.2), which every client must handle.
//!   Why not `416` for all of them: §15.5.17 reserves `416` for ranges that do not overlap the
//!   representation, and a client told "unsatisfiable" for ranges that are would conclude the
//!   dataset is shorter than it is.
//! * `If-Range` with the dataset's entity tag keeps the `Range`; any other value (another tag,
//!   a weak tag, a date — cairn sends no `Last-Modified`) drops it (§13.1.5).
//! * `If-None-Match` listing the entity tag (or `*`) is `304 Not Modified` (§13.1.2). The
//!   entity tag is the manifest CID, quoted: a dataset's bytes never change under its CID.
//! * `HEAD` ignores `Range`, as §14.2 requires (range handling is defined for GET only).

use cairn_core::Cid;
use cairn_node::ByteRange;

/// Longest `Range` value considered; a longer one is ignored (the whole dataset is sent).
pub const MAX_RANGE_HEADER_LEN: usize = 1024;
/// Most range-specs in one `Range` value; with more the header is ignored (RFC 9110 §17.15:
/// many small ranges are a denial-of-service pattern).
pub const MAX_RANGE_SPECS: usize = 32;

/// One range-spec of a `bytes` `Range` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeSpec {
    /// `first-last` (both inclusive).
    FromTo(u64, u64),
    /// `first-`: from `first` to the end.
    From(u64),
    /// `-n`: the last `n` bytes.
    Suffix(u64),
}

/// A `Range` header that parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RangeRequest {
    /// One range.
    Single(RangeSpec),
    /// Several (at most [`MAX_RANGE_SPECS`]).
    Multiple(Vec<RangeSpec>),
}

/// What a download answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeAnswer {
    /// `200`, every byte.
    Full,
    /// `206`, these bytes.
    Partial(ByteRange),
    /// `416`.
    Unsatisfiable,
}

impl RangeSpec {
    /// The bytes this spec selects of a representation of `size` bytes; `None` when it is not
    /// satisfiable (starts at or past the end, or is an empty suffix).
    pub fn resolve(&self, size: u64) -> Option<ByteRange> {
        let (start, end) = match *self {
            RangeSpec::FromTo(first, last) if first < size => (first, last.min(size - 1) + 1),
            RangeSpec::From(first) if first < size => (first, size),
            RangeSpec::Suffix(n) if n > 0 && size > 0 => (size - n.min(size), size),
            _ => return None,
        };
        ByteRange::new(start, end).ok()
    }
}

/// Parses a `Range` value; `None` when it must be ignored (not `bytes`, malformed, too long,
/// too many ranges).
pub fn parse_range(value: &str) -> Option<RangeRequest> {
    if value.len() > MAX_RANGE_HEADER_LEN {
        return None;
    }
    let (unit, set) = value.split_once('=')?;
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return None;
    }
    let mut specs = Vec::new();
    // `1#range-spec`: empty list elements are allowed and skipped (RFC 9110 §5.6.1.2).
    for element in set.split(',').map(|e| e.trim_matches([' ', '\t'])) {
        if element.is_empty() {
            continue;
        }
        if specs.len() == MAX_RANGE_SPECS {
            return None;
        }
        specs.push(parse_spec(element)?);
    }
    match specs.len() {
        0 => None,
        1 => Some(RangeRequest::Single(specs[0])),
        _ => Some(RangeRequest::Multiple(specs)),
    }
}

fn parse_spec(spec: &str) -> Option<RangeSpec> {
    let (first, last) = spec.split_once('-')?;
    match (first.is_empty(), last.is_empty()) {
        (true, true) => None,
        (true, false) => Some(RangeSpec::Suffix(number(last)?)),
        (false, true) => Some(RangeSpec::From(number(first)?)),
        (false, false) => {
            let (a, b) = (number(first)?, number(last)?);
            // last-pos before first-pos makes the spec (and the header) invalid (§14.1.1).
            (a <= b).then_some(RangeSpec::FromTo(a, b))
        }
    }
}

/// `1*DIGIT`; values past `u64::MAX` saturate (they are past any dataset's end either way).
fn number(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(text.bytes().fold(0u64, |n, d| {
        n.saturating_mul(10).saturating_add(u64::from(d - b'0'))
    }))
}

/// What to answer a `GET` with `range` (the `Range` value, if any) and `if_range` (the
/// `If-Range` value, if any) for dataset `cid` of `size` bytes.
pub fn range_answer(
    range: Option<&str>,
    if_range: Option<&str>,
    cid: &Cid,
    size: u64,
) -> RangeAnswer {
    let Some(range) = range else {
        return RangeAnswer::Full;
    };
    if let Some(cond) = if_range
        && !strong_match(cond.trim(), cid)
    {
        return RangeAnswer::Full;
    }
    match parse_range(range) {
        None => RangeAnswer::Full,
        Some(RangeRequest::Single(spec)) => spec
            .resolve(size)
            .map_or(RangeAnswer::Unsatisfiable, RangeAnswer::Partial),
        Some(RangeRequest::Multiple(specs)) => {
            if specs.iter().any(|s| s.resolve(size).is_some()) {
                RangeAnswer::Full
            } else {
                RangeAnswer::Unsatisfiable
            }
        }
    }
}

/// The entity tag of dataset `cid`: its CID, quoted.
pub fn etag(cid: &Cid) -> String {
    format!("\"{cid}\"")
}

/// Whether `tag` (one entity-tag) is strongly equal to `cid`'s (§8.8.3.2): not weak, same
/// opaque tag.
fn strong_match(tag: &str, cid: &Cid) -> bool {
    tag.strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .is_some_and(|t| !t.contains('"') && t == cid.to_string())
}

/// Whether an `If-None-Match` value matches `cid`'s entity tag: `*`, or a list holding it
/// (weak comparison, so `W/"…"` matches too, §13.1.2). A list that does not parse matches
/// nothing.
pub fn none_match(value: &str, cid: &Cid) -> bool {
    let value = value.trim();
    if value == "*" {
        return true;
    }
    let ours = cid.to_string();
    let mut rest = value;
    loop {
        rest = rest.trim_start_matches([' ', '\t', ',']);
        if rest.is_empty() {
            return false;
        }
        rest = rest.strip_prefix("W/").unwrap_or(rest);
        // entity-tag = [ weakness ] DQUOTE *etagc DQUOTE; etagc excludes DQUOTE, so the tag
        // ends at the next one.
        let Some(body) = rest.strip_prefix('"') else {
            return false;
        };
        let Some(end) = body.find('"') else {
            return false;
        };
        if body[..end] == ours {
            return true;
        }
        rest = &body[end + 1..];
    }
}

/// `Content-Range` of a partial answer: `bytes first-last/size`.
pub fn content_range(range: &ByteRange, size: u64) -> String {
    format!(
        "bytes {}-{}/{size}",
        range.start(),
        range.end().saturating_sub(1)
    )
}

/// `Content-Range` of a `416`: `bytes */size`.
pub fn unsatisfied_range(size: u64) -> String {
    format!("bytes */{size}")
}

#[cfg(test)]
mod tests {
    use cairn_core::cid::parse_cid;
    use proptest::prelude::*;

    use super::*;

    const CID: &str = "zDvZRwzm1ePSzKSXt57D5YxHwcSDmsCyYN65wW4HT7fuX9HrzFXy";

    fn cid() -> Cid {
        parse_cid(CID).unwrap()
    }

    fn r(start: u64, end: u64) -> ByteRange {
        ByteRange::new(start, end).unwrap()
    }

    #[test]
    fn parses_the_three_forms_and_lists() {
        use RangeSpec::*;
        let one = |s: RangeSpec| Some(RangeRequest::Single(s));
        assert_eq!(parse_range("bytes=0-499"), one(FromTo(0, 499)));
        assert_eq!(parse_range("bytes=500-"), one(From(500)));
        assert_eq!(parse_range("bytes=-500"), one(Suffix(500)));
        assert_eq!(parse_range("Bytes=7-7"), one(FromTo(7, 7)));
        assert_eq!(parse_range("bytes= 1-2 ,"), one(FromTo(1, 2)));
        assert_eq!(
            parse_range("bytes=0-0, -1,,5-"),
            Some(RangeRequest::Multiple(vec![
                FromTo(0, 0),
                Suffix(1),
                From(5)
            ]))
        );
        assert_eq!(
            parse_range("bytes=99999999999999999999999-"),
            one(From(u64::MAX))
        );
    }

    #[test]
    fn invalid_values_are_ignored() {
        for bad in [
            "",
            "bytes",
            "bytes=",
            "bytes=,",
            "bytes=-",
            "bytes=5-2",
            "bytes=a-b",
            "bytes=1-2-3",
            "bytes=+1-2",
            "bytes=0x10-",
            "bytes=1 -2",
            "items=0-5",
            "bytes=0-1,5-2",
            "bytes 0-1",
        ] {
            assert_eq!(parse_range(bad), None, "{bad:?}");
            assert_eq!(
                range_answer(Some(bad), None, &cid(), 100),
                RangeAnswer::Full,
                "{bad:?}"
            );
        }
        let many = format!("bytes={}", vec!["0-0"; MAX_RANGE_SPECS + 1].join(","));
        assert_eq!(parse_range(&many), None);
        let long = format!("bytes=0-{}", "0".repeat(MAX_RANGE_HEADER_LEN));
        assert_eq!(parse_range(&long), None);
    }

    #[test]
    fn resolves_against_the_size() {
        use RangeSpec::*;
        assert_eq!(FromTo(0, 9).resolve(100), Some(r(0, 10)));
        assert_eq!(FromTo(90, 1000).resolve(100), Some(r(90, 100)));
        assert_eq!(FromTo(99, 99).resolve(100), Some(r(99, 100)));
        assert_eq!(FromTo(100, 100).resolve(100), None);
        assert_eq!(From(0).resolve(100), Some(r(0, 100)));
        assert_eq!(From(100).resolve(100), None);
        assert_eq!(Suffix(10).resolve(100), Some(r(90, 100)));
        assert_eq!(Suffix(1000).resolve(100), Some(r(0, 100)));
        assert_eq!(Suffix(0).resolve(100), None);
        assert_eq!(Suffix(5).resolve(0), None);
        assert_eq!(From(0).resolve(0), None);
    }

    #[test]
    fn answers() {
        let c = cid();
        let tag = etag(&c);
        assert_eq!(range_answer(None, None, &c, 100), RangeAnswer::Full);
        assert_eq!(
            range_answer(Some("bytes=10-19"), None, &c, 100),
            RangeAnswer::Partial(r(10, 20))
        );
        assert_eq!(
            range_answer(Some("bytes=100-"), None, &c, 100),
            RangeAnswer::Unsatisfiable
        );
        // Several ranges: the whole dataset unless none is satisfiable.
        assert_eq!(
            range_answer(Some("bytes=0-1,200-300"), None, &c, 100),
            RangeAnswer::Full
        );
        assert_eq!(
            range_answer(Some("bytes=100-,200-300"), None, &c, 100),
            RangeAnswer::Unsatisfiable
        );
        // If-Range: only our strong tag keeps the range.
        assert_eq!(
            range_answer(Some("bytes=0-0"), Some(&tag), &c, 100),
            RangeAnswer::Partial(r(0, 1))
        );
        for other in [
            format!("W/{tag}"),
            "\"other\"".to_owned(),
            "Wed, 21 Oct 2015 07:28:00 GMT".to_owned(),
        ] {
            assert_eq!(
                range_answer(Some("bytes=0-0"), Some(&other), &c, 100),
                RangeAnswer::Full,
                "{other}"
            );
        }
    }

    #[test]
    fn entity_tags() {
        let c = cid();
        assert_eq!(etag(&c), format!("\"{CID}\""));
        assert!(none_match("*", &c));
        assert!(none_match(&format!("\"{CID}\""), &c));
        assert!(none_match(&format!("W/\"{CID}\""), &c));
        assert!(none_match(&format!("\"a,b\", \"x\" ,W/\"{CID}\""), &c));
        assert!(!none_match("\"x\", \"y\"", &c));
        assert!(!none_match(CID, &c));
        assert!(!none_match(&format!("\"{CID}"), &c));
        assert!(!none_match("", &c));
        assert_eq!(content_range(&r(0, 10), 100), "bytes 0-9/100");
        assert_eq!(unsatisfied_range(100), "bytes */100");
    }

    proptest! {
        /// Every valid single range, written in any of the three forms, parses back and
        /// resolves to the bytes it names, and `Content-Range` states them.
        #[test]
        fn written_ranges_resolve_to_their_bytes(
            size in 1u64..1 << 40,
            a in any::<u64>(),
            b in any::<u64>(),
            over in 0u64..1000,
        ) {
            let (a, b) = (a % size, b % size);
            let (first, last) = (a.min(b), a.max(b));
            let c = cid();
            let answer = |v: String| range_answer(Some(&v), None, &c, size);
            let want = r(first, last + 1);
            prop_assert_eq!(answer(format!("bytes={first}-{last}")), RangeAnswer::Partial(want));
            // A last-pos past the end is clamped.
            prop_assert_eq!(
                answer(format!("bytes={first}-{}", size - 1 + over)),
                RangeAnswer::Partial(r(first, size))
            );
            prop_assert_eq!(answer(format!("bytes={first}-")), RangeAnswer::Partial(r(first, size)));
            let n = last - first + 1;
            prop_assert_eq!(answer(format!("bytes=-{n}")), RangeAnswer::Partial(r(size - n, size)));
            prop_assert_eq!(
                content_range(&want, size),
                format!("bytes {first}-{last}/{size}")
            );
            // Starting at or past the end is unsatisfiable.
            prop_assert_eq!(answer(format!("bytes={}-", size + over)), RangeAnswer::Unsatisfiable);
        }
    }
}
