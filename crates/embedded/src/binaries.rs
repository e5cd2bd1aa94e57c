use std::path::{Path, PathBuf};
use std::process::Command;

use crate::Error;

/// Where the PostgreSQL server binaries live, and which optional extensions are installed.
#[derive(Debug, Clone)]
pub struct PgBinaries {
    pub bin_dir: PathBuf,
    /// `pg_config --pkglibdir` of that installation (shared libraries of extensions).
    pub lib_dir: PathBuf,
    /// Major version, from `postgres --version`.
    pub major: u32,
}

impl PgBinaries {
    /// Finds the server binaries: `$PGOPT_PG_BINDIR`, then `pg_config --bindir`, then
    /// `/usr/lib/postgresql/*/bin` newest first. A directory counts only when it holds
    /// both `initdb` and `postgres`.
    pub fn find() -> Result<PgBinaries, Error> {
        if let Some(dir) = std::env::var_os("PGOPT_PG_BINDIR") {
            // An explicit choice is not second-guessed by falling back elsewhere.
            return Self::first_valid(vec![PathBuf::from(dir)]);
        }
        let mut candidates: Vec<PathBuf> = Vec::new();
        if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
            if out.status.success() {
                let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
                if !dir.is_empty() {
                    candidates.push(PathBuf::from(dir));
                }
            }
        }
        candidates.extend(versioned_dirs(Path::new("/usr/lib/postgresql")));
        Self::first_valid(candidates)
    }

    /// The first directory holding both `initdb` and `postgres`.
    pub fn first_valid(candidates: Vec<PathBuf>) -> Result<PgBinaries, Error> {
        let mut searched = Vec::new();
        for dir in candidates {
            if dir.join("initdb").is_file() && dir.join("postgres").is_file() {
                return PgBinaries::at(dir);
            }
            searched.push(dir.display().to_string());
        }
        if searched.is_empty() {
            searched.push("pg_config --bindir, /usr/lib/postgresql/*/bin".into());
        }
        Err(Error::PostgresNotFound {
            searched: searched.join(", "),
        })
    }

    fn at(bin_dir: PathBuf) -> Result<PgBinaries, Error> {
        let postgres = bin_dir.join("postgres");
        let out = Command::new(&postgres)
            .arg("--version")
            .output()
            .map_err(|e| Error::io(format!("running {} --version", postgres.display()), e))?;
        // "postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"
        let text = String::from_utf8_lossy(&out.stdout);
        let major = text
            .split_whitespace()
            .nth(2)
            .and_then(|v| v.split('.').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let lib_dir = Command::new(bin_dir.join("pg_config"))
            .arg("--pkglibdir")
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
            .unwrap_or_else(|| bin_dir.with_file_name("lib"));
        Ok(PgBinaries {
            bin_dir,
            lib_dir,
            major,
        })
    }

    /// Path of one program of this installation (`psql`, `pgbench`, `pg_dump`, …).
    pub fn program(&self, name: &str) -> PathBuf {
        self.bin_dir.join(name)
    }

    /// Whether the shared library of an extension (`hypopg`, `pg_qualstats`) is installed.
    pub fn has_library(&self, name: &str) -> bool {
        self.lib_dir.join(format!("{name}.so")).is_file()
    }
}

/// `/usr/lib/postgresql/<major>/bin`, highest major version first.
fn versioned_dirs(root: &Path) -> Vec<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let major = entry.file_name().to_str()?.parse::<u32>().ok()?;
            Some((major, entry.path().join("bin")))
        })
        .collect();
    versions.sort_by_key(|v| std::cmp::Reverse(v.0));
    versions.into_iter().map(|(_, dir)| dir).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versioned_dirs_sorts_newest_first() {
        let root = std::env::temp_dir().join(format!("pgopt-bins-{}", std::process::id()));
        for v in ["9", "15", "13", "notaversion"] {
            std::fs::create_dir_all(root.join(v).join("bin")).unwrap();
        }
        let dirs = versioned_dirs(&root);
        let names: Vec<_> = dirs
            .iter()
            .map(|d| d.parent().unwrap().file_name().unwrap().to_str().unwrap())
            .collect();
        assert_eq!(names, ["15", "13", "9"]);
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn missing_binaries_name_the_package() {
        let err = PgBinaries::first_valid(vec![PathBuf::from("/nonexistent/bin")]).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("/nonexistent/bin"), "{text}");
        assert!(text.contains("apt-get install postgresql-15"), "{text}");
        assert!(!text.contains('\n'), "one line: {text}");
    }
}
