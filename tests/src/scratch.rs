//! A temporary directory for one test's configs, data and logs.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A fresh directory under the system temp dir, removed on drop. When the test is failing (the
/// thread is panicking) the directory is kept and its path printed, so its logs can be read.
#[derive(Debug)]
pub struct ScratchDir {
    path: PathBuf,
}

impl ScratchDir {
    /// Creates `<tmp>/inferpick-<label>-<pid>-<nanos>-<n>`.
    pub fn new(label: &str) -> std::io::Result<Self> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let name = format!(
            "inferpick-{label}-{}-{nanos}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let path = std::env::temp_dir().join(name);
        std::fs::create_dir(&path)?;
        Ok(Self { path })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A path inside the directory.
    pub fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.path.join(name)
    }

    /// Writes `contents` to `name` inside the directory and returns the file's path.
    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> std::io::Result<PathBuf> {
        let path = self.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, contents)?;
        Ok(path)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "test failed: keeping {} for inspection",
                self.path.display()
            );
            return;
        }
        // Best effort: a leftover temp directory must not turn a passing test into a failing one.
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_created_unique_and_removed_on_drop() {
        let a = ScratchDir::new("unit").unwrap();
        let b = ScratchDir::new("unit").unwrap();
        assert_ne!(a.path(), b.path());
        let file = a.write("sub/x.txt", "hello").unwrap();
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "hello");
        let kept = a.path().to_path_buf();
        drop(a);
        assert!(!kept.exists());
    }
}
