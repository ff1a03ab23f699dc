//! `Content-Disposition` of a dataset download, and reading it back on the client side.
//!
//! The reference node sends `attachment; filename="<name>"` with the stored name as it is,
//! UTF-8 bytes included. cairn sends exactly that for a *plain* name (printable ASCII without
//! `"`, `\`, `;` or `%`). Any other name goes out as RFC 6266 recommends for names beyond
//! ASCII: `attachment; filename="<fallback>"; filename*=UTF-8''<percent-encoded name>`, where
//! the fallback is an ASCII stand-in for clients that do not read `filename*` ([`fallback`])
//! and `filename*` is the name itself in RFC 8187's encoding ([`ATTR_ESCAPED`]). Raw UTF-8 in a
//! header is `obs-text` to RFC 9110: clients read it as Latin-1 (browsers) or refuse it.
//!
//! The name comes from whoever uploaded the dataset, maybe to another node, so it must never
//! end the quoted string or add a parameter: a name the node would not accept from an upload
//! ([`valid_filename`](crate::valid_filename)), or holding `"`, `\` or a control character
//! anywhere (the upload check looks at the characters before the extension only), gets a bare
//! `attachment`, as before. In the extended form the fallback holds printable ASCII but for
//! `"`, `\`, `;` and `%` (each replaced), and `filename*` holds RFC 8187 `attr-char`s and
//! `%XX` escapes only, so no byte of the name can reach the header unescaped. `;` and `%` are
//! not dangerous inside a quoted string, but naive parsers split on `;` and some clients
//! percent-decode `filename` (RFC 6266 appendix D), so names with them take the extended form.
//!
//! [`download_filename`] is the client side (`cairn download -o DIR`): `filename*` when it is
//! there and decodes, else `filename="…"` read as the reference's own parser reads it (which is
//! what a reference node's raw UTF-8 needs).

use axum::http::HeaderValue;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};

/// What RFC 8187 escapes in an `ext-value`: every byte that is not an `attr-char` (`ALPHA`,
/// `DIGIT` and ``!#$&+-.^_`|~``). `percent-encoding` escapes every non-ASCII byte too.
const ATTR_ESCAPED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'!')
    .remove(b'#')
    .remove(b'$')
    .remove(b'&')
    .remove(b'+')
    .remove(b'-')
    .remove(b'.')
    .remove(b'^')
    .remove(b'_')
    .remove(b'`')
    .remove(b'|')
    .remove(b'~');

/// What stands in the fallback for a run of characters it cannot hold.
const FALLBACK_REPLACEMENT: char = '_';

/// The fallback's name part when nothing of the name's own is left in it (`数据.csv` →
/// `download.csv`).
const FALLBACK_STEM: &str = "download";

/// The disposition without a file name.
const BARE: &str = "attachment";

/// Whether `c` may stand in a quoted `filename` as it is: printable ASCII but for the quoted
/// string's own specials (`"`, `\`) and the two that naive clients misread (`;`, `%`).
fn plain_char(c: char) -> bool {
    matches!(c, ' '..='~') && !matches!(c, '"' | '\\' | ';' | '%')
}

/// Whether `name` goes out with no file name at all: one the node would not accept from an
/// upload, or one with a character that ends or escapes a quoted string, or a control
/// character (see the module docs).
fn refused(name: &str) -> bool {
    !crate::valid_filename(name)
        || name
            .chars()
            .any(|c| c.is_control() || matches!(c, '"' | '\\'))
}

/// `Content-Disposition` for a download of a dataset named `filename` (see the module docs).
pub(crate) fn attachment(filename: Option<&str>) -> HeaderValue {
    let text = match filename {
        Some(name) if !refused(name) => {
            if name.chars().all(plain_char) {
                format!("{BARE}; filename=\"{name}\"")
            } else {
                format!(
                    "{BARE}; filename=\"{}\"; filename*=UTF-8''{}",
                    fallback(name),
                    utf8_percent_encode(name, ATTR_ESCAPED)
                )
            }
        }
        _ => return HeaderValue::from_static(BARE),
    };
    // Always valid (printable ASCII only, by construction); a bare `attachment` otherwise.
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(BARE))
}

/// An ASCII stand-in for `name`, of [`plain_char`]s only: each run of other characters (or
/// of `/`) becomes one [`FALLBACK_REPLACEMENT`]. The extension is kept when something of it is
/// left; a name part with nothing of its own left becomes [`FALLBACK_STEM`]. `résumé.pdf` →
/// `r_sum_.pdf`, `数据.csv` → `download.csv`, `报告.文档` → `download`.
fn fallback(name: &str) -> String {
    let (stem, ext) = match name.rfind('.') {
        Some(p) if p > 0 && p + 1 < name.len() => (&name[..p], Some(&name[p + 1..])),
        _ => (name, None),
    };
    let has_own = |s: &str| s.bytes().any(|b| b.is_ascii_alphanumeric());
    let mut out = replace_runs(stem);
    if !has_own(&out) {
        out = FALLBACK_STEM.to_owned();
    }
    if let Some(ext) = ext.map(replace_runs).filter(|e| has_own(e)) {
        out.push('.');
        out.push_str(&ext);
    }
    out
}

/// `text` with each run of characters that are not [`plain_char`]s, or are `/`, replaced by
/// one [`FALLBACK_REPLACEMENT`].
fn replace_runs(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_run = false;
    for c in text.chars() {
        if plain_char(c) && c != '/' {
            out.push(c);
            in_run = false;
        } else if !in_run {
            out.push(FALLBACK_REPLACEMENT);
            in_run = true;
        }
    }
    out
}

/// The parameters of a `Content-Disposition` value after its type, in order: each name
/// lower-cased, each value with a quoted string's quotes and escapes undone. A `;` or `=`
/// inside a quoted string is part of the value, never a new parameter.
fn parameters(value: &str) -> Vec<(String, String)> {
    let mut params = Vec::new();
    let Some((_, mut rest)) = value.split_once(';') else {
        return params;
    };
    while !rest.is_empty() {
        let (name, after_name) = match rest.find(['=', ';']) {
            Some(i) if rest.as_bytes()[i] == b'=' => (&rest[..i], &rest[i + 1..]),
            // A parameter without a value: skipped.
            Some(i) => {
                rest = &rest[i + 1..];
                continue;
            }
            None => break,
        };
        let after_name = after_name.trim_start();
        let (text, after_value) = if let Some(quoted) = after_name.strip_prefix('"') {
            let mut text = String::new();
            let mut chars = quoted.char_indices();
            let mut end = quoted.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    '\\' => {
                        if let Some((_, escaped)) = chars.next() {
                            text.push(escaped);
                        }
                    }
                    c => text.push(c),
                }
            }
            let after = &quoted[end.min(quoted.len())..];
            (text, after.find(';').map_or("", |i| &after[i + 1..]))
        } else {
            match after_name.split_once(';') {
                Some((v, after)) => (v.trim().to_owned(), after),
                None => (after_name.trim().to_owned(), ""),
            }
        };
        params.push((name.trim().to_ascii_lowercase(), text));
        rest = after_value;
    }
    params
}

/// An RFC 8187 `ext-value` (`charset'language'pct-encoded`) decoded, for the charsets every
/// recipient must know: UTF-8 and ISO-8859-1.
fn decode_ext_value(value: &str) -> Option<String> {
    let mut parts = value.splitn(3, '\'');
    let (charset, _language, encoded) = (parts.next()?, parts.next()?, parts.next()?);
    let bytes = percent_decode_str(encoded);
    if charset.eq_ignore_ascii_case("UTF-8") {
        bytes.decode_utf8().ok().map(|s| s.into_owned())
    } else if charset.eq_ignore_ascii_case("ISO-8859-1") {
        Some(bytes.map(char::from).collect())
    } else {
        None
    }
}

/// The file name a download's `Content-Disposition` value gives: its `filename*` (RFC 8187)
/// when present and decodable, else its `filename="…"` as the reference reads it
/// ([`parse_content_disposition_filename`](crate::parse_content_disposition_filename); a
/// reference node sends a name beyond ASCII there as raw UTF-8). `None` when neither is there
/// or the value is not UTF-8. The name is as the uploader gave it: a caller that makes a path
/// of it must check it (it may hold `/`, `..` or control characters).
pub fn download_filename(value: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(value).ok()?;
    parameters(text)
        .into_iter()
        .find(|(name, _)| name == "filename*")
        .and_then(|(_, v)| decode_ext_value(&v))
        .or_else(|| crate::parse_content_disposition_filename(text))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn header(name: &str) -> String {
        attachment(Some(name)).to_str().unwrap().to_owned()
    }

    /// A plain ASCII name gets the reference's exact form; a name beyond ASCII (or with `;` or
    /// `%`) an ASCII fallback and the name itself in `filename*`.
    #[test]
    fn names_beyond_plain_ascii_get_filename_star() {
        assert_eq!(header("notes.txt"), "attachment; filename=\"notes.txt\"");
        assert_eq!(
            header("name with space.tar.gz"),
            "attachment; filename=\"name with space.tar.gz\""
        );
        assert_eq!(
            header("r\u{e9}sum\u{e9}.pdf"),
            "attachment; filename=\"r_sum_.pdf\"; filename*=UTF-8''r%C3%A9sum%C3%A9.pdf"
        );
        assert_eq!(
            header("\u{6570}\u{636e}.csv"),
            "attachment; filename=\"download.csv\"; filename*=UTF-8''%E6%95%B0%E6%8D%AE.csv"
        );
        assert_eq!(
            header("a;b 100%.txt"),
            "attachment; filename=\"a_b 100_.txt\"; filename*=UTF-8''a%3Bb%20100%25.txt"
        );
        assert_eq!(attachment(None), BARE);
    }

    #[test]
    fn fallbacks_keep_what_ascii_can_say() {
        for (name, want) in [
            ("r\u{e9}sum\u{e9}.pdf", "r_sum_.pdf"),
            ("\u{6570}\u{636e}\u{62a5}\u{544a}.csv", "download.csv"),
            ("report.\u{6587}\u{6863}", "report"),
            ("\u{62a5}\u{544a}.\u{6587}\u{6863}", "download"),
            ("\u{e9}t\u{e9}", "_t_"),
            ("x.t\u{e9}x", "x.t_x"),
            ("dir/\u{e9}.txt", "dir_.txt"),
            (";;;.txt", "download.txt"),
        ] {
            assert_eq!(fallback(name), want, "{name:?}");
        }
    }

    /// What the node refuses from an upload, and what would end or escape the quoted string,
    /// still gets a bare `attachment`.
    #[test]
    fn refused_names_get_no_file_name() {
        for bad in [
            "x.a\"; filename*=UTF-8''evil.sh",
            "x.\u{e9}\"",
            "x.a\\\"",
            "x.t\tt",
            "x.\u{e9}\r\nSet-Cookie: a=b",
            "x.\u{85}",
            "con.txt",
            "",
        ] {
            assert_eq!(attachment(Some(bad)), BARE, "{bad:?}");
        }
    }

    /// What the server sends, the client reads back as the name; a reference node's raw UTF-8
    /// and plain `filename` are read too; a `filename*` inside a quoted string is not one.
    #[test]
    fn download_filename_reads_what_either_node_sends() {
        for name in [
            "notes.txt",
            "r\u{e9}sum\u{e9}.pdf",
            "\u{6570}\u{636e}.csv",
            "a;b 100%.txt",
            "\u{1f600} x.y",
        ] {
            let value = attachment(Some(name));
            assert_eq!(
                download_filename(value.as_bytes()).as_deref(),
                Some(name),
                "{value:?}"
            );
        }
        let read = |v: &str| download_filename(v.as_bytes());
        assert_eq!(
            read("attachment; filename=\"\u{e9}t\u{e9}.txt\"").as_deref(),
            Some("\u{e9}t\u{e9}.txt")
        );
        assert_eq!(
            read("attachment; filename=\"x.a; filename*=UTF-8''evil\"").as_deref(),
            Some("x.a; filename*=UTF-8''evil")
        );
        assert_eq!(
            read("attachment; FILENAME*=utf-8'en'%C3%A9.txt").as_deref(),
            Some("\u{e9}.txt")
        );
        assert_eq!(
            read("attachment; filename*=iso-8859-1''%E9.txt").as_deref(),
            Some("\u{e9}.txt")
        );
        // An undecodable `filename*` gives way to `filename`.
        assert_eq!(
            read("attachment; filename=\"a.txt\"; filename*=UTF-8''%FF.txt").as_deref(),
            Some("a.txt")
        );
        assert_eq!(
            read("attachment; filename=\"a.txt\"; filename*=koi8-r''x").as_deref(),
            Some("a.txt")
        );
        assert_eq!(read("attachment"), None);
        assert_eq!(read("attachment; filename*"), None);
        assert_eq!(download_filename(b"attachment; filename=\"\xff\""), None);
    }

    proptest! {
        /// Whatever the name, the header is a valid `HeaderValue` of printable ASCII (no CR,
        /// LF or other control), with the quoted `filename` the only quotes in it, no
        /// backslash, and no parameter beyond `filename` and `filename*`; a name that gets
        /// one reads back unchanged.
        #[test]
        fn any_name_makes_a_safe_header(
            name in prop_oneof![any::<String>(), "[ -~\u{e9}\u{6570}\u{85}]{1,12}"],
            ext in "[a-z\u{e9}\u{6570};%\"]{0,4}",
        ) {
            let name = format!("{name}.{ext}");
            let value = attachment(Some(&name));
            let text = value.to_str().expect("visible ASCII");
            prop_assert!(text.bytes().all(|b| (b' '..=b'~').contains(&b)), "{text:?}");
            prop_assert!(!text.contains('\\'));
            let params = parameters(text);
            prop_assert!(params.len() <= 2);
            if text == BARE {
                prop_assert!(params.is_empty());
            } else {
                prop_assert_eq!(text.matches('"').count(), 2, "{}", text);
                prop_assert_eq!(&params[0].0, "filename");
                if params.len() == 2 {
                    prop_assert_eq!(&params[1].0, "filename*");
                }
                prop_assert_eq!(download_filename(value.as_bytes()), Some(name));
            }
        }

        /// Names of the node's own alphabet beyond ASCII always get `filename*`.
        #[test]
        fn accepted_names_beyond_ascii_are_sent(
            name in "[a-z\u{e9}\u{6570}\u{1f600}]([a-z\u{e9}\u{6570}\u{1f600} ]{0,20}[a-z\u{e9}\u{6570}\u{1f600}])?\\.[a-z]{1,4}",
        ) {
            prop_assume!(crate::valid_filename(&name)); // not `con.txt`
            let value = attachment(Some(&name));
            let text = value.to_str().expect("visible ASCII");
            prop_assert_eq!(text.contains("; filename*=UTF-8''"), !name.is_ascii(), "{}", text);
            prop_assert_eq!(download_filename(value.as_bytes()), Some(name));
        }
    }
}
