//! Kinds whose values are lists: trusted proxy CIDRs, named objectives, model rewrites,
//! tokenizers and capacity pins. Each
//! item is checked on its own and named by its index (`objectives[1].priority`).

use std::collections::HashMap;

use serde_norway::Value as Yaml;

use super::Issues;
use super::file::{get, int, mapping, string};
use super::kind::show_yaml;
use super::kind::{Kind, Number};
use crate::scheduler::RewriteTarget;
use crate::table::{CapacityPin, PinMatch};
use crate::tokenize::{ModelTokenizer, Tokenizers};
use crate::trust::{self, Cidr};

/// CIDRs: a YAML list, or comma-separated in a flag.
pub(crate) struct Cidrs;

impl Kind for Cidrs {
    type Value = Vec<Cidr>;

    fn parse(&self, text: &str) -> Result<Vec<Cidr>, String> {
        trust::parse_list(text)
    }

    fn read(&self, v: &Yaml, path: &str, is: &mut Issues) -> Option<Vec<Cidr>> {
        let Yaml::Sequence(items) = v else {
            is.push(path, "expected a list of CIDRs, e.g. [10.0.0.0/8]");
            return None;
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let at = format!("{path}[{i}]");
            if let Some(text) = string(item, &at, is) {
                match text.parse() {
                    Ok(c) => out.push(c),
                    Err(e) => is.push(at, e),
                }
            }
        }
        Some(out)
    }

    fn show(&self, v: &Vec<Cidr>) -> String {
        v.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    }

    fn accepts(&self) -> String {
        "a list of CIDRs (10.0.0.0/8, fd00::/64; comma-separated as a flag)".into()
    }
}

/// Named objectives, `[{ name, priority }]`, like GIE's InferenceObjective.
pub(crate) struct Objectives;

impl Kind for Objectives {
    type Value = HashMap<String, i32>;

    fn parse(&self, _: &str) -> Result<Self::Value, String> {
        Err("only in the config file".into())
    }

    fn read(&self, v: &Yaml, path: &str, is: &mut Issues) -> Option<Self::Value> {
        let mut out = HashMap::new();
        let Yaml::Sequence(items) = v else {
            is.push(path, "expected a list of { name, priority }");
            return None;
        };
        for (i, item) in items.iter().enumerate() {
            let at = format!("{path}[{i}]");
            let Some(o) = mapping(item, &at, &["name", "priority"], is) else {
                continue;
            };
            let name = required(get(o, "name"), &format!("{at}.name"), is)
                .and_then(|n| string(n, &format!("{at}.name"), is));
            let priority =
                required(get(o, "priority"), &format!("{at}.priority"), is).and_then(|p| {
                    int(
                        p,
                        &format!("{at}.priority"),
                        i64::from(i32::MIN),
                        i64::from(i32::MAX),
                        is,
                    )
                });
            if let (Some(name), Some(priority)) = (name, priority) {
                if name.is_empty() {
                    is.push(format!("{at}.name"), "empty");
                } else if out.insert(name.clone(), priority as i32).is_some() {
                    is.push(format!("{at}.name"), format!("{name:?} is defined twice"));
                }
            }
        }
        Some(out)
    }

    fn show(&self, v: &Self::Value) -> String {
        if v.is_empty() {
            return String::new();
        }
        let mut names: Vec<String> = v.iter().map(|(n, p)| format!("{n}: {p}")).collect();
        names.sort();
        names.join(", ")
    }

    fn accepts(&self) -> String {
        "a list of { name, priority } (priority an i32; negative = sheddable)".into()
    }
}

/// Model rewrites, `[{ name, targets: [{ model, weight }] }]`, like GIE's InferenceModelRewrite.
pub(crate) struct Rewrites;

impl Kind for Rewrites {
    type Value = HashMap<String, Vec<RewriteTarget>>;

    fn parse(&self, _: &str) -> Result<Self::Value, String> {
        Err("only in the config file".into())
    }

    fn read(&self, v: &Yaml, path: &str, is: &mut Issues) -> Option<Self::Value> {
        let mut out = HashMap::new();
        let Yaml::Sequence(items) = v else {
            is.push(
                path,
                "expected a list of { name, targets: [{ model, weight }] }",
            );
            return None;
        };
        for (i, item) in items.iter().enumerate() {
            let at = format!("{path}[{i}]");
            let Some(m) = mapping(item, &at, &["name", "targets"], is) else {
                continue;
            };
            let name = required(get(m, "name"), &format!("{at}.name"), is)
                .and_then(|n| string(n, &format!("{at}.name"), is));
            let targets = targets(get(m, "targets"), &format!("{at}.targets"), is);
            if let Some(name) = name
                && !targets.is_empty()
                && out.insert(name.clone(), targets).is_some()
            {
                is.push(format!("{at}.name"), format!("{name:?} is defined twice"));
            }
        }
        Some(out)
    }

    fn show(&self, v: &Self::Value) -> String {
        let mut names: Vec<&str> = v.keys().map(String::as_str).collect();
        names.sort_unstable();
        names.join(", ")
    }

    fn accepts(&self) -> String {
        "a list of { name, targets: [{ model, weight }] } (weight 1..=1000000, default 1)".into()
    }
}

fn targets(v: Option<&Yaml>, path: &str, is: &mut Issues) -> Vec<RewriteTarget> {
    let mut out = Vec::new();
    let ts = match v {
        Some(Yaml::Sequence(ts)) if !ts.is_empty() => ts,
        _ => {
            is.push(path, "expected a non-empty list of { model, weight }");
            return out;
        }
    };
    for (j, t) in ts.iter().enumerate() {
        let at = format!("{path}[{j}]");
        let Some(t) = mapping(t, &at, &["model", "weight"], is) else {
            continue;
        };
        let model = required(get(t, "model"), &format!("{at}.model"), is)
            .and_then(|v| string(v, &format!("{at}.model"), is));
        let weight = match get(t, "weight") {
            Some(w) => int(w, &format!("{at}.weight"), 1, 1_000_000, is),
            None => Some(1),
        };
        if let (Some(model), Some(weight)) = (model, weight) {
            out.push(RewriteTarget {
                model,
                weight: weight as u32,
            });
        }
    }
    out
}

/// `v`, or a `missing` problem at `path`.
fn required<'v>(v: Option<&'v Yaml>, path: &str, is: &mut Issues) -> Option<&'v Yaml> {
    if v.is_none() {
        is.push(path, "missing");
    }
    v
}

/// Tokenizers, `{ model: path to tokenizer.json }`: each file is read when the config loads, so a
/// missing or broken one is an error that names it.
pub(crate) struct TokenizerFiles;

impl Kind for TokenizerFiles {
    type Value = Tokenizers;

    fn parse(&self, _: &str) -> Result<Self::Value, String> {
        Err("only in the config file".into())
    }

    fn read(&self, v: &Yaml, path: &str, is: &mut Issues) -> Option<Self::Value> {
        let Yaml::Mapping(m) = v else {
            is.push(
                path,
                "expected a mapping of model name → tokenizer.json path",
            );
            return None;
        };
        let mut out = Tokenizers::default();
        for (k, file) in m {
            let Some(model) = k.as_str() else {
                is.push(
                    path,
                    format!("{}: a model name must be a string", show_yaml(k)),
                );
                continue;
            };
            let at = format!("{path}.{model}");
            if let Some(file) = string(file, &at, is) {
                match ModelTokenizer::load(std::path::Path::new(&file)) {
                    Ok(t) => out.insert(model.to_string(), t),
                    Err(e) => is.push(at, e),
                }
            }
        }
        Some(out)
    }

    fn show(&self, v: &Self::Value) -> String {
        v.models()
            .map(|(m, t)| format!("{m}: {}", t.path().display()))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn accepts(&self) -> String {
        "a mapping of model name → path of its tokenizer.json".into()
    }
}

/// Operator-fixed prefill rates, `[{ address | pod_prefix | gpu, prefill_tokens_per_second }]`.
pub(crate) struct CapacityPins;

impl Kind for CapacityPins {
    type Value = Vec<CapacityPin>;

    fn parse(&self, _: &str) -> Result<Self::Value, String> {
        Err("only in the config file".into())
    }

    fn read(&self, v: &Yaml, path: &str, is: &mut Issues) -> Option<Self::Value> {
        let Yaml::Sequence(items) = v else {
            is.push(path, format!("expected {}", self.accepts()));
            return None;
        };
        let keys = ["address", "pod_prefix", "gpu", "prefill_tokens_per_second"];
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let at = format!("{path}[{i}]");
            let Some(m) = mapping(item, &at, &keys, is) else {
                continue;
            };
            let given: Vec<(&str, String)> = keys[..3]
                .iter()
                .filter_map(|&k| {
                    get(m, k).and_then(|v| string(v, &format!("{at}.{k}"), is).map(|s| (k, s)))
                })
                .collect();
            let matches = match given.as_slice() {
                [("address", a)] => PinMatch::Address(a.clone()),
                [("pod_prefix", p)] => PinMatch::PodPrefix(p.clone()),
                [("gpu", g)] => PinMatch::Gpu(g.clone()),
                _ => {
                    is.push(&at, "expected exactly one of address, pod_prefix, gpu");
                    continue;
                }
            };
            let rate_at = format!("{at}.prefill_tokens_per_second");
            let Some(rate) = required(get(m, "prefill_tokens_per_second"), &rate_at, is)
                .and_then(|v| Number::POSITIVE.read(v, &rate_at, is))
            else {
                continue;
            };
            out.push(CapacityPin {
                matches,
                prefill_tokens_per_second: rate,
            });
        }
        Some(out)
    }

    fn show(&self, v: &Self::Value) -> String {
        if v.is_empty() {
            String::new()
        } else {
            format!("{} pins", v.len())
        }
    }

    fn accepts(&self) -> String {
        "a list of { address | pod_prefix | gpu, prefill_tokens_per_second }".into()
    }
}
