//! glibc's malloc arenas for a long-running node.
//!
//! glibc gives each thread that contends for the allocator an arena of its own, up to eight
//! per core, and a freed block stays in the arena it came from. A node moves blocks between
//! tokio's worker and blocking threads all day, so with the defaults its resident memory
//! creeps: over eight rounds of downloading 1 GiB and deleting it, one grew from 62 to 129 MiB
//! (peak 149) with glibc's defaults and stayed at 52–111 MiB (peak 112) with two arenas, at the
//! same download rate (`BENCHMARKS.md`, "Disk and memory over many downloads").
//!
//! The limit is read from `MALLOC_ARENA_MAX` once, when the process starts. The crate forbids
//! `unsafe` code, so instead of calling `mallopt` the node sets the variable and re-executes
//! itself (same process id, arguments and environment) before it starts any thread. An
//! operator's own `MALLOC_ARENA_MAX` is left as it is, and so is any other C library.

/// The variable glibc reads the arena limit from.
pub(crate) const ENV: &str = "MALLOC_ARENA_MAX";

/// The fewest arenas the node asks for: two, the setting measured on a 2-core machine.
pub(crate) const MIN_ARENAS: usize = 2;

/// The limit the node runs with on `cores` cores: one arena per core (tokio runs a worker
/// thread per core), at least [`MIN_ARENAS`].
pub(crate) fn arena_limit(cores: usize) -> usize {
    cores.max(MIN_ARENAS)
}

/// Re-executes this process with [`ENV`] set, unless it is set already or this is not glibc.
/// Returns only if no re-execution happened (or it failed, in which case the node runs with
/// the allocator's defaults).
pub(crate) fn limit() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::unix::process::CommandExt;
        if std::env::var_os(ENV).is_some() {
            return;
        }
        let Ok(exe) = std::env::current_exe() else {
            return;
        };
        let cores = std::thread::available_parallelism().map_or(MIN_ARENAS, usize::from);
        let mut args = std::env::args_os();
        let mut command = std::process::Command::new(exe);
        if let Some(arg0) = args.next() {
            command.arg0(arg0);
        }
        // `exec` returns only on failure.
        let error = command
            .args(args)
            .env(ENV, arena_limit(cores).to_string())
            .exec();
        eprintln!("cairn: could not restart with {ENV} set ({error}); using glibc's defaults");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_arena_per_core_and_at_least_two() {
        assert_eq!(arena_limit(1), 2);
        assert_eq!(arena_limit(2), 2);
        assert_eq!(arena_limit(16), 16);
    }
}
