//! Reading what dashboards and alert rules ask Prometheus: every panel's queries and variables of
//! a Grafana dashboard JSON model, and every rule of a Prometheus rules file.

use std::path::Path;

use anyhow::{Context, bail};
use serde_json::Value;

/// One query of one panel.
#[derive(Debug, Clone)]
pub struct PanelQuery {
    /// The panel's title.
    pub panel: String,
    /// The target's `refId`.
    pub ref_id: String,
    /// The PromQL as written, with Grafana variables.
    pub expr: String,
    /// The target's data source uid.
    pub datasource: String,
}

/// A templating variable.
#[derive(Debug, Clone)]
pub struct Variable {
    /// `name`.
    pub name: String,
    /// `type` (`datasource`, `query`, …).
    pub kind: String,
    /// The query text (`label_values(metric, label)` for Prometheus query variables).
    pub query: String,
    /// The whole variable, for checks on its options.
    pub raw: Value,
}

/// A dashboard's identity, queries and variables.
#[derive(Debug, Clone)]
pub struct Dashboard {
    /// `uid`.
    pub uid: String,
    /// `title`.
    pub title: String,
    /// Every target of every panel (rows' nested panels included).
    pub queries: Vec<PanelQuery>,
    /// Every panel that is not a row, as JSON.
    pub panels: Vec<Value>,
    /// `templating.list`.
    pub variables: Vec<Variable>,
}

impl Dashboard {
    /// Reads a dashboard JSON model.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let json: Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not JSON", path.display()))?;
        Self::from_json(&json).with_context(|| format!("dashboard {}", path.display()))
    }

    /// Reads a dashboard from its JSON model.
    pub fn from_json(json: &Value) -> anyhow::Result<Self> {
        let mut panels = Vec::new();
        let mut stack: Vec<&Value> = json["panels"]
            .as_array()
            .context("no panels")?
            .iter()
            .rev()
            .collect();
        while let Some(panel) = stack.pop() {
            if panel["type"] == "row" {
                if let Some(nested) = panel["panels"].as_array() {
                    stack.extend(nested.iter().rev());
                }
            } else {
                panels.push(panel.clone());
            }
        }
        let mut queries = Vec::new();
        for panel in &panels {
            let title = panel["title"]
                .as_str()
                .context("a panel without a title")?
                .to_owned();
            let targets = panel["targets"]
                .as_array()
                .with_context(|| format!("panel {title:?} has no targets"))?;
            for target in targets {
                let expr = target["expr"]
                    .as_str()
                    .with_context(|| format!("panel {title:?}: a target without expr"))?;
                queries.push(PanelQuery {
                    panel: title.clone(),
                    ref_id: target["refId"].as_str().unwrap_or_default().to_owned(),
                    expr: expr.to_owned(),
                    datasource: target["datasource"]["uid"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                });
            }
        }
        let mut variables = Vec::new();
        for variable in json["templating"]["list"]
            .as_array()
            .context("no templating.list")?
        {
            let query = match &variable["query"] {
                Value::String(s) => s.clone(),
                Value::Object(o) => o
                    .get("query")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                _ => String::new(),
            };
            variables.push(Variable {
                name: variable["name"]
                    .as_str()
                    .context("a variable without a name")?
                    .to_owned(),
                kind: variable["type"].as_str().unwrap_or_default().to_owned(),
                query,
                raw: variable.clone(),
            });
        }
        Ok(Self {
            uid: json["uid"].as_str().context("no uid")?.to_owned(),
            title: json["title"].as_str().context("no title")?.to_owned(),
            queries,
            panels,
            variables,
        })
    }
}

/// Substitutes what Grafana substitutes before a query reaches Prometheus: every `$var`,
/// `${var}` and `${var:format}` with its value in `values`, or `.*` (what "All" selects) when it
/// has none there, and the interval variables with `interval` (a PromQL duration such as `30s`).
pub fn expand(expr: &str, values: &[(&str, &str)], interval: &str) -> String {
    let mut out = String::with_capacity(expr.len());
    let mut rest = expr;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let (name, consumed) = if let Some(braced) = after.strip_prefix('{') {
            let end = braced.find('}').map_or(braced.len(), |e| e);
            let name = braced[..end].split(':').next().unwrap_or_default();
            (name, end + 2)
        } else {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            (&after[..end], end)
        };
        match name {
            "__rate_interval" | "__interval" | "__range" => out.push_str(interval),
            "" => out.push('$'),
            _ => out.push_str(
                values
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map_or(".*", |(_, v)| v),
            ),
        }
        rest = &after[consumed.min(after.len())..];
    }
    out.push_str(rest);
    out
}

/// `label_values(selector, label)` as a PromQL query returning one series per value:
/// `group by (label) (selector)`.
pub fn label_values_query(query: &str) -> anyhow::Result<(String, String)> {
    let inner = query
        .trim()
        .strip_prefix("label_values(")
        .and_then(|q| q.strip_suffix(')'))
        .with_context(|| format!("not a label_values(…) query: {query}"))?;
    let (selector, label) = inner
        .rsplit_once(',')
        .with_context(|| format!("no label in {query}"))?;
    let label = label.trim();
    if label.is_empty() || selector.trim().is_empty() {
        bail!("label_values needs a selector and a label: {query}");
    }
    Ok((
        format!("group by ({label}) ({})", selector.trim()),
        label.to_owned(),
    ))
}

/// One rule of a rules file.
#[derive(Debug, Clone)]
pub struct RuleDef {
    /// The group's name.
    pub group: String,
    /// `alert` (or `record`) name.
    pub name: String,
    /// Whether it is an alerting rule.
    pub alerting: bool,
    /// `expr`.
    pub expr: String,
    /// `labels`.
    pub labels: Value,
    /// `annotations`.
    pub annotations: Value,
}

/// Every rule of a Prometheus rules file.
pub fn load_rules(path: &Path) -> anyhow::Result<Vec<RuleDef>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let file: Value =
        serde_norway::from_str(&text).with_context(|| format!("{} is not YAML", path.display()))?;
    let mut rules = Vec::new();
    for group in file["groups"].as_array().context("no groups")? {
        let group_name = group["name"].as_str().context("a group without a name")?;
        for rule in group["rules"].as_array().context("a group without rules")? {
            let (name, alerting) = match (rule["alert"].as_str(), rule["record"].as_str()) {
                (Some(alert), None) => (alert, true),
                (None, Some(record)) => (record, false),
                _ => bail!("group {group_name}: a rule must have exactly one of alert and record"),
            };
            rules.push(RuleDef {
                group: group_name.to_owned(),
                name: name.to_owned(),
                alerting,
                expr: rule["expr"]
                    .as_str()
                    .with_context(|| format!("{name}: no expr"))?
                    .to_owned(),
                labels: rule["labels"].clone(),
                annotations: rule["annotations"].clone(),
            });
        }
    }
    Ok(rules)
}

/// The label names an annotation template reads as `$labels.NAME`.
pub fn template_labels(template: &str) -> Vec<String> {
    template
        .match_indices("$labels.")
        .map(|(at, m)| {
            template[at + m.len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn expands_grafana_variables() {
        let expr = r#"sum by (model) (rate(x{model=~"$model", endpoint=~"${endpoint:regex}"}[$__rate_interval]))"#;
        assert_eq!(
            expand(expr, &[], "30s"),
            r#"sum by (model) (rate(x{model=~".*", endpoint=~".*"}[30s]))"#
        );
        assert_eq!(
            expand(
                r#"x{model=~"$model", endpoint=~"$endpoint"}"#,
                &[("model", "qwen")],
                "1m"
            ),
            r#"x{model=~"qwen", endpoint=~".*"}"#
        );
        assert_eq!(expand("up", &[], "1m"), "up");
        assert_eq!(expand("a $ b", &[], "1m"), "a $ b");
    }

    #[test]
    fn label_values_becomes_a_group_query() {
        let (q, label) =
            label_values_query(r#"label_values(x{model=~"$model"}, endpoint)"#).unwrap();
        assert_eq!(q, r#"group by (endpoint) (x{model=~"$model"})"#);
        assert_eq!(label, "endpoint");
        assert!(label_values_query("query_result(up)").is_err());
    }

    #[test]
    fn collects_targets_from_rows_and_nested_panels() {
        let json = json!({"uid": "u", "title": "t", "templating": {"list": [
            {"name": "model", "type": "query", "query": {"query": "label_values(up, job)"}}]},
            "panels": [
                {"type": "row", "title": "r", "panels": [
                    {"type": "timeseries", "title": "nested", "targets": [{"refId": "A", "expr": "a"}]}]},
                {"type": "stat", "title": "top", "targets": [{"refId": "A", "expr": "b"}, {"refId": "B", "expr": "c"}]}]});
        let d = Dashboard::from_json(&json).unwrap();
        let exprs: Vec<&str> = d.queries.iter().map(|q| q.expr.as_str()).collect();
        assert_eq!(exprs, ["a", "b", "c"]);
        assert_eq!(d.variables[0].query, "label_values(up, job)");
        let broken = json!({"uid": "u", "title": "t", "templating": {"list": []},
            "panels": [{"type": "timeseries", "title": "p", "targets": [{"refId": "A"}]}]});
        let err = Dashboard::from_json(&broken).unwrap_err().to_string();
        assert!(err.contains("\"p\""), "{err}");
    }

    #[test]
    fn finds_labels_read_by_templates() {
        assert_eq!(
            template_labels("GPU {{ $labels.gpu }} of {{ $labels.endpoint }}: {{ $value }}"),
            ["gpu", "endpoint"]
        );
    }
}
