//! The lab's tokenizer: a fixed generated vocabulary of words, one token per word, written as a
//! Hugging Face `tokenizer.json` (a `WordLevel` model behind a whitespace split) so that the picker
//! and the emulator, both reading it with the `tokenizers` crate, turn the load generator's prompt
//! text back into exactly the token ids the workload drew. Nothing is downloaded.
//!
//! Token 0 is `[UNK]`; token `k` (1 to [`VOCAB_WORDS`]) is the `k`-th word in bijective base 26
//! (`a` … `z`, `aa` … `zz`, `aaa` …): about 3.5 letters and a space per token, near the 4
//! characters per token of English text, so prompts are about as long in text as real ones.
//! Text outside the vocabulary (real user prompts) reads as `[UNK]` tokens.

use std::path::Path;

use serde_json::{Map, Value, json};

/// Words in the vocabulary; token ids run from 1 to this ([`UNK`] is 0).
pub const VOCAB_WORDS: u32 = 32_000;

/// The id of `[UNK]`.
pub const UNK: u32 = 0;

/// Appends the word of token `id` (1 to [`VOCAB_WORDS`]) to `out`.
pub fn push_word(out: &mut String, id: u32) {
    debug_assert!((1..=VOCAB_WORDS).contains(&id), "token {id} has no word");
    let mut letters = [0u8; 8];
    let mut n = id;
    let mut len = 0;
    while n > 0 {
        n -= 1;
        letters[len] = b'a' + (n % 26) as u8;
        len += 1;
        n /= 26;
    }
    for &b in letters[..len].iter().rev() {
        out.push(char::from(b));
    }
}

/// The word of token `id`.
pub fn word(id: u32) -> String {
    let mut s = String::new();
    push_word(&mut s, id);
    s
}

/// Text that tokenizes to `ids`: their words, one space apart.
pub fn text_of(ids: &[u32]) -> String {
    let mut s = String::with_capacity(ids.len() * 5);
    push_text(&mut s, ids);
    s
}

/// Appends the words of `ids` to `out`, each after a space when `out` is not empty.
pub fn push_text(out: &mut String, ids: &[u32]) {
    for &id in ids {
        if !out.is_empty() {
            out.push(' ');
        }
        push_word(out, id);
    }
}

/// A word-level token id for a 64-bit hash: uniform over the vocabulary (never `[UNK]`).
pub fn token_of_hash(h: u64) -> u32 {
    1 + ((h >> 16) % u64::from(VOCAB_WORDS)) as u32
}

/// The `tokenizer.json` document.
pub fn tokenizer_json() -> Value {
    let mut vocab = Map::with_capacity(VOCAB_WORDS as usize + 1);
    vocab.insert("[UNK]".into(), json!(UNK));
    let mut w = String::new();
    for id in 1..=VOCAB_WORDS {
        w.clear();
        push_word(&mut w, id);
        vocab.insert(w.clone(), json!(id));
    }
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [{
            "id": UNK,
            "content": "[UNK]",
            "single_word": false,
            "lstrip": false,
            "rstrip": false,
            "normalized": false,
            "special": true
        }],
        "normalizer": null,
        "pre_tokenizer": { "type": "WhitespaceSplit" },
        "post_processor": null,
        "decoder": null,
        "model": { "type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]" }
    })
}

/// Writes the `tokenizer.json` to `path`.
pub fn write(path: &Path) -> Result<(), TokenizerError> {
    let mut text = serde_json::to_string(&tokenizer_json()).expect("a JSON value serializes");
    text.push('\n');
    std::fs::write(path, text).map_err(|source| TokenizerError::Write {
        path: path.display().to_string(),
        source,
    })
}

/// Reads a `tokenizer.json`, or builds the lab's own when `path` is `None`.
pub fn load(path: Option<&Path>) -> Result<tokenizers::Tokenizer, TokenizerError> {
    match path {
        Some(p) => tokenizers::Tokenizer::from_file(p).map_err(|e| TokenizerError::Read {
            path: p.display().to_string(),
            message: e.to_string(),
        }),
        None => {
            let text = tokenizer_json().to_string();
            text.parse()
                .map_err(|e: tokenizers::Error| TokenizerError::Read {
                    path: "(built-in)".into(),
                    message: e.to_string(),
                })
        }
    }
}

/// The lab's own tokenizer, built once.
pub fn builtin() -> std::sync::Arc<tokenizers::Tokenizer> {
    static BUILTIN: std::sync::OnceLock<std::sync::Arc<tokenizers::Tokenizer>> =
        std::sync::OnceLock::new();
    std::sync::Arc::clone(
        BUILTIN
            .get_or_init(|| std::sync::Arc::new(load(None).expect("the built-in tokenizer loads"))),
    )
}

/// Token ids of `text` under `tokenizer`, with no special tokens added.
pub fn encode(tokenizer: &tokenizers::Tokenizer, text: &str) -> Result<Vec<u32>, String> {
    tokenizer
        .encode_fast(text, false)
        .map(|e| e.get_ids().to_vec())
        .map_err(|e| format!("cannot tokenize the prompt: {e}"))
}

/// A tokenizer that could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// The file could not be written.
    #[error("cannot write the tokenizer to {path}: {source}")]
    Write {
        /// Where.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file could not be read or is not a `tokenizer.json`.
    #[error("cannot load the tokenizer {path}: {message}")]
    Read {
        /// Where from.
        path: String,
        /// The `tokenizers` crate's reason.
        message: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_distinct_and_read_back_through_the_tokenizers_crate() {
        assert_eq!(word(1), "a");
        assert_eq!(word(26), "z");
        assert_eq!(word(27), "aa");
        assert_eq!(word(26 + 26 * 26 + 1), "aaa");
        let tok = load(None).unwrap();
        assert_eq!(tok.get_vocab_size(true), VOCAB_WORDS as usize + 1);
        let ids: Vec<u32> = vec![1, 26, 27, 703, 18_279, VOCAB_WORDS, 5];
        assert_eq!(encode(&tok, &text_of(&ids)).unwrap(), ids);
        // Out-of-vocabulary words are [UNK]; extra whitespace is not a token.
        assert_eq!(encode(&tok, "  a  Hello\tb\n").unwrap(), vec![1, UNK, 2]);
    }

    #[test]
    fn the_written_file_loads() {
        let dir = std::env::temp_dir().join(format!("inferpick-tok-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tokenizer.json");
        write(&path).unwrap();
        let tok = load(Some(&path)).unwrap();
        assert_eq!(encode(&tok, "abc zz").unwrap().len(), 2);
        let err = load(Some(&dir.join("missing.json"))).unwrap_err();
        assert!(err.to_string().contains("missing.json"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn hashes_map_into_the_vocabulary() {
        for h in [0, 1, u64::MAX, 0x1234_5678_9abc_def0] {
            assert!((1..=VOCAB_WORDS).contains(&token_of_hash(h)));
        }
        assert_eq!(text_of(&[1, 2, 3]), "a b c");
    }
}
