//! The models' tokenizers: a prompt's leading token ids, as its engine will see them, for the
//! token-exact prefix index.
//!
//! Each model named in the config's `tokenizers:` has a Hugging Face `tokenizer.json` (the file
//! every model repository ships), read once at load. Only a prompt's head is tokenized: the index
//! looks at most `max_tokens` leading tokens, so a 100k-token prompt costs what an 8k one does.
//!
//! Tokenizing is slow next to a pick (a byte-level BPE takes about a microsecond a token), and the
//! prompts that matter for prefix routing repeat: a system prompt, a conversation's history, the
//! same documents. So the text is cut into chunks of about [`CHUNK_BYTES`], each ending just before
//! a whitespace character that follows a non-whitespace one — where the pre-tokenizers of byte-level
//! BPE (GPT-2, Llama 3, Qwen) and SentencePiece (Metaspace) models start a new word anyway — and each
//! chunk's tokens are cached under a hash chained over every chunk up to it. A prompt that repeats a
//! known head tokenizes only its new tail.
//!
//! Chat requests are rendered first with the model's chat template (`chat`), found beside its
//! `tokenizer.json`, and tokenized without added special tokens, as engines do for chat.

mod chat;

pub use chat::ChatTemplate;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use inferpick_schema::ChatMessage;
use tokenizers::Tokenizer;

use crate::hashing::{KeyHashing, chain};

/// Target size of a cached chunk of prompt text.
pub const CHUNK_BYTES: usize = 2048;
/// Most chunks cached per model (about 2 MiB of token ids: ~500 tokens of 4 bytes a chunk); the
/// oldest are dropped first.
const CACHED_CHUNKS: usize = 2048;

/// Chained chunk hash → the chunk's token ids, first in first out.
#[derive(Debug, Default)]
struct ChunkCache {
    tokens: HashMap<u64, Arc<[u32]>, KeyHashing>,
    order: VecDeque<u64>,
}

impl ChunkCache {
    fn insert(&mut self, key: u64, ids: Arc<[u32]>) {
        if self.tokens.insert(key, ids).is_none() {
            self.order.push_back(key);
            while self.order.len() > CACHED_CHUNKS {
                if let Some(old) = self.order.pop_front() {
                    self.tokens.remove(&old);
                }
            }
        }
    }
}

/// The end of the chunk that starts at `start`: about [`CHUNK_BYTES`] on, just before a whitespace
/// character that follows a non-whitespace one. Text without such a place within twice the target
/// is cut there anyway (at a character boundary), so the work stays bounded; the tokens at that cut
/// may then differ from the engine's, which only shortens the match.
fn chunk_end(text: &str, start: usize) -> usize {
    let bytes = text.as_bytes();
    let from = start + CHUNK_BYTES;
    if from >= bytes.len() {
        return bytes.len();
    }
    let to = (start + 2 * CHUNK_BYTES).min(bytes.len());
    (from..to)
        .find(|&i| {
            bytes[i].is_ascii_whitespace()
                && !bytes[i - 1].is_ascii_whitespace()
                && text.is_char_boundary(i)
        })
        .unwrap_or_else(|| {
            let mut end = to;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            end
        })
}

/// Bytes of text tokenized per wanted token: generous (English runs near 4, code near 3, CJK near
/// 1–2 characters of 3 bytes), so the bound rarely leaves fewer tokens than wanted.
const BYTES_PER_TOKEN: usize = 8;

/// One model's tokenizer and where it was read from.
#[derive(Clone)]
pub struct ModelTokenizer {
    path: PathBuf,
    tokenizer: Arc<Tokenizer>,
    chat: Option<Arc<ChatTemplate>>,
    cache: Arc<Mutex<ChunkCache>>,
}

impl std::fmt::Debug for ModelTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelTokenizer")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl PartialEq for ModelTokenizer {
    fn eq(&self, other: &Self) -> bool {
        self.path == other.path && Arc::ptr_eq(&self.tokenizer, &other.tokenizer)
    }
}

impl ModelTokenizer {
    /// Reads a `tokenizer.json`, and the chat template beside it if there is one; the error names
    /// the file and what was wrong.
    pub fn load(path: &Path) -> Result<Self, String> {
        let tokenizer = Tokenizer::from_file(path)
            .map_err(|e| format!("{}: not a usable tokenizer.json: {e}", path.display()))?;
        Ok(Self {
            path: path.to_path_buf(),
            tokenizer: Arc::new(tokenizer),
            chat: ChatTemplate::beside(path)?.map(Arc::new),
            cache: Arc::default(),
        })
    }

    /// Whether a chat template was found for it.
    pub fn has_chat_template(&self) -> bool {
        self.chat.is_some()
    }

    /// The leading tokens of a chat request, rendered with the chat template; `None` without a
    /// template or when the template refuses the messages.
    pub fn chat_tokens(&self, messages: &[ChatMessage], max_tokens: usize) -> Option<Vec<u32>> {
        let text = self.chat.as_ref()?.render(messages).ok()?;
        Some(self.tokens(&text, max_tokens, false))
    }

    /// The file it was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The ids of at most `max_tokens` leading tokens of `text`, special tokens added as the engine
    /// adds them to a completion prompt (a leading BOS for most models). Chunks already seen come
    /// from the cache (see the module docs).
    pub fn leading_tokens(&self, text: &str, max_tokens: usize) -> Vec<u32> {
        self.tokens(text, max_tokens, true)
    }

    fn tokens(&self, text: &str, max_tokens: usize, special: bool) -> Vec<u32> {
        let limit = max_tokens.saturating_mul(BYTES_PER_TOKEN);
        let mut ids = Vec::new();
        let (mut start, mut key) = (0, u64::from(special));
        while start < text.len() && start < limit && ids.len() < max_tokens {
            let end = chunk_end(text, start);
            let chunk = &text[start..end];
            key = chain(key, chunk.as_bytes());
            let cached = self
                .cache
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .tokens
                .get(&key)
                .cloned();
            let tokens = match cached {
                Some(t) => t,
                None => {
                    let Ok(encoding) = self.tokenizer.encode(chunk, special && start == 0) else {
                        break;
                    };
                    let t: Arc<[u32]> = encoding.get_ids().into();
                    self.cache
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(key, t.clone());
                    t
                }
            };
            ids.extend_from_slice(&tokens);
            start = end;
        }
        ids.truncate(max_tokens);
        ids
    }

    /// `text` tokenized whole, without chunks or cache (what the engine does; for tests).
    pub fn tokens_uncached(&self, text: &str) -> Vec<u32> {
        self.tokenizer
            .encode(text, true)
            .map(|e| e.get_ids().to_vec())
            .unwrap_or_default()
    }
}

/// Every configured model's tokenizer, by model name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tokenizers {
    by_model: BTreeMap<String, ModelTokenizer>,
}

impl Tokenizers {
    /// Adds `model`'s tokenizer.
    pub fn insert(&mut self, model: String, tokenizer: ModelTokenizer) {
        self.by_model.insert(model, tokenizer);
    }

    /// `model`'s tokenizer, if one is configured.
    pub fn get(&self, model: &str) -> Option<&ModelTokenizer> {
        self.by_model.get(model)
    }

    /// Models with a tokenizer.
    pub fn models(&self) -> impl Iterator<Item = (&str, &ModelTokenizer)> {
        self.by_model.iter().map(|(m, t)| (m.as_str(), t))
    }

    /// Whether none is configured.
    pub fn is_empty(&self) -> bool {
        self.by_model.is_empty()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A word-level tokenizer over `words` (ids in order, `[UNK]` last), splitting on whitespace.
    pub(crate) fn word_level_json(words: &[&str]) -> String {
        let mut vocab = serde_json::Map::new();
        for (i, w) in words.iter().enumerate() {
            vocab.insert((*w).to_string(), i.into());
        }
        vocab.insert("[UNK]".into(), words.len().into());
        serde_json::json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": [],
            "normalizer": null,
            "pre_tokenizer": {"type": "WhitespaceSplit"},
            "post_processor": null,
            "decoder": null,
            "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"}
        })
        .to_string()
    }

    pub(crate) fn word_level(words: &[&str]) -> ModelTokenizer {
        let dir = std::env::temp_dir().join(format!(
            "inferpick-tokenizer-{}-{}",
            std::process::id(),
            words.len()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tokenizer.json");
        std::fs::write(&path, word_level_json(words)).unwrap();
        ModelTokenizer::load(&path).unwrap()
    }

    #[test]
    fn leading_tokens_are_bounded_and_chunks_tokenize_as_the_whole_text() {
        let t = word_level(&["a", "b", "c"]);
        assert_eq!(t.leading_tokens("a b c a", 10), vec![0, 1, 2, 0]);
        assert_eq!(t.leading_tokens("a b c a", 2), vec![0, 1]);
        assert_eq!(
            t.leading_tokens("zzz", 4),
            vec![3],
            "unknown words are [UNK]"
        );
        // Several chunks: the same ids as the whole text, from the cache the second time.
        let long: String = (0..5000).map(|i| ["a ", "b  ", "c\n"][i % 3]).collect();
        let whole = t.tokens_uncached(&long);
        assert!(long.len() > 3 * CHUNK_BYTES);
        assert_eq!(t.leading_tokens(&long, usize::MAX / 8), whole);
        let cached = t.cache.lock().unwrap().tokens.len();
        assert!(cached >= 3, "{cached}");
        assert_eq!(t.leading_tokens(&long, usize::MAX / 8), whole);
        assert_eq!(t.cache.lock().unwrap().tokens.len(), cached);
        assert_eq!(t.leading_tokens(&long, 100), whole[..100]);
        // A changed tail reuses the head's chunks.
        let other = format!("{}c c c", &long[..long.len() - 5]);
        assert_eq!(
            t.leading_tokens(&other, usize::MAX / 8),
            t.tokens_uncached(&other)
        );
        assert_eq!(t.cache.lock().unwrap().tokens.len(), cached + 1);
    }

    #[test]
    fn chunks_end_before_a_word_and_the_cache_is_bounded() {
        let text = format!("{}é {}", "x".repeat(CHUNK_BYTES), "y".repeat(10));
        let end = chunk_end(&text, 0);
        assert_eq!(&text[end..end + 1], " ");
        assert_eq!(chunk_end("no spaces at all", 0), 16);
        let word = "é".repeat(3 * CHUNK_BYTES);
        let end = chunk_end(&word, 0);
        assert!(
            end <= 2 * CHUNK_BYTES && word.is_char_boundary(end),
            "{end}"
        );
        let mut c = ChunkCache::default();
        for k in 0..(CACHED_CHUNKS as u64 + 10) {
            c.insert(k, Arc::from(vec![1u32]));
        }
        assert_eq!(c.tokens.len(), CACHED_CHUNKS);
        assert!(!c.tokens.contains_key(&0) && c.tokens.contains_key(&(CACHED_CHUNKS as u64 + 9)));
    }

    #[test]
    fn chat_messages_are_rendered_with_the_template_beside_the_tokenizer() {
        let dir = std::env::temp_dir().join(format!("inferpick-chat-tok-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tokenizer.json");
        std::fs::write(
            &path,
            word_level_json(&["<s>", "user:", "bot:", "hi", "there"]),
        )
        .unwrap();
        std::fs::write(
            dir.join("chat_template.jinja"),
            "{{ bos_token }} {% for m in messages %}{{ m.role }}: {{ m.content }} {% endfor %}bot:",
        )
        .unwrap();
        std::fs::write(dir.join("tokenizer_config.json"), r#"{"bos_token": "<s>"}"#).unwrap();
        let t = ModelTokenizer::load(&path).unwrap();
        assert!(t.has_chat_template());
        let messages = [ChatMessage {
            role: "user".into(),
            content: Some("hi there".into()),
        }];
        // "<s> user: hi there bot:" → the same ids the engine gets from the rendered text.
        assert_eq!(t.chat_tokens(&messages, 100), Some(vec![0, 1, 3, 4, 2]));
        assert_eq!(t.chat_tokens(&messages, 2), Some(vec![0, 1]));
        assert!(word_level(&["a"]).chat_tokens(&messages, 10).is_none());
    }

    #[test]
    fn a_bad_file_is_named_in_the_error() {
        let dir = std::env::temp_dir().join(format!("inferpick-bad-tok-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tokenizer.json");
        std::fs::write(&path, "{not json").unwrap();
        let e = ModelTokenizer::load(&path).unwrap_err();
        assert!(
            e.contains("tokenizer.json") && e.contains("not a usable"),
            "{e}"
        );
        let e = ModelTokenizer::load(&dir.join("missing.json")).unwrap_err();
        assert!(e.contains("missing.json"), "{e}");
    }
}
