//! Exit codes: a small, stable set that scripts can rely on, and the one place where the node's
//! HTTP answers are mapped to them ([`for_status`]).
//!
//! A failure that should end the process with a particular code is raised as a [`Failure`]
//! somewhere in an [`anyhow::Error`]'s chain (context may be added around it); [`code_of`] finds
//! it. Anything else is [`FAILURE`]. Clap itself exits with [`USAGE`] on a command line it
//! cannot parse; `cairn start` uses it too for option values clap cannot check and for a config
//! file that cannot be read or holds a mistake, so every mistake in what the operator gave
//! exits 2, and 1 means the node itself failed (a port in use, a store that cannot be opened).

use std::fmt;

use reqwest::StatusCode;

/// Success.
pub(crate) const SUCCESS: u8 = 0;
/// Any failure without a more specific code below.
pub(crate) const FAILURE: u8 = 1;
/// The command line is wrong (clap's own code for usage errors; cairn uses it for invalid
/// combinations and values clap cannot check, and for `cairn start`'s config file).
pub(crate) const USAGE: u8 = 2;
/// The node could not be reached (nothing listening at `--api`, a name that does not resolve)
/// or did not answer in time.
pub(crate) const UNREACHABLE: u8 = 3;
/// The node does not have what was asked for (HTTP 404).
pub(crate) const NOT_FOUND: u8 = 4;
/// The node refused the request as invalid (HTTP 400 or 422): a malformed CID or peer id, an
/// unacceptable MIME type or file name, an empty upload, a peer that cannot be dialled.
pub(crate) const INVALID: u8 = 5;
/// The node's storage quota or disk is full (HTTP 507).
pub(crate) const NO_SPACE: u8 = 6;

/// Every exit code with what it means, in order: what `cairn --help` prints.
pub(crate) const CODES: [(u8, &str); 7] = [
    (SUCCESS, "success"),
    (FAILURE, "failure (anything not listed below)"),
    (
        USAGE,
        "usage error (invalid command line, option value or config file)",
    ),
    (
        UNREACHABLE,
        "the node cannot be reached, or did not answer in time",
    ),
    (NOT_FOUND, "not found on the node (HTTP 404)"),
    (
        INVALID,
        "the node refused the request as invalid (HTTP 400, 422)",
    ),
    (
        NO_SPACE,
        "the node's storage quota or disk is full (HTTP 507)",
    ),
];

/// The exit-code section of `cairn --help`.
pub(crate) fn help() -> String {
    let mut text = String::from("Exit codes:\n");
    for (code, meaning) in CODES {
        text.push_str(&format!("  {code}  {meaning}\n"));
    }
    text
}

/// The exit code for an HTTP answer of the node. Success statuses map to [`SUCCESS`]; statuses
/// without a specific meaning to [`FAILURE`].
pub(crate) fn for_status(status: StatusCode) -> u8 {
    match status {
        s if s.is_success() => SUCCESS,
        StatusCode::NOT_FOUND => NOT_FOUND,
        StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY => INVALID,
        StatusCode::INSUFFICIENT_STORAGE => NO_SPACE,
        _ => FAILURE,
    }
}

/// A failure that ends the process with `code`, with a message for stderr.
#[derive(Debug)]
pub(crate) struct Failure {
    /// The exit code.
    pub(crate) code: u8,
    /// What went wrong, one line.
    message: String,
}

impl Failure {
    /// A failure with `code` and `message`.
    pub(crate) fn new(code: u8, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: message.into(),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

/// The exit code for `err`: the first [`Failure`]'s in its chain, else [`FAILURE`].
pub(crate) fn code_of(err: &anyhow::Error) -> u8 {
    err.chain()
        .find_map(|e| e.downcast_ref::<Failure>())
        .map_or(FAILURE, |f| f.code)
}

#[cfg(test)]
mod tests {
    use anyhow::Context;

    use super::*;

    #[test]
    fn statuses_map_to_codes() {
        for (status, code) in [
            (200, SUCCESS),
            (204, SUCCESS),
            (206, SUCCESS),
            (400, INVALID),
            (422, INVALID),
            (404, NOT_FOUND),
            (507, NO_SPACE),
            (500, FAILURE),
            (503, FAILURE),
            (401, FAILURE),
            (416, FAILURE),
        ] {
            let s = StatusCode::from_u16(status).unwrap();
            assert_eq!(for_status(s), code, "{status}");
        }
    }

    #[test]
    fn codes_are_distinct_and_documented() {
        let mut seen: Vec<u8> = CODES.iter().map(|(c, _)| *c).collect();
        assert_eq!(seen, vec![0, 1, 2, 3, 4, 5, 6]);
        seen.dedup();
        assert_eq!(seen.len(), CODES.len());
        let help = help();
        for (code, meaning) in CODES {
            assert!(help.contains(&format!("  {code}  {meaning}")), "{help}");
        }
    }

    #[test]
    fn the_code_survives_context() {
        let err = anyhow::Error::new(Failure::new(NOT_FOUND, "gone"));
        assert_eq!(code_of(&err), NOT_FOUND);
        let wrapped = Err::<(), _>(err).context("deleting x").unwrap_err();
        assert_eq!(code_of(&wrapped), NOT_FOUND);
        assert_eq!(format!("{wrapped:#}"), "deleting x: gone");
        assert_eq!(code_of(&anyhow::anyhow!("other")), FAILURE);
    }
}
