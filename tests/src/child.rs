//! A child process owned by a test: its output goes to a log file, it is stopped when the guard
//! is dropped (also when the test panics), and its log is printed when the test failed.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

/// How long a child gets to exit after SIGTERM before it is killed.
const GRACE: Duration = Duration::from_secs(5);

/// A running child process and its log file.
///
/// The child is started in its own process group, so stopping it also stops the workers it forked
/// (nginx, Envoy's hot-restarter): SIGTERM to the group, then SIGKILL after a grace period.
#[derive(Debug)]
pub struct ChildGuard {
    name: String,
    child: Child,
    log: PathBuf,
}

impl ChildGuard {
    /// Starts `command` with stdout and stderr appended to `<log_dir>/<name>.log`, stdin closed.
    pub fn spawn(name: &str, mut command: Command, log_dir: &Path) -> std::io::Result<Self> {
        let log = log_dir.join(format!("{name}.log"));
        let out = File::create(&log)?;
        let err = out.try_clone()?;
        command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        let child = command.spawn().map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot start {name} ({:?}): {e}", command.get_program()),
            )
        })?;
        Ok(Self {
            name: name.to_owned(),
            child,
            log,
        })
    }

    /// The name given at spawn.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The child's process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The log file's path.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Everything the child wrote so far.
    pub fn log(&self) -> String {
        std::fs::read(&self.log)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_else(|e| format!("(cannot read {}: {e})", self.log.display()))
    }

    /// The exit status if the child has exited.
    pub fn exit_status(&mut self) -> std::io::Result<Option<ExitStatus>> {
        self.child.try_wait()
    }

    /// An error carrying the child's log when it has exited; for readiness probes, so that a child
    /// that died at start-up fails the wait at once with its reason.
    pub fn check_running(&mut self) -> Result<(), String> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(format!(
                "{} exited with {status}; its log:\n{}",
                self.name,
                self.log()
            )),
            Err(e) => Err(format!("cannot query {}: {e}", self.name)),
        }
    }

    /// Stops the child (SIGTERM to its group, SIGKILL after a grace period) and returns its status.
    pub fn stop(mut self) -> std::io::Result<ExitStatus> {
        self.terminate()
    }

    /// Kills the child and its group at once (SIGKILL, no grace: a crash, an OOM kill) and returns
    /// its status.
    pub fn kill(mut self) -> std::io::Result<ExitStatus> {
        if let Some(status) = self.child.try_wait()? {
            return Ok(status);
        }
        signal_group(self.child.id(), "KILL");
        self.child.wait()
    }

    fn terminate(&mut self) -> std::io::Result<ExitStatus> {
        let pid = self.child.id();
        if let Some(status) = self.child.try_wait()? {
            // Already reaped: its pid (the group's id) may belong to someone else now.
            return Ok(status);
        }
        signal_group(pid, "TERM");
        // Until the leader is reaped its pid stays reserved, so the group can still be signalled.
        let _ = crate::wait_until(GRACE, &format!("{} to exit", self.name), || {
            if exited_unreaped(pid) {
                Ok(())
            } else {
                Err("still running")
            }
        });
        // Whatever ignored SIGTERM (a hung leader, workers) is killed before the leader is reaped.
        signal_group(pid, "KILL");
        self.child.wait()
    }
}

/// Whether process `pid` (our child) has exited and waits to be reaped (a zombie), or is gone.
fn exited_unreaped(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name, which may itself contain spaces.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => true,
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "----- {} (pid {}) log, {} -----\n{}\n----- end of {} log -----",
                self.name,
                self.child.id(),
                self.log.display(),
                self.log(),
                self.name
            );
        }
        if let Err(e) = self.terminate() {
            eprintln!("stopping {}: {e}", self.name);
        }
    }
}

/// Sends `SIG<signal>` to the process group led by `pgid`. Uses kill(1): unsafe code (libc::kill)
/// is forbidden in this workspace. Failure (the group is already empty) is expected and ignored.
fn signal_group(pgid: u32, signal: &str) {
    let _ = Command::new("kill")
        .args(["-s", signal, "--", &format!("-{pgid}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ScratchDir;

    fn process_exists(pid: u32) -> bool {
        Path::new(&format!("/proc/{pid}")).exists()
            && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|stat| stat.split_whitespace().nth(2) == Some("Z"))
    }

    #[test]
    fn output_goes_to_the_log_and_drop_stops_the_child_and_its_workers() {
        let dir = ScratchDir::new("child").unwrap();
        let mut command = Command::new("sh");
        // The child forks a worker, like nginx; both must be gone after drop.
        command.args(["-c", "echo started; sleep 600 & echo worker=$!; wait"]);
        let guard = ChildGuard::spawn("sleeper", command, dir.path()).unwrap();
        let pid = guard.id();
        let worker: u32 = crate::wait_until(Duration::from_secs(5), "the worker pid", || {
            guard
                .log()
                .lines()
                .find_map(|l| l.strip_prefix("worker=").map(str::to_owned))
                .ok_or("not printed yet")
        })
        .unwrap()
        .parse()
        .unwrap();
        assert!(guard.log().contains("started"));
        assert!(process_exists(worker));
        drop(guard);
        assert!(!process_exists(pid), "leader {pid} survived the guard");
        crate::wait_until(Duration::from_secs(5), "the worker to be reaped", || {
            if process_exists(worker) {
                Err("alive")
            } else {
                Ok(())
            }
        })
        .unwrap();
    }

    #[test]
    fn check_running_reports_exit_and_log() {
        let dir = ScratchDir::new("child").unwrap();
        let mut command = Command::new("sh");
        command.args(["-c", "echo bad config line 3 >&2; exit 3"]);
        let mut guard = ChildGuard::spawn("broken", command, dir.path()).unwrap();
        let err = crate::wait_until(Duration::from_secs(5), "the child to exit", || match guard
            .check_running()
        {
            Ok(()) => Err("running".to_owned()),
            Err(e) => Ok(e),
        })
        .unwrap();
        assert!(err.contains("broken exited"), "{err}");
        assert!(err.contains("bad config line 3"), "{err}");
    }

    #[test]
    fn kill_stops_a_child_that_ignores_sigterm() {
        use std::os::unix::process::ExitStatusExt;
        let dir = ScratchDir::new("child").unwrap();
        let mut command = Command::new("sh");
        command.args(["-c", "trap '' TERM; echo armed; while :; do sleep 1; done"]);
        let guard = ChildGuard::spawn("stubborn", command, dir.path()).unwrap();
        crate::wait_until(Duration::from_secs(5), "the trap to be set", || {
            if guard.log().contains("armed") {
                Ok(())
            } else {
                Err("not yet")
            }
        })
        .unwrap();
        let pid = guard.id();
        let status = guard.kill().unwrap();
        assert_eq!(status.signal(), Some(9), "{status}");
        assert!(!process_exists(pid));
    }

    #[test]
    fn spawn_error_names_the_program() {
        let dir = ScratchDir::new("child").unwrap();
        let err =
            ChildGuard::spawn("ghost", Command::new("/nonexistent/ghost"), dir.path()).unwrap_err();
        assert!(err.to_string().contains("ghost"), "{err}");
    }
}
