//! Kubernetes manifests in tests: render a kustomization with a real kustomize, parse the
//! multi-document YAML, and validate it with `kubernetes-validate`, the CRD schemas kept in
//! `deploy/schemas/`, and `yamllint`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};
use serde::Deserialize;
use serde_json::Value;

use crate::tool::{KUBECTL, KUSTOMIZE};

/// The Kubernetes version manifests are validated against.
pub const KUBERNETES_VERSION: &str = "1.30";

/// A kustomize implementation: a standalone `kustomize` binary, `kubectl kustomize`, or the
/// built-in renderer of [`crate::kustomize`] for the subset `deploy/` uses.
#[derive(Debug, Clone)]
pub enum Kustomize {
    /// `kustomize build DIR`.
    Standalone(PathBuf),
    /// `kubectl kustomize DIR`.
    Kubectl(PathBuf),
    /// [`crate::kustomize::build`].
    Builtin,
}

impl Kustomize {
    /// The first of `kustomize` and `kubectl` that is installed (never the built-in renderer).
    pub fn find() -> Result<Option<Self>, String> {
        if let Some(path) = KUSTOMIZE.find()? {
            return Ok(Some(Self::Standalone(path)));
        }
        Ok(KUBECTL.find()?.map(Self::Kubectl))
    }

    /// A real kustomize when one is installed, else the built-in renderer (said once on stderr).
    pub fn real_or_builtin() -> Self {
        match Self::find() {
            Ok(Some(real)) => real,
            Ok(None) => {
                static NOTE: std::sync::Once = std::sync::Once::new();
                NOTE.call_once(|| {
                    eprintln!(
                        "NOTE: neither kustomize nor kubectl found; rendering with the built-in renderer. Install: {}",
                        KUBECTL.install
                    );
                });
                Self::Builtin
            }
            Err(message) => panic!("{message}"),
        }
    }

    /// Renders the kustomization in `dir` to multi-document YAML.
    pub fn render(&self, dir: &Path) -> anyhow::Result<String> {
        let mut command = match self {
            Self::Standalone(path) => {
                let mut c = Command::new(path);
                c.arg("build");
                c
            }
            Self::Kubectl(path) => {
                let mut c = Command::new(path);
                c.arg("kustomize");
                c
            }
            Self::Builtin => {
                let resources = crate::kustomize::build(dir).map_err(anyhow::Error::msg)?;
                let mut yaml = String::new();
                for resource in &resources {
                    yaml.push_str("---\n");
                    yaml.push_str(&serde_norway::to_string(resource)?);
                }
                return Ok(yaml);
            }
        };
        let output = command
            .arg(dir)
            .output()
            .with_context(|| format!("running {command:?}"))?;
        if !output.status.success() {
            bail!(
                "rendering {} failed ({}): {}",
                dir.display(),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        String::from_utf8(output.stdout).context("kustomize output is not UTF-8")
    }

    /// Renders and parses the kustomization in `dir`.
    pub fn resources(&self, dir: &Path) -> anyhow::Result<Vec<Value>> {
        parse_documents(&self.render(dir)?)
            .with_context(|| format!("rendering of {}", dir.display()))
    }
}

/// Parses multi-document YAML into JSON values (empty documents dropped).
pub fn parse_documents(yaml: &str) -> anyhow::Result<Vec<Value>> {
    let mut documents = Vec::new();
    for (index, document) in serde_norway::Deserializer::from_str(yaml).enumerate() {
        let value =
            Value::deserialize(document).with_context(|| format!("YAML document {index}"))?;
        if !value.is_null() {
            documents.push(value);
        }
    }
    Ok(documents)
}

/// `kind/name` of a manifest, for messages.
pub fn describe(resource: &Value) -> String {
    format!(
        "{}/{}",
        resource["kind"].as_str().unwrap_or("?"),
        resource["metadata"]["name"].as_str().unwrap_or("?")
    )
}

/// A kind that `kubernetes-validate` has no schema for (a custom resource).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct UnknownKind {
    /// `kind`.
    pub kind: String,
    /// `apiVersion`.
    pub api_version: String,
}

/// Runs `kubernetes-validate --strict -k 1.30` on `file`; fails on any error. Returns the custom
/// resource kinds it had no schema for: the caller must check those against [`CrdSchemas`].
pub fn kubernetes_validate(binary: &Path, file: &Path) -> anyhow::Result<Vec<UnknownKind>> {
    let output = Command::new(binary)
        .args(["--strict", "-k", KUBERNETES_VERSION])
        .arg(file)
        .output()
        .with_context(|| format!("running {}", binary.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let errors: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("ERROR") || l.starts_with("FATAL"))
        .collect();
    if !output.status.success() || !errors.is_empty() {
        bail!(
            "kubernetes-validate rejected {} ({}):\n{}\n{}",
            file.display(),
            output.status,
            errors.join("\n"),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let mut unknown = Vec::new();
    for line in stdout.lines().filter(|l| l.starts_with("WARN")) {
        unknown.push(
            parse_missing_schema(line).with_context(|| format!("unexpected warning: {line}"))?,
        );
    }
    unknown.sort();
    unknown.dedup();
    Ok(unknown)
}

/// Reads "… Couldn't find schema for kind K with api version A for kubernetes version V".
fn parse_missing_schema(line: &str) -> Option<UnknownKind> {
    let rest = line.split_once("Couldn't find schema for kind ")?.1;
    let (kind, rest) = rest.split_once(" with api version ")?;
    let (api_version, _) = rest.split_once(" for kubernetes version ")?;
    Some(UnknownKind {
        kind: kind.to_owned(),
        api_version: api_version.to_owned(),
    })
}

/// The JSON schemas kept for custom resources, one file per kind and version:
/// `<kind in lower case>_<group>_<version>.json`.
#[derive(Debug)]
pub struct CrdSchemas {
    dir: PathBuf,
}

/// Validates each document of a JSON array against the schema named with it; prints one line per
/// violation with the document and the JSON path. The venv's Python has `jsonschema`, the library
/// `kubernetes-validate` itself validates with.
const VALIDATE_PY: &str = r#"
import json, sys, jsonschema
failed = 0
for item in json.load(sys.stdin):
    with open(item["schema"]) as f:
        schema = json.load(f)
    validator = jsonschema.Draft202012Validator(schema)
    for error in sorted(validator.iter_errors(item["doc"]), key=lambda e: list(e.absolute_path)):
        path = ".".join(str(p) for p in error.absolute_path) or "(root)"
        print(f"{item['name']}: {path}: {error.message}")
        failed += 1
sys.exit(1 if failed else 0)
"#;

impl CrdSchemas {
    /// Schemas in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The schema file for `api_version` + `kind`.
    pub fn path_for(&self, api_version: &str, kind: &str) -> PathBuf {
        let file = format!(
            "{}_{}.json",
            kind.to_ascii_lowercase(),
            api_version.replace('/', "_")
        );
        self.dir.join(file)
    }

    /// Validates every resource whose kind has a schema here; an unknown kind listed in
    /// `must_cover` without a schema file is an error. Needs the Python that runs
    /// `kubernetes-validate` (found from its `#!` line).
    pub fn validate(
        &self,
        kubernetes_validate: &Path,
        resources: &[Value],
        must_cover: &[UnknownKind],
    ) -> anyhow::Result<usize> {
        for unknown in must_cover {
            let schema = self.path_for(&unknown.api_version, &unknown.kind);
            if !schema.is_file() {
                bail!(
                    "no schema for {} {}: kubernetes-validate has none, and {} does not exist",
                    unknown.kind,
                    unknown.api_version,
                    schema.display()
                );
            }
        }
        let mut items = Vec::new();
        for resource in resources {
            let api_version = resource["apiVersion"].as_str().unwrap_or_default();
            let kind = resource["kind"].as_str().unwrap_or_default();
            let schema = self.path_for(api_version, kind);
            if schema.is_file() {
                items.push(serde_json::json!({
                    "schema": schema, "doc": resource, "name": describe(resource),
                }));
            }
        }
        if items.is_empty() {
            return Ok(0);
        }
        let python = interpreter_of(kubernetes_validate)?;
        let mut child = Command::new(&python)
            .args(["-c", VALIDATE_PY])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("running {}", python.display()))?;
        child
            .stdin
            .take()
            .context("stdin of the schema check")?
            .write_all(serde_json::to_string(&items)?.as_bytes())?;
        let output = child.wait_with_output()?;
        if !output.status.success() {
            bail!(
                "custom resources do not match their schemas in {}:\n{}{}",
                self.dir.display(),
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(items.len())
    }
}

/// The interpreter named on a script's `#!` line (pip console scripts name their venv's Python).
pub fn interpreter_of(script: &Path) -> anyhow::Result<PathBuf> {
    let text = std::fs::read(script).with_context(|| format!("reading {}", script.display()))?;
    let first = text.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(first);
    let interpreter = line
        .strip_prefix("#!")
        .and_then(|rest| rest.split_whitespace().next())
        .with_context(|| format!("{} has no #! line", script.display()))?;
    Ok(PathBuf::from(interpreter))
}

/// Runs `yamllint -s` (warnings are errors) on `paths`, from the repository root so that a
/// `.yamllint` there applies.
pub fn yamllint(binary: &Path, paths: &[&Path]) -> anyhow::Result<()> {
    let output = Command::new(binary)
        .arg("-s")
        .args(["-f", "parsable"])
        .args(paths)
        .current_dir(crate::repo_root())
        .output()
        .with_context(|| format!("running {}", binary.display()))?;
    if !output.status.success() {
        bail!(
            "yamllint -s found problems:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// Groups resources by `kind`, for assertions on a rendered kustomization.
pub fn by_kind(resources: &[Value]) -> BTreeMap<String, Vec<&Value>> {
    let mut kinds: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for resource in resources {
        kinds
            .entry(resource["kind"].as_str().unwrap_or("?").to_owned())
            .or_default()
            .push(resource);
    }
    kinds
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_multi_document_yaml_and_drops_empty_documents() {
        let docs =
            parse_documents("---\nkind: A\nmetadata: {name: a}\n---\n---\nkind: B\n").unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(describe(&docs[0]), "A/a");
        assert_eq!(describe(&docs[1]), "B/?");
    }

    #[test]
    fn reads_missing_schema_warnings() {
        let line = "WARN /tmp/x.yaml Couldn't find schema for kind PodMonitor with api version \
                    monitoring.coreos.com/v1 for kubernetes version 1.30";
        assert_eq!(
            parse_missing_schema(line),
            Some(UnknownKind {
                kind: "PodMonitor".into(),
                api_version: "monitoring.coreos.com/v1".into()
            })
        );
        assert_eq!(parse_missing_schema("WARN something else"), None);
    }

    #[test]
    fn schema_file_names_carry_kind_group_and_version() {
        let schemas = CrdSchemas::new("/s");
        assert_eq!(
            schemas.path_for("inference.networking.k8s.io/v1", "InferencePool"),
            PathBuf::from("/s/inferencepool_inference.networking.k8s.io_v1.json")
        );
    }

    #[test]
    fn interpreter_comes_from_the_shebang() {
        let dir = crate::ScratchDir::new("kube").unwrap();
        let script = dir
            .write("tool", "#!/opt/venv/bin/python3 -u\nprint()\n")
            .unwrap();
        assert_eq!(
            interpreter_of(&script).unwrap(),
            PathBuf::from("/opt/venv/bin/python3")
        );
        let plain = dir.write("plain", "print()\n").unwrap();
        assert!(
            interpreter_of(&plain)
                .unwrap_err()
                .to_string()
                .contains("no #! line")
        );
    }
}
