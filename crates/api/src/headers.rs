//! Checking the upload headers as the reference does.
//!
//! * `Content-Type`: accepted when its lower-cased value is one of the MIME types in the
//!   reference's table (Nim's `std/mimetypes`, 771 values, shipped as `mimetypes.txt`). Parameters
//!   are not stripped, so `text/plain; charset=utf-8` is refused exactly as the reference refuses
//!   it; `application/x-www-form-urlencoded`, which some clients send by default, is not in the
//!   table. An absent or empty header means "no MIME type".
//! * `Content-Disposition`: the file name is the text after `filename="` up to the closing quote.
//!   Other forms (`filename=x`, `filename*=`) give no file name, as in the reference.
//! * File names follow the rules of Nim's `isValidFilename` (which the reference calls): at most
//!   259 bytes; the name part (before the extension) must be non-empty, must not start with a
//!   space or end with a space or a dot, must not contain `/ \ : * ? " < > | ^` or NUL, and must
//!   not be a reserved device name (CON, PRN, AUX, NUL, COM0–9, LPT0–9).

use std::{collections::HashSet, sync::OnceLock};

/// The MIME types the reference accepts, one per line.
const MIMETYPES: &str = include_str!("mimetypes.txt");

/// The longest file name accepted (Nim's `isValidFilename` default).
pub const MAX_FILENAME_LEN: usize = 259;

/// The longest file name accepted with the directories before it (Linux's `PATH_MAX`). The
/// reference checks only the part after the last `/`, so a request head's worth of
/// directories (hyper takes heads of about 400 KB) went into the manifest, past the room an
/// upload reserves for it, and into every download's `Content-Disposition`, larger than curl
/// takes (review). A cairn node refuses such a name (`422`) where the reference stores it.
pub const MAX_FILENAME_PATH_LEN: usize = 4096;

fn mimetypes() -> &'static HashSet<&'static str> {
    static SET: OnceLock<HashSet<&'static str>> = OnceLock::new();
    SET.get_or_init(|| {
        MIMETYPES
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect()
    })
}

/// Whether the reference would accept `value` as an upload's MIME type.
pub fn valid_mimetype(value: &str) -> bool {
    mimetypes().contains(value.to_ascii_lowercase().as_str())
}

/// The file name of a `Content-Disposition` header value, as the reference extracts it.
pub fn parse_content_disposition_filename(value: &str) -> Option<String> {
    const KEY: &str = "filename=\"";
    let start = value.find(KEY)? + KEY.len();
    let rest = &value[start..];
    let name = match rest.find('"') {
        Some(end) => &rest[..end],
        None => rest.trim_end(),
    };
    Some(name.to_owned())
}

/// Whether `filename` passes the reference's file name check.
pub fn valid_filename(filename: &str) -> bool {
    if filename.len() > MAX_FILENAME_PATH_LEN {
        return false;
    }
    let base = filename.rsplit('/').next().unwrap_or(filename);
    let (name, ext) = match base.rfind('.') {
        Some(p) if p > 0 && p + 1 < base.len() => base.split_at(p),
        _ => (base, ""),
    };
    const INVALID_CHARS: &[char] = &['/', '\\', ':', '*', '?', '"', '<', '>', '|', '^', '\0'];
    if name.len() + ext.len() > MAX_FILENAME_LEN
        || name.is_empty()
        || name.starts_with(' ')
        || name.ends_with(' ')
        || name.ends_with('.')
        || name.contains(INVALID_CHARS)
    {
        return false;
    }
    let upper = name.to_ascii_uppercase();
    let reserved = matches!(upper.as_str(), "CON" | "PRN" | "AUX" | "NUL")
        || ((upper.starts_with("COM") || upper.starts_with("LPT"))
            && upper.len() == 4
            && upper.as_bytes()[3].is_ascii_digit());
    !reserved
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cases the reference's code decides (codex/rest/api.nim + Nim std/mimetypes, std/os).
    #[test]
    fn mimetypes_as_reference() {
        assert_eq!(mimetypes().len(), 771);
        for ok in [
            "text/plain",
            "application/octet-stream",
            "image/png",
            "TEXT/Plain",
            "application/json",
        ] {
            assert!(valid_mimetype(ok), "{ok}");
        }
        for bad in [
            "application/x-www-form-urlencoded",
            "hello/world",
            "text/plain; charset=utf-8",
            "multipart/form-data",
            "",
        ] {
            assert!(!valid_mimetype(bad), "{bad}");
        }
    }

    #[test]
    fn content_disposition_as_reference() {
        let p = parse_content_disposition_filename;
        assert_eq!(
            p(r#"attachment; filename="example.txt""#).as_deref(),
            Some("example.txt")
        );
        assert_eq!(
            p(r#"attachment; filename="a.txt"; x=1"#).as_deref(),
            Some("a.txt")
        );
        assert_eq!(p("attachment; filename=x.txt"), None);
        assert_eq!(p("attachment; filename*=UTF-8''x.txt"), None);
        assert_eq!(p("attachment"), None);
        assert_eq!(p(r#"filename="""#).as_deref(), Some(""));
    }

    #[test]
    fn filenames_as_reference() {
        for ok in [
            "example.txt",
            ".bashrc",
            "a/b.txt",
            "con.tar.gz",
            "x.t*t",
            "name with space.txt",
            &format!("{}x.txt", "d/".repeat((MAX_FILENAME_PATH_LEN - 5) / 2)),
        ] {
            assert!(valid_filename(ok), "{ok}");
        }
        for bad in [
            "exam*ple.txt",
            "",
            "foo.",
            "a..b",
            " lead",
            "trail ",
            "con.txt",
            "COM1",
            "lpt9.x",
            "foo/",
            "a:b",
            &"x".repeat(260),
            &format!("{}x.txt", "d/".repeat(MAX_FILENAME_PATH_LEN / 2)),
        ] {
            assert!(!valid_filename(bad), "{bad:?}");
        }
    }
}
