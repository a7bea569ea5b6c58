//! Value kinds: how a setting's text (a flag, an env var) or YAML value becomes its typed value,
//! which values it accepts (said in every error, with the value), and how a value is written back
//! (defaults in `--help` and the README).

use std::fmt;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde_norway::Value as Yaml;

use super::Issues;
use crate::scheduler::Policy;

/// How one kind of value is parsed, checked and shown.
pub(crate) trait Kind: Send + Sync + 'static {
    /// The typed value.
    type Value: 'static;

    /// Parses a flag's text.
    fn parse(&self, text: &str) -> Result<Self::Value, String>;

    /// Reads a value of the file at `path`, reporting problems to `is`. By default a string (or a
    /// number, taken as its text) is parsed as a flag's text would be.
    fn read(&self, v: &Yaml, path: &str, is: &mut Issues) -> Option<Self::Value> {
        let text = match v {
            Yaml::String(s) => s.clone(),
            Yaml::Number(n) => n.to_string(),
            other => {
                is.push(
                    path,
                    format!("{}: expected {}", show_yaml(other), self.accepts()),
                );
                return None;
            }
        };
        self.parse(&text).map_err(|e| is.push(path, e)).ok()
    }

    /// The value as it would be written; empty for "none".
    fn show(&self, v: &Self::Value) -> String;

    /// What is accepted, in words: `a duration > 0 (500ms, 1s, 2m)`.
    fn accepts(&self) -> String;
}

/// A YAML value as it was written, for messages.
pub(crate) fn show_yaml(v: &Yaml) -> String {
    serde_norway::to_string(v).map_or_else(|_| format!("{v:?}"), |s| s.trim().to_string())
}

/// `IP:PORT`.
pub(crate) struct Addr;

impl Kind for Addr {
    type Value = SocketAddr;

    fn parse(&self, text: &str) -> Result<SocketAddr, String> {
        text.trim()
            .parse()
            .map_err(|_| format!("{text:?} is not an address (write IP:PORT, e.g. 0.0.0.0:9000)"))
    }

    fn show(&self, v: &SocketAddr) -> String {
        v.to_string()
    }

    fn accepts(&self) -> String {
        "an address IP:PORT".into()
    }
}

/// `IP:PORT`, or `off` for none.
pub(crate) struct AddrOrOff;

impl Kind for AddrOrOff {
    type Value = Option<SocketAddr>;

    fn parse(&self, text: &str) -> Result<Option<SocketAddr>, String> {
        if text.trim() == "off" {
            Ok(None)
        } else {
            Addr.parse(text).map(Some)
        }
    }

    fn show(&self, v: &Option<SocketAddr>) -> String {
        v.map_or_else(|| "off".into(), |a| a.to_string())
    }

    fn accepts(&self) -> String {
        "an address IP:PORT, or off".into()
    }
}

/// A file path (not checked here: files that must be readable are checked with the settings).
pub(crate) struct Path;

impl Kind for Path {
    type Value = PathBuf;

    fn parse(&self, text: &str) -> Result<PathBuf, String> {
        if text.trim().is_empty() {
            Err("empty: expected a file path".into())
        } else {
            Ok(PathBuf::from(text))
        }
    }

    fn show(&self, v: &PathBuf) -> String {
        v.display().to_string()
    }

    fn accepts(&self) -> String {
        "a file path".into()
    }
}

/// `K`, or nothing when not given.
pub(crate) struct Optional<K>(pub(crate) K);

impl<K: Kind> Kind for Optional<K> {
    type Value = Option<K::Value>;

    fn parse(&self, text: &str) -> Result<Self::Value, String> {
        self.0.parse(text).map(Some)
    }

    fn read(&self, v: &Yaml, path: &str, is: &mut Issues) -> Option<Self::Value> {
        self.0.read(v, path, is).map(Some)
    }

    fn show(&self, v: &Self::Value) -> String {
        v.as_ref().map_or_else(String::new, |v| self.0.show(v))
    }

    fn accepts(&self) -> String {
        self.0.accepts()
    }
}

/// A humantime duration (`500ms`, `1s`, `2m`).
pub(crate) struct Span {
    /// Whether `0s` is allowed (it turns a step off).
    zero_ok: bool,
}

impl Span {
    /// Longer than zero.
    pub(crate) const POSITIVE: Span = Span { zero_ok: false };
    /// Zero or longer.
    pub(crate) const ZERO_OK: Span = Span { zero_ok: true };
}

impl Kind for Span {
    type Value = Duration;

    fn parse(&self, text: &str) -> Result<Duration, String> {
        let examples = if self.zero_ok {
            "0s, 500ms, 2s"
        } else {
            "500ms, 1s, 2m"
        };
        match humantime::parse_duration(text.trim()) {
            Ok(d) if d.is_zero() && !self.zero_ok => {
                Err(format!("{text:?}: must be longer than zero"))
            }
            Ok(d) => Ok(d),
            Err(e) => Err(format!(
                "{text:?} is not a duration ({e}); write e.g. {examples}"
            )),
        }
    }

    fn show(&self, v: &Duration) -> String {
        humantime::format_duration(*v).to_string()
    }

    fn accepts(&self) -> String {
        if self.zero_ok {
            "a duration ≥ 0 (0s, 500ms, 2s)".into()
        } else {
            "a duration > 0 (500ms, 1s, 2m)".into()
        }
    }
}

/// A whole number within `min..=max`, stored as `T`.
pub(crate) struct Int<T> {
    min: u64,
    max: u64,
    _type: PhantomData<fn() -> T>,
}

impl<T> Int<T> {
    /// Within `min..=max`.
    pub(crate) const fn range(min: u64, max: u64) -> Self {
        Int {
            min,
            max,
            _type: PhantomData,
        }
    }

    fn out_of_range(&self, n: impl fmt::Display) -> String {
        format!("{n}: must be {}", self.bounds())
    }

    fn bounds(&self) -> String {
        if self.max == u64::MAX {
            format!("≥ {}", self.min)
        } else {
            format!("within {}..={}", self.min, self.max)
        }
    }
}

impl<T: TryFrom<u64> + fmt::Display + 'static> Int<T> {
    fn check(&self, n: u64) -> Result<T, String> {
        if !(self.min..=self.max).contains(&n) {
            return Err(self.out_of_range(n));
        }
        T::try_from(n).map_err(|_| self.out_of_range(n))
    }
}

impl<T: TryFrom<u64> + fmt::Display + 'static> Kind for Int<T> {
    type Value = T;

    fn parse(&self, text: &str) -> Result<T, String> {
        let trimmed = text.trim();
        match trimmed.parse::<u64>() {
            Ok(n) => self.check(n),
            Err(_) if trimmed.parse::<i64>().is_ok() => Err(self.out_of_range(trimmed)),
            Err(_) => Err(format!("{text:?}: expected {}", self.accepts())),
        }
    }

    /// Numbers only: `"5"` in the file is a mistake worth naming.
    fn read(&self, v: &Yaml, path: &str, is: &mut Issues) -> Option<T> {
        let checked = match (v.as_u64(), v.as_i64()) {
            (Some(n), _) => self.check(n),
            (None, Some(negative)) => Err(self.out_of_range(negative)),
            (None, None) => Err(format!("{}: expected {}", show_yaml(v), self.accepts())),
        };
        checked.map_err(|e| is.push(path, e)).ok()
    }

    fn show(&self, v: &T) -> String {
        v.to_string()
    }

    fn accepts(&self) -> String {
        format!("an integer {}", self.bounds())
    }
}

/// One end of a [`Number`]'s range.
#[derive(Clone, Copy)]
pub(crate) enum Bound {
    /// The value itself is allowed.
    Incl(f64),
    /// Only values beyond it.
    Excl(f64),
    /// No bound.
    Open,
}

/// A finite number within a range.
pub(crate) struct Number {
    min: Bound,
    max: Bound,
}

impl Number {
    /// `≥ 0`.
    pub(crate) const NON_NEGATIVE: Number = Number::within(Bound::Incl(0.0), Bound::Open);
    /// `> 0`.
    pub(crate) const POSITIVE: Number = Number::within(Bound::Excl(0.0), Bound::Open);

    /// Within `min` and `max`.
    pub(crate) const fn within(min: Bound, max: Bound) -> Number {
        Number { min, max }
    }

    fn contains(&self, x: f64) -> bool {
        let above = match self.min {
            Bound::Incl(m) => x >= m,
            Bound::Excl(m) => x > m,
            Bound::Open => true,
        };
        let below = match self.max {
            Bound::Incl(m) => x <= m,
            Bound::Excl(m) => x < m,
            Bound::Open => true,
        };
        x.is_finite() && above && below
    }

    fn bounds(&self) -> String {
        let lo = match self.min {
            Bound::Incl(m) => Some(('[', m)),
            Bound::Excl(m) => Some(('(', m)),
            Bound::Open => None,
        };
        let hi = match self.max {
            Bound::Incl(m) => Some((']', m)),
            Bound::Excl(m) => Some((')', m)),
            Bound::Open => None,
        };
        match (lo, hi) {
            (None, None) => "finite".into(),
            (Some(('[', m)), None) => format!("≥ {m}"),
            (Some((_, m)), None) => format!("> {m}"),
            (None, Some((']', m))) => format!("≤ {m}"),
            (None, Some((_, m))) => format!("< {m}"),
            (Some((open, a)), Some((close, b))) => format!("within {open}{a}, {b}{close}"),
        }
    }

    fn check(&self, x: f64, written: &str) -> Result<f64, String> {
        if !x.is_finite() {
            Err(format!(
                "{written}: must be a finite number {}",
                self.bounds()
            ))
        } else if self.contains(x) {
            Ok(x)
        } else {
            Err(format!("{written}: must be {}", self.bounds()))
        }
    }
}

impl Kind for Number {
    type Value = f64;

    fn parse(&self, text: &str) -> Result<f64, String> {
        match text.trim().parse::<f64>() {
            Ok(x) => self.check(x, &format!("{text:?}")),
            Err(_) => Err(format!("{text:?}: expected {}", self.accepts())),
        }
    }

    /// Numbers only, as for integers.
    fn read(&self, v: &Yaml, path: &str, is: &mut Issues) -> Option<f64> {
        let checked = match v.as_f64() {
            Some(x) => self.check(x, &show_yaml(v)),
            None => Err(format!("{}: expected {}", show_yaml(v), self.accepts())),
        };
        checked.map_err(|e| is.push(path, e)).ok()
    }

    fn show(&self, v: &f64) -> String {
        v.to_string()
    }

    fn accepts(&self) -> String {
        format!("a number {}", self.bounds())
    }
}

/// A scheduling profile name.
pub(crate) struct Profile;

impl Kind for Profile {
    type Value = Policy;

    fn parse(&self, text: &str) -> Result<Policy, String> {
        text.trim().parse::<Policy>().map_err(|e| e.to_string())
    }

    fn show(&self, v: &Policy) -> String {
        v.to_string()
    }

    fn accepts(&self) -> String {
        let names: Vec<&str> = Policy::ALL.iter().map(|p| p.as_str()).collect();
        format!("one of {}", names.join(", "))
    }
}
