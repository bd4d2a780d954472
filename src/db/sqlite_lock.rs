use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};

/// Held by a `serve` process for as long as it runs on an SQLite file. SQLite itself would let a
/// second server open the file, and then two processes would each believe their refresh actors
/// are the only ones: the one-refresh-per-user guarantee needs one process per file.
#[derive(Debug)]
pub struct SqliteServeLock {
    _file: File,
    path: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "{database} is already served by another tokenmanager process (it holds {lock}); \
         SQLite supports one serve process per database, use PostgreSQL or MariaDB for replicas"
    )]
    Busy { database: String, lock: String },
    #[error("cannot open the lock file {lock}: {source}")]
    Io {
        lock: String,
        #[source]
        source: std::io::Error,
    },
}

impl SqliteServeLock {
    pub fn acquire(database: &Path) -> Result<Self, LockError> {
        let mut path = database.as_os_str().to_owned();
        path.push(".serve-lock");
        let path = PathBuf::from(path);
        let io = |source| LockError::Io {
            lock: path.display().to_string(),
            source,
        };
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => Ok(Self { _file: file, path }),
            Err(TryLockError::WouldBlock) => Err(LockError::Busy {
                database: database.display().to_string(),
                lock: path.display().to_string(),
            }),
            Err(TryLockError::Error(e)) => Err(io(e)),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_until_the_first_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("tm.sqlite");
        let first = SqliteServeLock::acquire(&db).unwrap();
        let err = SqliteServeLock::acquire(&db).unwrap_err().to_string();
        assert!(
            err.contains("already served by another tokenmanager process"),
            "{err}"
        );
        drop(first);
        SqliteServeLock::acquire(&db).unwrap();
    }
}
