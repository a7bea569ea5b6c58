//! JSON decoding that reports where in the document a value was wrong.

use serde::de::DeserializeOwned;

use crate::report::LoadReport;

/// A body that is not the expected JSON; the message names the JSON path of the problem.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct DecodeError {
    /// JSON path of the offending value (`load.requests_waiting`, `[3].seq`), or `.` for the document.
    pub path: String,
    /// What serde said was wrong there.
    pub message: String,
}

/// Decodes `bytes` as `T`, naming the JSON path of the first problem.
pub fn decode_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        DecodeError {
            path,
            message: e.into_inner().to_string(),
        }
    })?;
    Ok(value)
}

/// Decodes a report push body: one `LoadReport` or a JSON array of them.
pub fn decode_reports(bytes: &[u8]) -> Result<Vec<LoadReport>, DecodeError> {
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if first == Some(&b'[') {
        decode_json::<Vec<LoadReport>>(bytes)
    } else {
        decode_json::<LoadReport>(bytes).map(|r| vec![r])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_names_the_field() {
        let body = br#"{"schema_version":1,"agent":{"id":"a","version":"0.1.0","started_at_ms":1},
            "seq":1,"sent_at_ms":1,"interval_ms":100,
            "endpoint":{"address":"10.0.0.1:8000"},
            "engine":{"kind":"vllm","ready":true},
            "models":[],"load":{"requests_waiting":-3},"gpus":[]}"#;
        let err = decode_reports(body).unwrap_err();
        assert_eq!(err.path, "load.requests_waiting");
        assert!(err.message.contains("-3"), "{err}");
    }

    #[test]
    fn array_errors_name_the_index() {
        let err = decode_reports(b" [ {\"schema_version\": \"x\"} ]").unwrap_err();
        assert_eq!(err.path, "[0].schema_version");
    }

    #[test]
    fn nan_is_not_json() {
        let err = decode_json::<serde_json::Value>(b"{\"a\": NaN}").unwrap_err();
        assert!(err.to_string().contains("expected value"), "{err}");
    }
}
