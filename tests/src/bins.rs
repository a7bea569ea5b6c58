//! The workspace's own binaries (`inferpick-picker`, `inferpick-agent`, `inferpick-lab`) for tests
//! that run them as processes.
//!
//! `cargo test --workspace` builds them into the target directory the test executable runs from
//! (their packages have integration tests). When one is missing there, e.g. under
//! `cargo test -p inferpick-tests` alone, it is built once with `cargo build -p <package> --bin
//! <name>` in the same profile and target directory. A binary that is there is used as it is:
//! after editing the picker or the agent, `cargo test --workspace` (or `cargo build`) refreshes it.
//!
//! `INFERPICK_BIN_DIR=DIR` takes the binaries from `DIR` instead (nothing is built), e.g. release
//! binaries for a soak run from a debug test build.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use anyhow::{Context, bail};

/// The environment variable naming a directory to take the binaries from.
pub const BIN_DIR_ENV: &str = "INFERPICK_BIN_DIR";

/// A workspace binary: its package and its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Bin {
    /// The Cargo package that owns it.
    pub package: &'static str,
    /// The executable's name.
    pub name: &'static str,
}

/// The picker.
pub const PICKER: Bin = Bin {
    package: "inferpick-picker",
    name: "inferpick-picker",
};
/// The agent.
pub const AGENT: Bin = Bin {
    package: "inferpick-agent",
    name: "inferpick-agent",
};
/// The lab (`emulate`, `sim`, `demo`, `load`).
pub const LAB: Bin = Bin {
    package: "inferpick-lab",
    name: "inferpick-lab",
};

impl Bin {
    /// The executable's path: from `INFERPICK_BIN_DIR` when set, else from the test's profile
    /// directory, built first if it is missing there.
    pub fn path(&self) -> anyhow::Result<PathBuf> {
        if let Some(dir) = std::env::var_os(BIN_DIR_ENV).filter(|d| !d.is_empty()) {
            return self.in_dir(Path::new(&dir));
        }
        self.next_to_tests()
    }

    /// The binary in the test executable's profile directory, built there if it is missing.
    fn next_to_tests(&self) -> anyhow::Result<PathBuf> {
        let exe = std::env::current_exe().context("cannot find the test executable's path")?;
        let profile_dir = profile_dir(&exe)?;
        let candidate = profile_dir.join(self.name);
        if candidate.is_file() {
            return Ok(candidate);
        }
        // One build per binary per test process, even when tests ask for it in parallel.
        static BUILT: OnceLock<Mutex<HashMap<Bin, Result<PathBuf, String>>>> = OnceLock::new();
        let mut built = BUILT
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        built
            .entry(*self)
            .or_insert_with(|| self.build(&profile_dir).map_err(|e| format!("{e:#}")))
            .clone()
            .map_err(anyhow::Error::msg)
    }

    /// The binary in `dir` (the `INFERPICK_BIN_DIR` override), which must exist.
    fn in_dir(&self, dir: &Path) -> anyhow::Result<PathBuf> {
        let path = dir.join(self.name);
        if !path.is_file() {
            bail!(
                "{BIN_DIR_ENV}={}: there is no {} in it",
                dir.display(),
                self.name
            );
        }
        Ok(path)
    }

    /// `cargo build -p <package> --bin <name>` into `profile_dir`'s target directory and profile.
    fn build(&self, profile_dir: &Path) -> anyhow::Result<PathBuf> {
        let target_dir = profile_dir
            .parent()
            .with_context(|| format!("{} has no parent directory", profile_dir.display()))?;
        let profile = profile_dir
            .file_name()
            .and_then(|n| n.to_str())
            .with_context(|| format!("{} has no profile name", profile_dir.display()))?;
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
        let mut command = Command::new(&cargo);
        command
            .current_dir(crate::repo_root())
            .env("CARGO_TARGET_DIR", target_dir)
            .args(["build", "--quiet", "-p", self.package, "--bin", self.name])
            .args(cargo_profile_args(profile));
        eprintln!(
            "{} is not in {}; building it: {command:?}",
            self.name,
            profile_dir.display()
        );
        let status = command.status().with_context(|| {
            format!(
                "cannot run {} to build {}",
                Path::new(&cargo).display(),
                self.name
            )
        })?;
        if !status.success() {
            bail!(
                "`cargo build -p {} --bin {}` (profile {profile}, target dir {}) failed with {status}; \
                 build the workspace first with `cargo test --workspace --no-run`",
                self.package,
                self.name,
                target_dir.display()
            );
        }
        let path = profile_dir.join(self.name);
        if !path.is_file() {
            bail!(
                "cargo built {} but {} does not exist",
                self.name,
                path.display()
            );
        }
        Ok(path)
    }
}

/// The profile directory (`<target>/debug`, `<target>/release`, …) a test executable runs from:
/// integration tests live in its `deps/` folder.
fn profile_dir(exe: &Path) -> anyhow::Result<PathBuf> {
    let dir = exe
        .parent()
        .with_context(|| format!("{} has no parent directory", exe.display()))?;
    let dir = if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent()
            .with_context(|| format!("{} has no parent directory", dir.display()))?
    } else {
        dir
    };
    Ok(dir.to_path_buf())
}

/// The cargo flags that build into the profile directory named `dir`.
fn cargo_profile_args(dir: &str) -> Vec<String> {
    match dir {
        "debug" => Vec::new(),
        "release" => vec!["--release".to_owned()],
        other => vec!["--profile".to_owned(), other.to_owned()],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_dir_is_above_deps() {
        let dir = profile_dir(Path::new("/t/target/debug/deps/faults-0123abcd")).unwrap();
        assert_eq!(dir, Path::new("/t/target/debug"));
        let dir = profile_dir(Path::new("/t/target/release/examples/x")).unwrap();
        assert_eq!(dir, Path::new("/t/target/release/examples"));
    }

    #[test]
    fn profile_flags_match_the_directory() {
        assert!(cargo_profile_args("debug").is_empty());
        assert_eq!(cargo_profile_args("release"), ["--release"]);
        assert_eq!(
            cargo_profile_args("bench-fast"),
            ["--profile", "bench-fast"]
        );
    }

    #[test]
    fn the_override_directory_must_hold_the_binary() {
        let dir = crate::ScratchDir::new("bins").unwrap();
        let err = PICKER.in_dir(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("INFERPICK_BIN_DIR=") && err.contains("no inferpick-picker"),
            "{err}"
        );
        let program = dir.write("inferpick-picker", "#!/bin/sh\n").unwrap();
        assert_eq!(PICKER.in_dir(dir.path()).unwrap(), program);
    }

    #[test]
    fn the_lab_binary_is_found_or_built_next_to_the_tests() {
        let path = LAB.next_to_tests().unwrap();
        assert!(path.is_file(), "{}", path.display());
        assert_eq!(
            path.parent(),
            Some(
                profile_dir(&std::env::current_exe().unwrap())
                    .unwrap()
                    .as_path()
            )
        );
    }
}
