//! The metric names a PromQL expression reads, so that tests can check dashboards and alerts
//! against the metric contract without a full PromQL parser.
//!
//! The scanner skips string literals, label matchers (`{…}`), ranges (`[…]`), numbers and
//! durations, Grafana variables (`$model`, `${model}`), function calls and the label lists after
//! `by`, `without`, `on`, `ignoring`, `group_left` and `group_right`. Every other identifier is a
//! metric name (PromQL's binary operators and modifiers excepted).

use std::collections::BTreeSet;

/// Words that look like identifiers but are operators, modifiers, literals or aggregations (which
/// may be followed by `by (…)` instead of their argument list).
const KEYWORDS: &[&str] = &[
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "atan2",
    "inf",
    "nan",
    "sum",
    "avg",
    "min",
    "max",
    "count",
    "group",
    "stddev",
    "stdvar",
    "topk",
    "bottomk",
    "quantile",
    "count_values",
    "limitk",
    "limit_ratio",
];
/// Keywords followed by a parenthesised list of label names.
const LABEL_LIST_KEYWORDS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// The metric names `expr` selects, or an error naming the position of unbalanced syntax.
pub fn metric_names(expr: &str) -> Result<BTreeSet<String>, String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' | '`' => i = skip_string(&chars, i)?,
            '#' => {
                i = chars[i..]
                    .iter()
                    .position(|&c| c == '\n')
                    .map_or(chars.len(), |p| i + p)
            }
            '{' => i = skip_group(&chars, i, '{', '}')?,
            '[' => i = skip_group(&chars, i, '[', ']')?,
            '$' => i = skip_variable(&chars, i)?,
            c if c.is_ascii_digit()
                || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit)) =>
            {
                // Numbers, hex, exponents and durations such as 5m or 1h30m.
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                    i += 1;
                }
            }
            c if is_ident_start(c) => {
                let start = i;
                while i < chars.len() && is_ident_char(chars[i]) {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let next = next_non_space(&chars, i);
                let lower = word.to_ascii_lowercase();
                if LABEL_LIST_KEYWORDS.contains(&lower.as_str()) {
                    if let Some(open) = next.filter(|&n| chars[n] == '(') {
                        i = skip_group(&chars, open, '(', ')')?;
                    }
                } else if next.is_some_and(|n| chars[n] == '(')
                    || KEYWORDS.contains(&lower.as_str())
                {
                    // A function or aggregation call, or an operator: not a metric.
                } else {
                    names.insert(word);
                }
            }
            _ => i += 1,
        }
    }
    Ok(names)
}

/// Splits an alerting expression at its last top-level comparison (`==`, `!=`, `>=`, `<=`, `>`,
/// `<`, with an optional `bool`): returns the measured operand, the operator and the threshold.
/// `None` when the expression compares nothing at the top level.
pub fn split_comparison(expr: &str) -> Option<(&str, &str, &str)> {
    let bytes = expr.as_bytes();
    let mut depth = 0i32;
    let mut last = None;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            quote @ (b'"' | b'\'' | b'`') => {
                // Skip to the closing quote; `i += 1` below steps over it.
                i += 1;
                while i < bytes.len() && bytes[i] != quote {
                    if bytes[i] == b'\\' && quote != b'`' {
                        i += 1;
                    }
                    i += 1;
                }
            }
            b'(' | b'{' | b'[' => depth += 1,
            b')' | b'}' | b']' => depth -= 1,
            b'=' | b'!' | b'>' | b'<' if depth == 0 => {
                let two = expr.get(i..i + 2).unwrap_or("");
                let op_len = match two {
                    "==" | "!=" | ">=" | "<=" => 2,
                    _ if bytes[i] == b'>' || bytes[i] == b'<' => 1,
                    _ => 0,
                };
                if op_len > 0 {
                    last = Some((i, op_len));
                    i += op_len;
                    continue;
                }
            }
            _ => {}
        }
        i += 1;
    }
    let (at, len) = last?;
    let rest = expr[at + len..].trim_start();
    let threshold = rest.strip_prefix("bool").map_or(rest, str::trim_start);
    Some((expr[..at].trim(), &expr[at..at + len], threshold.trim()))
}

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

fn next_non_space(chars: &[char], from: usize) -> Option<usize> {
    (from..chars.len()).find(|&j| !chars[j].is_whitespace())
}

/// Index just past the string literal opening at `start`.
fn skip_string(chars: &[char], start: usize) -> Result<usize, String> {
    let quote = chars[start];
    let mut i = start + 1;
    while i < chars.len() {
        match chars[i] {
            '\\' if quote != '`' => i += 2,
            c if c == quote => return Ok(i + 1),
            _ => i += 1,
        }
    }
    Err(format!("unterminated string starting at character {start}"))
}

/// Index just past the `close` matching the `open` at `start`, skipping strings inside.
fn skip_group(chars: &[char], start: usize, open: char, close: char) -> Result<usize, String> {
    let mut depth = 0;
    let mut i = start;
    while i < chars.len() {
        match chars[i] {
            '"' | '\'' | '`' => {
                i = skip_string(chars, i)?;
                continue;
            }
            c if c == open => depth += 1,
            c if c == close => {
                depth -= 1;
                if depth == 0 {
                    return Ok(i + 1);
                }
            }
            _ => {}
        }
        i += 1;
    }
    Err(format!("'{open}' at character {start} is never closed"))
}

/// Index just past a Grafana variable: `$name`, `$__rate_interval` or `${name}` / `${name:fmt}`.
fn skip_variable(chars: &[char], start: usize) -> Result<usize, String> {
    if chars.get(start + 1) == Some(&'{') {
        return skip_group(chars, start + 1, '{', '}');
    }
    let mut i = start + 1;
    while i < chars.len() && is_ident_char(chars[i]) {
        i += 1;
    }
    Ok(i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(expr: &str) -> Vec<String> {
        metric_names(expr).unwrap().into_iter().collect()
    }

    #[test]
    fn finds_metrics_in_aggregations_and_binary_expressions() {
        let expr = r#"sum by (model, outcome) (rate(inferpick_picker_decisions_total{model=~"$model"}[$__rate_interval]))
            / ignoring(outcome) group_left sum by (model) (rate(inferpick_picker_decisions_total[5m] offset 1m)) > bool 0.5"#;
        assert_eq!(names(expr), ["inferpick_picker_decisions_total"]);
    }

    #[test]
    fn skips_label_values_strings_and_variables() {
        let expr = r#"histogram_quantile(0.99, sum by (le) (rate(inferpick_picker_decision_duration_seconds_bucket{policy="inferpick_x", model=~"${model:regex}"}[1m])))"#;
        assert_eq!(
            names(expr),
            ["inferpick_picker_decision_duration_seconds_bucket"]
        );
    }

    #[test]
    fn sees_every_metric_of_a_join() {
        let expr = "inferpick_gpu_memory_used_bytes / on(endpoint, gpu) inferpick_gpu_memory_total_bytes \
                    and on(endpoint) (inferpick_endpoint_ready == 1) or vector(0) unless up";
        assert_eq!(
            names(expr),
            [
                "inferpick_endpoint_ready",
                "inferpick_gpu_memory_total_bytes",
                "inferpick_gpu_memory_used_bytes",
                "up"
            ]
        );
    }

    #[test]
    fn aggregation_clause_after_the_call_is_a_label_list() {
        assert_eq!(names("sum(up) without (instance, job)"), ["up"]);
        assert_eq!(names("max(up) by(job) * 1e3 + 0x1F - 2h30m"), ["up"]);
    }

    #[test]
    fn splits_alert_expressions_at_the_top_level_comparison() {
        let expr = "sum by (model) (rate(x{outcome!=\"shed\"}[5m])) / sum(rate(x[5m])) > 0.05";
        assert_eq!(
            split_comparison(expr),
            Some((
                "sum by (model) (rate(x{outcome!=\"shed\"}[5m])) / sum(rate(x[5m]))",
                ">",
                "0.05"
            ))
        );
        let nested = "(sum(a) * on (e) group_left () (max(b) < bool 1) or sum(a) * 0) == 0";
        assert_eq!(
            split_comparison(nested),
            Some((
                "(sum(a) * on (e) group_left () (max(b) < bool 1) or sum(a) * 0)",
                "==",
                "0"
            ))
        );
        assert_eq!(
            split_comparison("min(x) >= bool 1"),
            Some(("min(x)", ">=", "1"))
        );
        assert_eq!(split_comparison("rate(x{a=\"<\"}[5m])"), None);
    }

    #[test]
    fn unbalanced_input_is_an_error_naming_the_position() {
        let err = metric_names("sum(rate(x{a=\"b\"[5m]").unwrap_err();
        assert!(
            err.contains("never closed") || err.contains("unterminated"),
            "{err}"
        );
        let err = metric_names("x{a=\"b}").unwrap_err();
        assert!(err.contains("character"), "{err}");
    }
}
