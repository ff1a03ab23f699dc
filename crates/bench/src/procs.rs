//! What the benchmarks that start `cairn` processes share: where the binary is, and the
//! directory that holds the nodes' data and logs.

use std::path::PathBuf;

use anyhow::{Context, ensure};
use clap::Args;

/// Options of a benchmark that runs `cairn` processes.
#[derive(Debug, Args)]
pub(crate) struct ProcessArgs {
    /// The `cairn` binary [default: `cairn` next to this executable].
    #[arg(long)]
    cairn: Option<PathBuf>,
    /// Directory in which the temporary directory (nodes' data, logs) is created (default: the
    /// system temp directory).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Keep the temporary directory (data directories and node logs) instead of deleting it.
    #[arg(long)]
    keep: bool,
}

impl ProcessArgs {
    /// The `cairn` binary, checked to exist.
    pub(crate) fn cairn(&self) -> anyhow::Result<PathBuf> {
        let cairn = match &self.cairn {
            Some(path) => path.clone(),
            None => std::env::current_exe()
                .context("locating the cairn-bench executable")?
                .parent()
                .context("the cairn-bench executable has no parent directory")?
                .join("cairn"),
        };
        ensure!(
            cairn.is_file(),
            "the cairn binary is not at {}: build it next to cairn-bench with \
             `cargo build --release -p cairn -p cairn-bench` (same target directory), or pass \
             --cairn PATH",
            cairn.display()
        );
        Ok(cairn)
    }

    /// A fresh directory named `prefix…` for the run, and the guard that deletes it when
    /// dropped (`None` with `--keep`: nothing deletes it, even when the run fails, so the logs
    /// can be read).
    pub(crate) fn workdir(
        &self,
        prefix: &str,
    ) -> anyhow::Result<(PathBuf, Option<tempfile::TempDir>)> {
        let parent = self.dir.clone().unwrap_or_else(std::env::temp_dir);
        let tempdir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in(&parent)
            .with_context(|| format!("creating a temporary directory in {}", parent.display()))?;
        Ok(if self.keep {
            (tempdir.keep(), None)
        } else {
            (tempdir.path().to_owned(), Some(tempdir))
        })
    }

    /// `--keep`.
    pub(crate) fn keep(&self) -> bool {
        self.keep
    }
}
