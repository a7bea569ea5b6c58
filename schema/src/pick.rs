//! The picker API's bodies: what a gateway asks, what the picker answers, and how it reports errors.

use serde::{Deserialize, Serialize};

/// Default number of fallback endpoints in a decision.
pub const DEFAULT_FALLBACKS: u32 = 2;

/// `POST /v1/pick`: which endpoint should serve this request?
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PickRequest {
    /// Base model or LoRA adapter; may be omitted when the table holds exactly one model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Negative means sheddable under saturation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
    /// A named objective from the picker's config; sets the priority.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub objective: Option<String>,
    /// The prompt text, for prefix affinity and a token estimate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// A chat request's messages: with the model's chat template (from its tokenizer config), the
    /// picker renders and tokenizes them as the engine will, for token-exact prefix matching.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages: Option<Vec<ChatMessage>>,
    /// The prompt as token ids (an OpenAI `prompt` given as integers, or one a gateway tokenized):
    /// exact prefix matching without the picker's tokenizer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_token_ids: Option<Vec<u32>>,
    /// Prompt length estimate when the prompt is not sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_tokens: Option<u32>,
    /// Expected output length, in all: a gateway reading an OpenAI body counts every choice
    /// (`n`) of every prompt of a batch, so the request needs no field of its own for them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// Affinity key: requests of one session prefer the same endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// Only these endpoints may be chosen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidates: Option<Vec<String>>,
    /// These endpoints must not be chosen (retries).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exclude: Option<Vec<String>>,
    /// How many fallback endpoints to return (default 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallbacks: Option<u32>,
}

/// One chat message: its role and its text (content parts' texts joined by newlines, as engines
/// join them; `None` for a message without text, such as a tool call).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant`, `tool`, …
    pub role: String,
    /// The text.
    #[serde(default)]
    pub content: Option<String>,
}

/// The picker's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// `ip:port` to send the request to.
    pub endpoint: String,
    /// Next-best endpoints, best first.
    #[serde(default)]
    pub fallbacks: Vec<String>,
    /// Identifies this decision in `POST /v1/done`.
    pub decision_id: String,
    /// The model the request resolved to (after rewrites).
    pub model: String,
    /// The chosen endpoint's pod, when its agent said.
    #[serde(default)]
    pub pod: Option<String>,
    /// The scheduling profile that decided.
    pub policy: String,
    /// With `?explain=true`: every candidate with its signals and score.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub explain: Option<serde_json::Value>,
}

/// `POST /v1/done`: a request the picker routed has finished.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DoneRequest {
    /// From the decision.
    pub decision_id: String,
    /// Actual prompt length.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_tokens: Option<u32>,
    /// Actual output length.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_tokens: Option<u32>,
    /// Measured time to first token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttft_ms: Option<f64>,
    /// Prompt tokens the engine served from its prefix cache (the response's
    /// `usage.prompt_tokens_details.cached_tokens`): checks the picker's prediction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_tokens: Option<u32>,
    /// HTTP status the engine answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
}

/// Every error response of the picker: `{"error": CODE, "message": "human sentence"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Machine-readable code (`invalid_request`, `unauthorized`, `shed`, …).
    pub error: String,
    /// What was wrong, for a person.
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contract_pick_request_decodes() {
        let r: PickRequest = serde_json::from_str(
            r#"{"model":"m","priority":-1,"objective":"chat","prompt":"hi","prompt_tokens":1200,
                "max_tokens":256,"session":"user-42","candidates":["10.0.0.7:8000"],
                "exclude":["10.0.0.9:8000"],"fallbacks":2}"#,
        )
        .unwrap();
        assert_eq!(r.priority, Some(-1));
        assert_eq!(
            r.candidates.as_deref(),
            Some(&["10.0.0.7:8000".to_string()][..])
        );
    }

    #[test]
    fn unknown_pick_fields_are_refused() {
        let err = crate::decode_json::<PickRequest>(br#"{"model":"m","max_token":3}"#).unwrap_err();
        assert!(err.message.contains("max_token"), "{err}");
    }

    #[test]
    fn explain_is_omitted_unless_asked() {
        let d = Decision {
            endpoint: "10.0.0.7:8000".into(),
            fallbacks: vec![],
            decision_id: "1".into(),
            model: "m".into(),
            pod: None,
            policy: "inferpick".into(),
            explain: None,
        };
        let v = serde_json::to_value(&d).unwrap();
        assert!(v.get("explain").is_none());
    }
}
