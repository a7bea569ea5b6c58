//! Chat templates: a chat request's messages rendered into the text the engine tokenizes, with the
//! model's own Jinja template, as Hugging Face `transformers` (which vLLM and SGLang call) renders
//! it: `trim_blocks` and `lstrip_blocks` on, `add_generation_prompt` true, the BOS and EOS tokens
//! from the tokenizer config, and the helpers templates call (`raise_exception`, `strftime_now`,
//! Python string methods).

use std::path::{Path, PathBuf};

use inferpick_schema::ChatMessage;
use minijinja::syntax::SyntaxConfig;
use minijinja::value::Serde;
use minijinja::{Environment, Error, ErrorKind, context};
use serde_json::Value;

/// One model's chat template, compiled.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos: String,
    eos: String,
    source: PathBuf,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// The template beside a `tokenizer.json`: `chat_template.jinja`, else the `chat_template` of
    /// `tokenizer_config.json` (a string, or a list of `{name, template}` whose `default` is used).
    /// `None` when neither file has one; an error names the file that is wrong.
    pub fn beside(tokenizer: &Path) -> Result<Option<Self>, String> {
        let dir = tokenizer.parent().unwrap_or(Path::new("."));
        let config_path = dir.join("tokenizer_config.json");
        let config: Option<Value> = match std::fs::read(&config_path) {
            Ok(bytes) => Some(
                serde_json::from_slice(&bytes)
                    .map_err(|e| format!("{}: not JSON: {e}", config_path.display()))?,
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(format!("{}: {e}", config_path.display())),
        };
        let jinja_path = dir.join("chat_template.jinja");
        let (source, text) = match std::fs::read_to_string(&jinja_path) {
            Ok(text) => (jinja_path, text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let Some(text) = config
                    .as_ref()
                    .and_then(|c| template_of(c.get("chat_template")?))
                else {
                    return Ok(None);
                };
                (config_path.clone(), text)
            }
            Err(e) => return Err(format!("{}: {e}", jinja_path.display())),
        };
        let token = |name: &str| {
            config
                .as_ref()
                .and_then(|c| match c.get(name)? {
                    Value::String(s) => Some(s.clone()),
                    Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
                    _ => None,
                })
                .unwrap_or_default()
        };
        Self::new(&text, token("bos_token"), token("eos_token"), source).map(Some)
    }

    /// Compiles `text`; the error names `source` and the template's problem.
    pub fn new(text: &str, bos: String, eos: String, source: PathBuf) -> Result<Self, String> {
        let mut env = Environment::new();
        env.set_syntax(
            SyntaxConfig::builder()
                .trim_blocks(true)
                .lstrip_blocks(true)
                .build()
                .map_err(|e| e.to_string())?,
        );
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |message: String| -> Result<String, Error> {
                Err(Error::new(ErrorKind::InvalidOperation, message))
            },
        );
        env.add_function("strftime_now", |format: String| strftime_now(&format));
        env.add_template_owned("chat", text.to_string())
            .map_err(|e| {
                format!(
                    "{}: the chat template does not compile: {e}",
                    source.display()
                )
            })?;
        Ok(Self {
            env,
            bos,
            eos,
            source,
        })
    }

    /// The prompt text for `messages`, as the engine renders it for a chat completion.
    pub fn render(&self, messages: &[ChatMessage]) -> Result<String, String> {
        let template = self.env.get_template("chat").map_err(|e| e.to_string())?;
        template
            .render(context! {
                messages => Serde(messages),
                add_generation_prompt => true,
                bos_token => &self.bos,
                eos_token => &self.eos,
            })
            .map_err(|e| format!("{}: {e}", self.source.display()))
    }
}

/// A template from `chat_template`: a string, or the `default` of a named list.
fn template_of(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Array(items) => items
            .iter()
            .find(|i| i.get("name").and_then(Value::as_str) == Some("default"))
            .or_else(|| items.first())
            .and_then(|i| i.get("template")?.as_str().map(str::to_string)),
        _ => None,
    }
}

/// Today's date and time (UTC) in a `strftime` format, for templates that print the date (Llama
/// 3.1's system prompt does): `%d %b %B %Y %m %H %M %S %%`; other directives are kept as written.
fn strftime_now(format: &str) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format_time(format, secs)
}

fn format_time(format: &str, secs: u64) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let t = secs % 86_400;
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('d') => out.push_str(&format!("{d:02}")),
            Some('b') => out.push_str(&MONTHS[m as usize - 1][..3]),
            Some('B') => out.push_str(MONTHS[m as usize - 1]),
            Some('Y') => out.push_str(&y.to_string()),
            Some('m') => out.push_str(&format!("{m:02}")),
            Some('H') => out.push_str(&format!("{:02}", t / 3600)),
            Some('M') => out.push_str(&format!("{:02}", t / 60 % 60)),
            Some('S') => out.push_str(&format!("{:02}", t % 60)),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// Year, month, day of a day count from 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Llama 3's template, abridged to what the test renders.
    const LLAMA3: &str = "{{- bos_token }}\n{%- for message in messages %}\n    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}\n{%- endfor %}\n{%- if add_generation_prompt %}\n    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}\n{%- endif %}\n";

    fn msg(role: &str, content: &str) -> ChatMessage {
        ChatMessage {
            role: role.into(),
            content: Some(content.into()),
        }
    }

    #[test]
    fn renders_as_transformers_does() {
        let t = ChatTemplate::new(
            LLAMA3,
            "<|begin_of_text|>".into(),
            String::new(),
            "t".into(),
        )
        .unwrap();
        let text = t
            .render(&[msg("system", "Be brief. "), msg("user", "Hi")])
            .unwrap();
        assert_eq!(
            text,
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>\
             <|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>\
             <|start_header_id|>assistant<|end_header_id|>\n\n"
        );
    }

    #[test]
    fn helpers_and_errors() {
        let t = ChatTemplate::new(
            "{% if messages[0].role != 'user' %}{{ raise_exception('first must be user') }}{% endif %}{{ messages[0].content.upper() }} {{ strftime_now('%Y') | length }}",
            String::new(),
            String::new(),
            "t.jinja".into(),
        )
        .unwrap();
        assert_eq!(t.render(&[msg("user", "hi")]).unwrap(), "HI 4");
        let e = t.render(&[msg("system", "x")]).unwrap_err();
        assert!(
            e.contains("first must be user") && e.contains("t.jinja"),
            "{e}"
        );
        let e = ChatTemplate::new(
            "{% for %}",
            String::new(),
            String::new(),
            "bad.jinja".into(),
        )
        .unwrap_err();
        assert!(
            e.contains("bad.jinja") && e.contains("does not compile"),
            "{e}"
        );
    }

    #[test]
    fn reads_the_template_beside_the_tokenizer() {
        let dir = std::env::temp_dir().join(format!("inferpick-chat-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let tok = dir.join("tokenizer.json");
        assert!(ChatTemplate::beside(&tok).unwrap().is_none());
        std::fs::write(
            dir.join("tokenizer_config.json"),
            serde_json::json!({
                "bos_token": {"content": "<s>"},
                "chat_template": [{"name": "default", "template": "{{ bos_token }}{{ messages[0].content }}"}]
            })
            .to_string(),
        )
        .unwrap();
        let t = ChatTemplate::beside(&tok).unwrap().unwrap();
        assert_eq!(t.render(&[msg("user", "x")]).unwrap(), "<s>x");
        std::fs::write(dir.join("chat_template.jinja"), "[{{ messages|length }}]").unwrap();
        let t = ChatTemplate::beside(&tok).unwrap().unwrap();
        assert_eq!(t.render(&[msg("user", "x")]).unwrap(), "[1]");
        std::fs::write(dir.join("tokenizer_config.json"), "{oops").unwrap();
        assert!(
            ChatTemplate::beside(&tok)
                .unwrap_err()
                .contains("tokenizer_config.json")
        );
    }

    #[test]
    fn dates_are_civil() {
        assert_eq!(format_time("%d %b %Y", 0), "01 Jan 1970");
        // 2026-12-02 13:28:09 UTC.
        assert_eq!(
            format_time("%Y-%m-%d %H:%M:%S %B %%", 1_796_218_089),
            "2026-12-02 13:28:09 December %"
        );
        assert_eq!(format_time("%q", 0), "%q");
    }
}
