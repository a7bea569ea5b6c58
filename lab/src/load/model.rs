//! Which model to name when `load` was not told: the one base model the server lists at
//! `/v1/models`. Entries that are not served models are passed over: LoRA adapters (vLLM lists
//! them with a `parent`) and `unknown` (what SGLang's router lists for a worker whose model it
//! could not learn; requests naming it fail). Anything else ambiguous is an error that asks for
//! `--model`.

use anyhow::{Context as _, bail};
use serde_json::Value;

/// The name SGLang's router gives a worker's model when the worker did not tell it.
const UNKNOWN: &str = "unknown";

/// The server's root: `url` without a trailing `/v1` or `/v1/…completions`.
pub fn server_root(url: &str) -> &str {
    let base = url.trim_end_matches('/');
    let base = base
        .strip_suffix("/v1/completions")
        .or_else(|| base.strip_suffix("/v1/chat/completions"))
        .unwrap_or(base);
    base.strip_suffix("/v1").unwrap_or(base)
}

/// The model to load `url` with, from its `/v1/models`.
pub async fn choose(url: &str) -> anyhow::Result<String> {
    let root = server_root(url);
    let listing = format!("{root}/v1/models");
    let v: Value = reqwest::get(&listing)
        .await
        .with_context(|| format!("GET {listing}"))?
        .json()
        .await
        .with_context(|| format!("GET {listing}: not JSON"))?;
    pick(&v).with_context(|| format!("GET {listing}"))
}

/// The one served base model of a `/v1/models` answer.
fn pick(v: &Value) -> anyhow::Result<String> {
    let listed: Vec<&Value> = v["data"].as_array().into_iter().flatten().collect();
    let names: Vec<&str> = listed.iter().filter_map(|m| m["id"].as_str()).collect();
    let served: Vec<&str> = listed
        .iter()
        .filter(|m| m["parent"].is_null())
        .filter_map(|m| m["id"].as_str())
        .filter(|id| *id != UNKNOWN)
        .collect();
    match served[..] {
        [one] => Ok(one.to_string()),
        [] if names.is_empty() => bail!("lists no model; pass --model NAME"),
        [] => bail!(
            "lists no served base model (only {}); pass --model NAME",
            names.join(", ")
        ),
        _ => bail!(
            "lists several models ({}); pass --model with the one to load",
            served.join(", ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_one_served_base_model_is_chosen_and_ambiguity_asks_for_model() {
        let base = json!({"data": [
            {"id": "llama", "parent": null},
            {"id": "sql-lora", "parent": "llama"},
        ]});
        assert_eq!(pick(&base).unwrap(), "llama");
        let behind_sglang = json!({"data": [{"id": "unknown"}, {"id": "llama"}]});
        assert_eq!(pick(&behind_sglang).unwrap(), "llama");
        let err = pick(&json!({"data": [{"id": "unknown"}]}))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("only unknown") && err.contains("--model"),
            "{err}"
        );
        let err = pick(&json!({"data": [{"id": "a"}, {"id": "b"}]}))
            .unwrap_err()
            .to_string();
        assert!(err.contains("a, b") && err.contains("--model"), "{err}");
        assert!(pick(&json!({"data": []})).is_err());
    }

    #[test]
    fn the_root_is_found_under_v1_and_endpoint_urls() {
        for url in [
            "http://h:1",
            "http://h:1/",
            "http://h:1/v1",
            "http://h:1/v1/",
            "http://h:1/v1/completions",
            "http://h:1/v1/chat/completions",
        ] {
            assert_eq!(server_root(url), "http://h:1", "{url}");
        }
    }
}
