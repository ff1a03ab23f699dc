//! What the client commands print: human-readable tables, field lists and sizes, or JSON
//! (`--json`: every command prints compact JSON, one value per line). Everything meant for
//! stdout goes through [`print`] or [`print_json`], so a closed pipe is an error that names
//! stdout rather than a panic.

use std::io::Write;

use anyhow::Context;
use serde::Serialize;

/// Spaces between table columns and between a field's name and its value.
pub(crate) const COLUMN_GAP: usize = 2;

/// A human-readable size in binary units ("64.1 KiB", "0 B").
pub(crate) fn size(bytes: u64) -> String {
    bytesize::ByteSize::b(bytes).display().iec().to_string()
}

/// A short human-readable duration: "42s", "3m05s", "2h07m", "3d04h".
pub(crate) fn duration_secs(secs: u64) -> String {
    const MINUTE: u64 = 60;
    const HOUR: u64 = 60 * MINUTE;
    const DAY: u64 = 24 * HOUR;
    match secs {
        s if s < MINUTE => format!("{s}s"),
        s if s < HOUR => format!("{}m{:02}s", s / MINUTE, s % MINUTE),
        s if s < DAY => format!("{}h{:02}m", s / HOUR, s % HOUR / MINUTE),
        s => format!("{}d{:02}h", s / DAY, s % DAY / HOUR),
    }
}

/// How a table column is aligned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Align {
    /// Padded on the right (text).
    Left,
    /// Padded on the left (numbers).
    Right,
}

/// Whether `c` is a control character or a format character that reorders or hides text
/// (U+200B to U+200F, U+202A to U+202E, U+2066 to U+2069, U+FEFF: a name shown as `txt.exe`
/// that is `exe.txt`).
pub(crate) fn deceptive(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}')
}

/// `text` with its control characters, and the format characters that reorder or hide text
/// ([`deceptive`]), escaped as Rust writes them (`\u{1b}`, `\n`, `\u{202e}`): text from a peer
/// (a file name, an agent string) must not drive the terminal, forge lines nor show other
/// text than it holds (review: `cairn ls` showed `ab\u{202e}cod.exe` as `abexe.doc`).
pub(crate) fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(deceptive) {
        return text.into();
    }
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_debug());
        } else if deceptive(c) {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out.into()
}

/// A table: a header row and `rows` (control characters escaped, see [`printable`]), columns as wide as their widest cell, separated by
/// [`COLUMN_GAP`] spaces. The last column is not padded (it may be long: a file name, an
/// address), and no line ends in spaces. Every line ends in a newline.
pub(crate) fn table(columns: &[(&str, Align)], rows: &[Vec<String>]) -> String {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.iter().map(|c| printable(c).into_owned()).collect())
        .collect();
    let rows = rows.as_slice();
    let width = |s: &str| s.chars().count();
    let mut widths: Vec<usize> = columns.iter().map(|(h, _)| width(h)).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(width(cell));
        }
    }
    let header: Vec<String> = columns.iter().map(|(h, _)| (*h).to_owned()).collect();
    let mut out = String::new();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, ((cell, w), (_, align))) in row.iter().zip(&widths).zip(columns).enumerate() {
            if i > 0 {
                line.push_str(&" ".repeat(COLUMN_GAP));
            }
            let pad = " ".repeat(w.saturating_sub(width(cell)));
            let last = i + 1 == columns.len();
            match align {
                Align::Left if last => line.push_str(cell),
                Align::Left => {
                    line.push_str(cell);
                    line.push_str(&pad);
                }
                Align::Right => {
                    line.push_str(&pad);
                    line.push_str(cell);
                }
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Named fields, one per line, values aligned (control characters escaped, see
/// [`printable`]); a field with several values continues on indented lines, one without any
/// shows `-`.
pub(crate) fn fields(rows: &[(&str, Vec<String>)]) -> String {
    let width = rows
        .iter()
        .map(|(name, _)| name.chars().count())
        .max()
        .unwrap_or(0)
        + COLUMN_GAP;
    let mut out = String::new();
    for (name, values) in rows {
        let mut lines = values.iter().map(|v| printable(v));
        let first = lines.next().unwrap_or_else(|| "-".into());
        out.push_str(format!("{name:width$}{first}").trim_end());
        out.push('\n');
        for more in lines {
            out.push_str(&format!("{:width$}{more}\n", ""));
        }
    }
    out
}

/// `text` on one line: whitespace runs become one space; cut to `max` characters with `…`.
pub(crate) fn one_line(text: &str, max: usize) -> String {
    let joined = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if joined.chars().count() <= max {
        return joined;
    }
    let mut cut: String = joined.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// An error with its causes on one line, `what failed: why: …` (as anyhow's `{:#}`), saying
/// each thing once: many errors repeat their source's message in their own ("store I/O
/// error: Not a directory (os error 20)" over that I/O error), which would otherwise print it
/// twice. A cause whose text the line already holds is left out; a cause that holds the text
/// of the one before (which it explains further) takes its place. Compared without regard to
/// case.
pub(crate) fn error_chain(err: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in err.chain() {
        let part = one_line(&cause.to_string(), usize::MAX);
        let lower = part.to_lowercase();
        if part.is_empty() || parts.join(": ").to_lowercase().contains(&lower) {
            continue;
        }
        match parts.last_mut() {
            Some(last) if lower.contains(&last.to_lowercase()) => *last = part,
            _ => parts.push(part),
        }
    }
    parts.join(": ")
}

/// Writes a note for the user to stderr (`cairn: note: …`), where it never mixes with the
/// command's output.
pub(crate) fn note(text: &str) {
    eprintln!("cairn: note: {text}");
}

/// Writes `text` to stdout as it is.
pub(crate) fn print(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .context("cannot write to stdout")
}

/// Writes `value` to stdout as compact JSON on one line (JSON Lines: a command that prints one
/// object per operand prints them as they complete, and every `--json` output reads the same
/// way, with `jq` or line by line).
pub(crate) fn print_json(value: &impl Serialize) -> anyhow::Result<()> {
    let text = serde_json::to_string(value).context("cannot encode the JSON output")?;
    print(&format!("{text}\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What tables and field lists print comes partly from peers (a remote file name in
    /// `ls`, an agent string in `peers`): control characters in it are shown escaped, never
    /// written to the terminal (an escape sequence could recolour it, move the cursor or
    /// rewrite earlier lines; a newline would forge a row). Found by review.
    #[test]
    fn control_characters_from_peers_are_escaped() {
        let evil = "a\x1b[2J\rb\nc\u{7}";
        let t = table(
            &[("A", Align::Left), ("B", Align::Left)],
            &[vec![evil.into(), "ok".into()]],
        );
        assert!(!t.chars().any(|c| c.is_control() && c != '\n'), "{t:?}");
        assert_eq!(t.lines().count(), 2, "{t:?}");
        assert!(t.contains(r"a\u{1b}[2J\rb\nc\u{7}"), "{t:?}");
        let f = fields(&[("agent", vec![evil.into()])]);
        assert!(!f.chars().any(|c| c.is_control() && c != '\n'), "{f:?}");
        // Characters that reorder or hide text are shown for what they are.
        let t = table(
            &[("A", Align::Left)],
            &[vec!["ab\u{202e}cod.exe\u{200b}".into()]],
        );
        assert!(t.contains(r"ab\u{202e}cod.exe\u{200b}"), "{t:?}");
        // Other text is left as it is.
        let t = table(&[("A", Align::Left)], &[vec!["été \"q\" \\ 日本".into()]]);
        assert!(t.contains("été \"q\" \\ 日本"), "{t:?}");
    }

    #[test]
    fn sizes() {
        assert_eq!(size(0), "0 B");
        assert_eq!(size(1023), "1023 B");
        assert_eq!(size(1536), "1.5 KiB");
        assert_eq!(size(20 << 30), "20.0 GiB");
    }

    #[test]
    fn durations() {
        assert_eq!(duration_secs(0), "0s");
        assert_eq!(duration_secs(59), "59s");
        assert_eq!(duration_secs(185), "3m05s");
        assert_eq!(duration_secs(2 * 3600 + 7 * 60 + 9), "2h07m");
        assert_eq!(duration_secs(3 * 86400 + 4 * 3600), "3d04h");
    }

    #[test]
    fn tables_align_and_do_not_pad_the_last_column() {
        let t = table(
            &[
                ("CID", Align::Left),
                ("SIZE", Align::Right),
                ("NAME", Align::Left),
            ],
            &[
                vec!["zA".into(), "1.5 KiB".into(), "a file.txt".into()],
                vec!["zBBBB".into(), "0 B".into(), String::new()],
            ],
        );
        assert_eq!(
            t,
            "CID       SIZE  NAME\n\
             zA     1.5 KiB  a file.txt\n\
             zBBBB      0 B\n"
        );
        // Widths count characters, not bytes.
        let t = table(
            &[("N", Align::Left), ("X", Align::Left)],
            &[vec!["é".into(), "1".into()]],
        );
        assert_eq!(t, "N  X\né  1\n");
        assert_eq!(table(&[("ONLY", Align::Left)], &[]), "ONLY\n");
    }

    #[test]
    fn fields_align_and_continue() {
        let f = fields(&[
            ("peer id", vec!["16U".into()]),
            ("addresses", vec!["/a".into(), "/b".into()]),
            ("spr", vec![]),
        ]);
        assert_eq!(
            f,
            "peer id    16U\n\
             addresses  /a\n\
             \x20          /b\n\
             spr        -\n"
        );
    }

    /// An error whose message repeats its source's, as many library errors do.
    #[derive(Debug)]
    struct Repeats(Box<dyn std::error::Error + Send + Sync>);

    impl std::fmt::Display for Repeats {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{}", self.0)
        }
    }

    impl std::error::Error for Repeats {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&*self.0)
        }
    }

    #[test]
    fn error_chains_say_each_cause_once() {
        use anyhow::Context as _;
        let os = || std::io::Error::from_raw_os_error(20);
        let err = Err::<(), _>(Repeats(Box::new(os())))
            .context("cannot open the block store in d/repo")
            .unwrap_err();
        assert_eq!(
            error_chain(&err),
            "cannot open the block store in d/repo: Not a directory (os error 20)"
        );
        // A message that already quotes its cause, a cause in another case, and a new cause
        // after a repeated one.
        let err = Err::<(), _>(Repeats(Box::new(Repeats(
            "failed to decode envelope: buffer underflow".into(),
        ))))
        .context("Failed to decode envelope")
        .context("--bootstrap-node spr:abc: bad record")
        .unwrap_err();
        assert_eq!(
            error_chain(&err),
            "--bootstrap-node spr:abc: bad record: failed to decode envelope: buffer underflow"
        );
        let err = Err::<(), _>(os())
            .context(format!("cannot listen: {}", os()))
            .unwrap_err();
        assert_eq!(
            error_chain(&err),
            "cannot listen: Not a directory (os error 20)"
        );
        // Distinct causes are all kept, on one line.
        let err = Err::<(), _>(anyhow::anyhow!("gone\n away"))
            .context("deleting x")
            .unwrap_err();
        assert_eq!(error_chain(&err), "deleting x: gone away");
    }

    #[test]
    fn one_line_collapses_and_cuts() {
        assert_eq!(one_line(" a\n b\t c ", 100), "a b c");
        assert_eq!(one_line("abcdef", 4), "abc…");
        assert_eq!(one_line("abcd", 4), "abcd");
        assert_eq!(one_line("", 4), "");
    }
}
