//! Prometheus text exposition parser (classic 0.0.4 and OpenMetrics 1.0), zero-copy.
//!
//! Written here rather than taken from `prometheus-parse`, which matches names with `\w+` and so
//! silently drops every `vllm:*`, `sglang:*`, `llamacpp:*` and `lmdeploy:*` sample, and splits label
//! values on commas. This parser reads names with `:`, label values holding `,` `=` `}` and escapes,
//! `NaN`/`±Inf`, timestamps, exemplars, quoted UTF-8 names and `# EOF`. Samples borrow from the
//! input; only label values that contain escapes are copied. A malformed line is an error that names
//! the line, as Prometheus itself fails a scrape on one.

use std::borrow::Cow;
use std::ops::Range;

/// A parsed exposition: samples in input order, their labels stored flat.
#[derive(Debug, Default)]
pub struct Exposition<'a> {
    samples: Vec<Sample<'a>>,
    labels: Vec<Label<'a>>,
}

/// One sample line.
#[derive(Debug, Clone)]
pub struct Sample<'a> {
    /// Full sample name, suffix included (`vllm:prompt_tokens_total`, `x_bucket`).
    pub name: &'a str,
    labels: Range<u32>,
    /// The value; `NaN` and infinities as written.
    pub value: f64,
}

/// One `name="value"` pair.
#[derive(Debug, Clone, PartialEq)]
pub struct Label<'a> {
    /// Label name.
    pub name: &'a str,
    /// Label value with escapes resolved.
    pub value: Cow<'a, str>,
}

/// A line that is not valid exposition text.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("line {line}: {problem}: {excerpt:?}")]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub problem: &'static str,
    /// The start of the offending line (at most 80 bytes).
    pub excerpt: String,
}

impl<'a> Exposition<'a> {
    /// Parses a whole exposition.
    pub fn parse(text: &'a str) -> Result<Self, ParseError> {
        let mut expo = Exposition {
            samples: Vec::with_capacity(text.len() / 64),
            labels: Vec::with_capacity(text.len() / 32),
        };
        for (i, raw) in text.split('\n').enumerate() {
            let line = raw.strip_suffix('\r').unwrap_or(raw);
            if line.is_empty() {
                continue;
            }
            if let Some(comment) = line.strip_prefix('#') {
                if comment.trim() == "EOF" {
                    break;
                }
                continue;
            }
            if let Err(problem) = expo.parse_sample(line) {
                let cut = line.char_indices().nth(80).map_or(line.len(), |(at, _)| at);
                return Err(ParseError {
                    line: i + 1,
                    problem,
                    excerpt: line[..cut].to_string(),
                });
            }
        }
        Ok(expo)
    }

    /// Every sample, in input order.
    pub fn samples(&self) -> &[Sample<'a>] {
        &self.samples
    }

    /// Samples named exactly `name`.
    ///
    /// A linear scan: an engine exposition holds a few hundred to a few thousand samples and the
    /// dialects ask for about a dozen names, which costs less than building an index per scrape.
    pub fn named<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'s Sample<'a>> + 's {
        self.samples.iter().filter(move |s| s.name == name)
    }

    /// Whether any sample's name starts with `prefix`.
    pub fn has_prefix(&self, prefix: &str) -> bool {
        self.samples.iter().any(|s| s.name.starts_with(prefix))
    }

    /// The labels of `sample`.
    pub fn labels(&self, sample: &Sample<'a>) -> &[Label<'a>] {
        &self.labels[sample.labels.start as usize..sample.labels.end as usize]
    }

    /// The value of label `name` on `sample`.
    pub fn label(&self, sample: &Sample<'a>, name: &str) -> Option<&str> {
        self.labels(sample)
            .iter()
            .find(|l| l.name == name)
            .map(|l| l.value.as_ref())
    }

    fn parse_sample(&mut self, line: &'a str) -> Result<(), &'static str> {
        let bytes = line.as_bytes();
        let mut pos;
        let mut name = "";
        let label_start = self.labels.len() as u32;
        if bytes[0] == b'{' {
            // Prometheus 3 UTF-8 form: {"name", label="v"}
            pos = 0;
        } else {
            let end = scan_name(bytes, 0, true);
            if end == 0 {
                return Err("a sample must start with a metric name");
            }
            name = &line[..end];
            pos = end;
        }
        if bytes.get(pos) == Some(&b'{') {
            pos += 1;
            loop {
                pos = skip_spaces(bytes, pos);
                match bytes.get(pos) {
                    Some(b'}') => {
                        pos += 1;
                        break;
                    }
                    None => return Err("unterminated label set"),
                    _ => {}
                }
                let (label_name, after) = if bytes[pos] == b'"' {
                    let (v, after) = scan_quoted(line, pos)?;
                    (v, after)
                } else {
                    let end = scan_name(bytes, pos, false);
                    if end == pos {
                        return Err("expected a label name");
                    }
                    (Cow::Borrowed(&line[pos..end]), end)
                };
                pos = skip_spaces(bytes, after);
                if bytes.get(pos) == Some(&b'=') {
                    pos = skip_spaces(bytes, pos + 1);
                    if bytes.get(pos) != Some(&b'"') {
                        return Err("a label value must be quoted");
                    }
                    let (value, after) = scan_quoted(line, pos)?;
                    let Cow::Borrowed(label_name) = label_name else {
                        return Err("a label name cannot contain escapes");
                    };
                    self.labels.push(Label {
                        name: label_name,
                        value,
                    });
                    pos = after;
                } else if name.is_empty() {
                    // The quoted metric name of the UTF-8 form.
                    match label_name {
                        Cow::Borrowed(n) if !n.is_empty() => name = n,
                        _ => return Err("a quoted metric name cannot be empty or escaped"),
                    }
                } else {
                    return Err("expected '=' after a label name");
                }
                pos = skip_spaces(bytes, pos);
                match bytes.get(pos) {
                    Some(b',') => pos += 1,
                    Some(b'}') => {}
                    _ => return Err("expected ',' or '}' in a label set"),
                }
            }
        }
        if name.is_empty() {
            return Err("a sample must have a metric name");
        }
        if !matches!(bytes.get(pos), Some(b' ' | b'\t')) {
            return Err("expected a space before the value");
        }
        let rest = line[pos..].trim_start_matches([' ', '\t']);
        let value_end = rest.find([' ', '\t']).unwrap_or(rest.len());
        let value = parse_value(&rest[..value_end]).ok_or("value is not a number")?;
        let tail = rest[value_end..].trim_start_matches([' ', '\t']);
        // Optional timestamp, then an optional OpenMetrics exemplar ("# {…} v [ts]"), ignored.
        if !tail.is_empty() && !tail.starts_with('#') {
            let ts_end = tail.find([' ', '\t']).unwrap_or(tail.len());
            if parse_value(&tail[..ts_end]).is_none() {
                return Err("timestamp is not a number");
            }
            let after = tail[ts_end..].trim_start_matches([' ', '\t']);
            if !after.is_empty() && !after.starts_with('#') {
                return Err("unexpected text after the timestamp");
            }
        }
        self.samples.push(Sample {
            name,
            labels: label_start..self.labels.len() as u32,
            value,
        });
        Ok(())
    }
}

fn skip_spaces(bytes: &[u8], mut pos: usize) -> usize {
    while matches!(bytes.get(pos), Some(b' ' | b'\t')) {
        pos += 1;
    }
    pos
}

/// End of a metric name (`[a-zA-Z_:][a-zA-Z0-9_:]*`) or a label name (no `:`) starting at `start`.
fn scan_name(bytes: &[u8], start: usize, colons: bool) -> usize {
    let mut i = start;
    while let Some(&b) = bytes.get(i) {
        let ok = b.is_ascii_alphabetic()
            || b == b'_'
            || (colons && b == b':')
            || (i > start && b.is_ascii_digit());
        if !ok {
            break;
        }
        i += 1;
    }
    i
}

/// Reads a double-quoted string starting at `start` (the quote); returns it and the position after
/// the closing quote. Borrows unless it holds escapes.
fn scan_quoted(line: &str, start: usize) -> Result<(Cow<'_, str>, usize), &'static str> {
    let bytes = line.as_bytes();
    let body = start + 1;
    let mut i = body;
    let mut owned: Option<String> = None;
    let mut copied_to = body;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'"' => {
                let value = match owned {
                    Some(mut s) => {
                        s.push_str(&line[copied_to..i]);
                        Cow::Owned(s)
                    }
                    None => Cow::Borrowed(&line[body..i]),
                };
                return Ok((value, i + 1));
            }
            b'\\' => {
                let s = owned.get_or_insert_with(String::new);
                s.push_str(&line[copied_to..i]);
                match bytes.get(i + 1) {
                    Some(b'n') => s.push('\n'),
                    Some(b'\\') => s.push('\\'),
                    Some(b'"') => s.push('"'),
                    Some(_) => {
                        // Unknown escape: keep it as written, as Prometheus' own parser does.
                        s.push('\\');
                        copied_to = i + 1;
                        i += 1;
                        continue;
                    }
                    None => return Err("unterminated quoted string"),
                }
                i += 2;
                copied_to = i;
            }
            _ => i += 1,
        }
    }
    Err("unterminated quoted string")
}

fn parse_value(s: &str) -> Option<f64> {
    match s {
        "NaN" => Some(f64::NAN),
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        // Rust's parser also takes "inf", "infinity" and "nan" in any case, which the format does
        // not; they only ever come from hand-written text, so accepting them is harmless.
        _ if s.is_empty() => None,
        _ => s.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> (String, Vec<(String, String)>, f64) {
        let e = Exposition::parse(text).unwrap();
        assert_eq!(e.samples().len(), 1, "{text}");
        let s = &e.samples()[0];
        let labels = e
            .labels(s)
            .iter()
            .map(|l| (l.name.to_string(), l.value.to_string()))
            .collect();
        (s.name.to_string(), labels, s.value)
    }

    #[test]
    fn reads_colon_names() {
        let (n, l, v) = one("vllm:num_requests_waiting{engine=\"0\",model_name=\"m\"} 3.0\n");
        assert_eq!(n, "vllm:num_requests_waiting");
        assert_eq!(
            l,
            vec![
                ("engine".into(), "0".into()),
                ("model_name".into(), "m".into())
            ]
        );
        assert_eq!(v, 3.0);
    }

    #[test]
    fn label_values_keep_commas_equals_braces_and_escapes() {
        let (_, l, _) = one(
            r#"vllm:lora_requests_info{max_lora="4",running_lora_adapters="sql-lora,tweet",x="a=b}c",y="q\"uo\\te\nnl"} 1.7e9"#,
        );
        assert_eq!(l[1].1, "sql-lora,tweet");
        assert_eq!(l[2].1, "a=b}c");
        assert_eq!(l[3].1, "q\"uo\\te\nnl");
    }

    #[test]
    fn special_values_and_timestamps() {
        let e = Exposition::parse(
            "a NaN\nb +Inf\nc -Inf 1700000000000\nd 1e-3 17\n# EOF\nignored after eof\n",
        )
        .unwrap();
        let v: Vec<f64> = e.samples().iter().map(|s| s.value).collect();
        assert!(v[0].is_nan());
        assert_eq!(&v[1..], &[f64::INFINITY, f64::NEG_INFINITY, 1e-3]);
    }

    #[test]
    fn comments_blank_lines_crlf_and_exemplars() {
        let e = Exposition::parse(
            "# HELP x_total Help with \"quotes\"\r\n# TYPE x_total counter\r\n\r\nx_total 5\r\n\
             x_bucket{le=\"0.5\"} 2 # {trace_id=\"abc\"} 0.4 1.7e9\n",
        )
        .unwrap();
        assert_eq!(e.samples().len(), 2);
        assert_eq!(e.label(&e.samples()[1], "le"), Some("0.5"));
    }

    #[test]
    fn quoted_utf8_names() {
        let (n, l, _) = one("{\"my.metric\", code=\"200\"} 1\n");
        assert_eq!(n, "my.metric");
        assert_eq!(l, vec![("code".into(), "200".into())]);
    }

    #[test]
    fn empty_label_set_and_trailing_comma() {
        let (_, l, _) = one("a{} 1");
        assert!(l.is_empty());
        let (_, l, _) = one("a{b=\"c\",} 1");
        assert_eq!(l.len(), 1);
    }

    #[test]
    fn errors_name_the_line() {
        for (text, problem) in [
            ("ok 1\n<html>", "a sample must start with a metric name"),
            ("ok 1\nx{a=\"1\" 2", "expected ',' or '}' in a label set"),
            ("ok 1\nx{a=1} 2", "a label value must be quoted"),
            ("ok 1\nx{a=\"1} 2", "unterminated quoted string"),
            ("ok 1\nx one", "value is not a number"),
            ("ok 1\nx", "expected a space before the value"),
            ("ok 1\nx 1 notatime", "timestamp is not a number"),
        ] {
            let err = Exposition::parse(text).unwrap_err();
            assert_eq!(err.line, 2, "{text}");
            assert_eq!(err.problem, problem, "{text}");
        }
    }

    #[test]
    fn prometheus_parse_crate_would_drop_these() {
        // The reason this parser exists: every engine family with a colon must come through.
        let text = "vllm:a 1\nsglang:b 2\nllamacpp:c 3\nlmdeploy:d 4\n";
        let e = Exposition::parse(text).unwrap();
        let names: Vec<_> = e.samples().iter().map(|s| s.name).collect();
        assert_eq!(names, ["vllm:a", "sglang:b", "llamacpp:c", "lmdeploy:d"]);
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400)) {
            let text = String::from_utf8_lossy(&bytes);
            let _ = Exposition::parse(&text);
        }

        #[test]
        fn arbitrary_label_values_round_trip(value in "\\PC*") {
            let escaped = value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
            let text = format!("m{{l=\"{escaped}\"}} 1\n");
            let e = Exposition::parse(&text).unwrap();
            proptest::prop_assert_eq!(e.label(&e.samples()[0], "l"), Some(value.as_str()));
        }
    }
}
