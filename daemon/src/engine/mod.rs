//! The job engine: the coordinator (decisions, no I/O) over a [`jobstore::JobStore`],
//! and the in-memory store its tests run it on. The runner (`crate::runner`) is the I/O
//! layer around it; the daemon's store is `crate::sqlite::jobstore::SqliteStore`.

pub mod coordinator;
pub mod jobstore;
pub mod memory;
#[cfg(test)]
pub mod suite;

#[cfg(test)]
mod tests {
    /// The code (comments aside) of a source file that names SQLite: `crate::sqlite`,
    /// `rusqlite`, `super::super::sqlite`, a `sqlite` inside a `use` group.
    fn sqlite_lines(src: &str) -> Vec<&str> {
        src.lines()
            .map(|line| line.split("//").next().unwrap_or_default())
            .filter(|code| code.contains("sqlite"))
            .collect()
    }

    /// Architecture invariant: the pure core — the coordinator, the `JobStore` trait it
    /// calls, the in-memory store its tests run on, and the job vocabulary they all speak —
    /// compiles without the SQLite backend, so another backend can sit beside it.
    #[test]
    fn the_pure_core_names_no_sqlite() {
        let core = [
            ("engine/coordinator.rs", include_str!("coordinator.rs")),
            ("engine/jobstore.rs", include_str!("jobstore.rs")),
            ("engine/memory.rs", include_str!("memory.rs")),
            ("job.rs", include_str!("../job.rs")),
        ];
        for (file, src) in core {
            assert_eq!(sqlite_lines(src), Vec::<&str>::new(), "daemon/src/{file} depends on the SQLite module");
        }
        // The check itself sees what it must.
        assert_eq!(sqlite_lines("use crate::sqlite::jobs::Claimed;\n// sqlite in a comment").len(), 1);
        assert_eq!(sqlite_lines("use crate::{job, sqlite};").len(), 1);
    }
}
