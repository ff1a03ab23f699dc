//! Records the git revision the API reports in `GET /debug/info` (`codex.revision`, as the
//! reference reports its own): `git rev-parse --short=12 HEAD` at build time, or `unknown` when
//! the source is not a git checkout or git is missing. Rebuilt when HEAD or a ref moves.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let text = text.trim();
    (out.status.success() && !text.is_empty()).then(|| text.to_owned())
}

fn main() {
    let revision = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=CAIRN_GIT_REVISION={revision}");
    if let Some(dir) = git(&["rev-parse", "--git-dir"]) {
        for path in ["HEAD", "refs", "packed-refs"] {
            println!("cargo:rerun-if-changed={dir}/{path}");
        }
    }
    if let Some(common) = git(&["rev-parse", "--git-common-dir"]) {
        for path in ["refs", "packed-refs"] {
            println!("cargo:rerun-if-changed={common}/{path}");
        }
    }
}
