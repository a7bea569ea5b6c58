//! The picker's configuration: flags (each also `INFERPICK_<FLAG>`), over an optional YAML file,
//! over the defaults.
//!
//! Every setting is declared once, in `settings`: its `Settings` field, default, YAML key, flag
//! (and so its env var), value kind (parser, range, how a value is shown) and doc comment, which
//! is its `--help` text and its line in the README. The flags (`flags`) and the file walk
//! ([`file`]) are generic over that table, so neither keeps a list of its own.
//!
//! Everything is validated in one place and every problem is reported at once, each naming where
//! it came from (`FILE: staleness.max_report_age: …` or `flags: --policy: …`). The file is parsed
//! into a YAML value and walked rather than deserialized straight into structs, because serde
//! stops at the first error and the contract asks for all of them.

mod declare;
mod file;
mod flags;
mod kind;
mod lists;
mod reference;
mod settings;
#[cfg(test)]
mod tests;

use std::fmt;
use std::path::Path;

pub use self::reference::reference;
pub use self::settings::{Args, Settings};

/// One invalid setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// The file, or `flags`.
    pub source: String,
    /// Where in it (`staleness.max_report_age`, `--policy`).
    pub path: String,
    /// What is wrong, with the value.
    pub message: String,
}

/// Every problem found in the configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// All of them, in the order found.
    pub issues: Vec<ConfigIssue>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "invalid configuration ({} problem(s)):",
            self.issues.len()
        )?;
        for i in &self.issues {
            writeln!(f, "  {}: {}: {}", i.source, i.path, i.message)?;
        }
        Ok(())
    }
}

/// The problems found in one source (the file, or the flags), each at its path.
pub(crate) struct Issues {
    source: String,
    list: Vec<ConfigIssue>,
}

impl Issues {
    fn new(source: impl Into<String>) -> Self {
        Issues {
            source: source.into(),
            list: Vec::new(),
        }
    }

    pub(crate) fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.list.push(ConfigIssue {
            source: self.source.clone(),
            path: path.into(),
            message: message.into(),
        });
    }
}

impl Settings {
    /// Resolves `args` over the file it names (if any) over the defaults.
    pub fn from_args(args: Args) -> Result<Settings, ConfigError> {
        let mut s = Settings {
            config_file: args.config.clone(),
            args: args.clone(),
            ..Settings::default()
        };
        let mut issues = Vec::new();
        if let Some(path) = &args.config {
            let mut in_file = Issues::new(path.display().to_string());
            match std::fs::read_to_string(path) {
                Ok(text) => {
                    let given = file::apply(&mut s, &text, &mut in_file);
                    s.check_tls_pair(&given, &mut in_file, |key| key.to_string());
                }
                Err(e) => in_file.push(".", format!("cannot read the config file: {e}")),
            }
            issues.extend(in_file.list);
        }
        let mut in_flags = Issues::new("flags");
        let given = flags::apply(&mut s, &args, &mut in_flags);
        s.check_tls_pair(&given, &mut in_flags, flags::flag_of);
        s.check(&mut in_flags);
        issues.extend(in_flags.list);
        if issues.is_empty() {
            Ok(s)
        } else {
            Err(ConfigError { issues })
        }
    }

    /// Reads the same file again with the same flags (config reload).
    pub fn reload(&self) -> Result<Settings, ConfigError> {
        Settings::from_args(self.args.clone())
    }

    /// One source that names one TLS file must name the other too, unless an earlier source did.
    /// `name` spells a key as that source does (`tls.key_file`, `--tls-key`).
    fn check_tls_pair(&self, given: &[&str], is: &mut Issues, name: impl Fn(&str) -> String) {
        let Some(tls) = &self.tls else { return };
        for (part, other, missing) in [
            (
                "tls.cert_file",
                "tls.key_file",
                tls.key_file.as_os_str().is_empty(),
            ),
            (
                "tls.key_file",
                "tls.cert_file",
                tls.cert_file.as_os_str().is_empty(),
            ),
        ] {
            if missing && given.contains(&part) {
                is.push(name(part), format!("needs {} as well", name(other)));
            }
        }
    }

    /// Rules that span settings, and files that must be readable.
    fn check(&self, is: &mut Issues) {
        if self.forget_after < self.max_report_age {
            is.push(
                "forget_after",
                format!(
                    "{} is shorter than max_report_age {}: endpoints would be forgotten before they go stale",
                    humantime::format_duration(self.forget_after),
                    humantime::format_duration(self.max_report_age)
                ),
            );
        }
        for (name, file) in [
            ("report_token_file", &self.report_token_file),
            ("pick_token_file", &self.pick_token_file),
        ] {
            if let Some(path) = file
                && let Err(e) = read_token(path)
            {
                is.push(name, e);
            }
        }
        if let Some(tls) = &self.tls
            && !tls.cert_file.as_os_str().is_empty()
            && !tls.key_file.as_os_str().is_empty()
            && let Err(e) = tls.server_config(&[])
        {
            is.push("tls", e);
        }
    }
}

/// Reads a bearer token file: the token is the file's content without surrounding whitespace.
pub fn read_token(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read token file {}: {e}", path.display()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(format!("token file {} is empty", path.display()));
    }
    Ok(token.to_string())
}
