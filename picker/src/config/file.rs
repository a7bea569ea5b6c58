//! The YAML file: walked section by section, each key looked up in the settings table. The keys a
//! section accepts are the table's keys under it, so there is no list to keep; any other key is an
//! error that names it and what was expected.

use serde_norway::{Mapping, Value as Yaml};

use super::Issues;
use super::declare::table;
use super::kind::show_yaml;
use super::settings::Settings;

/// Reads the file's `text` into `s`, reporting every problem to `is`; returns the keys it gave.
pub(super) fn apply(s: &mut Settings, text: &str, is: &mut Issues) -> Vec<&'static str> {
    let mut given = Vec::new();
    match serde_norway::from_str::<Yaml>(text) {
        Ok(Yaml::Null) => {}
        Ok(root) => section(s, &root, "", is, &mut given),
        Err(e) => is.push(".", format!("not valid YAML: {e}")),
    }
    given
}

/// Applies the mapping `v` found at `path` (empty for the top).
fn section(s: &mut Settings, v: &Yaml, path: &str, is: &mut Issues, given: &mut Vec<&'static str>) {
    let names = children(path);
    let Some(m) = mapping(v, path, &names, is) else {
        return;
    };
    for (k, v) in m {
        let Some(k) = k.as_str() else { continue };
        if v.is_null() {
            continue;
        }
        let at = join(path, k);
        if let Some(setting) = table().iter().find(|t| t.key() == at) {
            setting.apply_yaml(s, v, is);
            given.push(setting.key());
        } else if names.contains(&k) {
            section(s, v, &at, is, given);
        }
    }
}

/// The names directly under `path` in the table's keys, in declaration order.
fn children(path: &str) -> Vec<&'static str> {
    let mut names = Vec::new();
    for t in table() {
        let below = if path.is_empty() {
            Some(t.key())
        } else {
            t.key()
                .strip_prefix(path)
                .and_then(|rest| rest.strip_prefix('.'))
        };
        if let Some(name) = below.and_then(|b| b.split('.').next())
            && !names.contains(&name)
        {
            names.push(name);
        }
    }
    names
}

/// `v` as a mapping whose keys are among `keys`; each other key is reported.
pub(super) fn mapping<'v>(
    v: &'v Yaml,
    path: &str,
    keys: &[&str],
    is: &mut Issues,
) -> Option<&'v Mapping> {
    let Yaml::Mapping(m) = v else {
        is.push(
            path,
            format!("expected a mapping with keys {}", keys.join(", ")),
        );
        return None;
    };
    for k in m.keys() {
        match k.as_str() {
            Some(k) if keys.contains(&k) => {}
            _ => is.push(
                join(path, &key_text(k)),
                format!("unknown key (expected one of {})", keys.join(", ")),
            ),
        }
    }
    Some(m)
}

/// `key`'s value in `m`; an explicit `null` counts as absent.
pub(super) fn get<'v>(m: &'v Mapping, key: &str) -> Option<&'v Yaml> {
    m.get(key).filter(|v| !v.is_null())
}

/// A string (or a number, as its text).
pub(super) fn string(v: &Yaml, path: &str, is: &mut Issues) -> Option<String> {
    match v {
        Yaml::String(s) => Some(s.clone()),
        Yaml::Number(n) => Some(n.to_string()),
        other => {
            is.push(path, format!("{}: expected a string", show_yaml(other)));
            None
        }
    }
}

/// An integer within `lo..=hi`.
pub(super) fn int(v: &Yaml, path: &str, lo: i64, hi: i64, is: &mut Issues) -> Option<i64> {
    match v.as_i64() {
        Some(n) if (lo..=hi).contains(&n) => Some(n),
        Some(n) => {
            is.push(path, format!("{n}: must be within {lo}..={hi}"));
            None
        }
        None => {
            is.push(path, format!("{}: expected an integer", show_yaml(v)));
            None
        }
    }
}

fn key_text(k: &Yaml) -> String {
    k.as_str().map_or_else(|| show_yaml(k), str::to_string)
}

pub(super) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}
