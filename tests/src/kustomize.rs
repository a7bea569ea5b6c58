//! A strict renderer for the subset of kustomize that `deploy/` uses, for machines without
//! `kubectl` or `kustomize`: `resources` (files and directories), `components`, strategic-merge
//! `patches` (with `target` selectors and `$patch: delete`), `configMapGenerator` (files, without
//! the name hash), `namespace`, `labels` (`pairs`) and `images` (`newTag`, `newName`). Anything
//! else is an error naming the file and the key. Where a real kustomize exists, a test checks that
//! both render the same objects.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::kube::parse_documents;

/// Kinds that live outside namespaces (kustomize leaves their namespace alone).
const CLUSTER_SCOPED: &[&str] = &[
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "GatewayClass",
    "MutatingWebhookConfiguration",
    "PersistentVolume",
    "PriorityClass",
    "StorageClass",
    "ValidatingWebhookConfiguration",
];
const KUSTOMIZATION_KEYS: &[&str] = &[
    "apiVersion",
    "kind",
    "namespace",
    "labels",
    "resources",
    "components",
    "patches",
    "images",
    "configMapGenerator",
];
const COMPONENT_KEYS: &[&str] = &[
    "apiVersion",
    "kind",
    "resources",
    "patches",
    "images",
    "configMapGenerator",
];

/// Renders the kustomization in `dir`.
pub fn build(dir: &Path) -> Result<Vec<Value>, String> {
    let k = Kustomization::load(dir)?;
    if k.component {
        return Err(format!(
            "{}: a Component is not built on its own",
            k.file.display()
        ));
    }
    let mut resources = Vec::new();
    k.apply(dir, &mut resources)?;
    check_unique(&resources, &k.file)?;
    Ok(resources)
}

/// A parsed `kustomization.yaml`.
struct Kustomization {
    file: PathBuf,
    component: bool,
    doc: Map<String, Value>,
}

impl Kustomization {
    fn load(dir: &Path) -> Result<Self, String> {
        let file = dir.join("kustomization.yaml");
        let text =
            std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
        let doc = parse_documents(&text).map_err(|e| format!("{}: {e:#}", file.display()))?;
        let [Value::Object(doc)] = &doc[..] else {
            return Err(format!("{}: expected one mapping", file.display()));
        };
        let component = match (
            doc.get("apiVersion").and_then(Value::as_str),
            doc.get("kind").and_then(Value::as_str),
        ) {
            (Some("kustomize.config.k8s.io/v1beta1"), Some("Kustomization")) => false,
            (Some("kustomize.config.k8s.io/v1alpha1"), Some("Component")) => true,
            (api, kind) => {
                return Err(format!(
                    "{}: unsupported apiVersion/kind {api:?}/{kind:?}",
                    file.display()
                ));
            }
        };
        let allowed = if component {
            COMPONENT_KEYS
        } else {
            KUSTOMIZATION_KEYS
        };
        if let Some(key) = doc.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(format!(
                "{}: `{key}` is outside the supported kustomize subset",
                file.display()
            ));
        }
        Ok(Self {
            file,
            component,
            doc: doc.clone(),
        })
    }

    fn list(&self, key: &str) -> Result<Vec<Value>, String> {
        match self.doc.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => Ok(items.clone()),
            Some(_) => Err(format!("{}: `{key}` must be a list", self.file.display())),
        }
    }

    fn strings(&self, key: &str) -> Result<Vec<String>, String> {
        self.list(key)?
            .into_iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| format!("{}: `{key}` holds a non-string", self.file.display()))
            })
            .collect()
    }

    /// Adds this kustomization's resources to `into` and transforms them (for a component, the
    /// parent's resources are transformed too, as kustomize does).
    fn apply(&self, dir: &Path, into: &mut Vec<Value>) -> Result<(), String> {
        for entry in self.strings("resources")? {
            let path = dir.join(&entry);
            if path.is_dir() {
                into.extend(build(&path)?);
            } else {
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| format!("{}: resource {entry}: {e}", self.file.display()))?;
                into.extend(
                    parse_documents(&text).map_err(|e| format!("{}: {e:#}", path.display()))?,
                );
            }
        }
        for entry in self.strings("components")? {
            let path = dir.join(&entry);
            let component = Kustomization::load(&path)?;
            if !component.component {
                return Err(format!(
                    "{}: components entry {entry} is not a Component",
                    self.file.display()
                ));
            }
            component.apply(&path, into)?;
        }
        for generator in self.list("configMapGenerator")? {
            into.push(self.config_map(dir, &generator)?);
        }
        for patch in self.list("patches")? {
            self.patch(dir, &patch, into)?;
        }
        if let Some(namespace) = self.doc.get("namespace") {
            let namespace = namespace
                .as_str()
                .ok_or_else(|| format!("{}: namespace must be a string", self.file.display()))?;
            for resource in into.iter_mut() {
                let kind = resource["kind"].as_str().unwrap_or_default();
                if kind == "Namespace" {
                    resource["metadata"]["name"] = namespace.into();
                } else if !CLUSTER_SCOPED.contains(&kind) {
                    resource["metadata"]["namespace"] = namespace.into();
                }
            }
        }
        for label in self.list("labels")? {
            let Some(label) = label.as_object() else {
                return Err(format!(
                    "{}: labels entries are mappings",
                    self.file.display()
                ));
            };
            if let Some(key) = label.keys().find(|k| *k != "pairs") {
                return Err(format!(
                    "{}: labels.{key} is outside the supported kustomize subset",
                    self.file.display()
                ));
            }
            let pairs = label
                .get("pairs")
                .and_then(Value::as_object)
                .ok_or_else(|| format!("{}: labels need pairs", self.file.display()))?;
            for resource in into.iter_mut() {
                let labels = &mut resource["metadata"]["labels"];
                if labels.is_null() {
                    *labels = Value::Object(Map::new());
                }
                for (k, v) in pairs {
                    labels[k] = v.clone();
                }
            }
        }
        for image in self.list("images")? {
            self.image(&image, into)?;
        }
        Ok(())
    }

    fn config_map(&self, dir: &Path, generator: &Value) -> Result<Value, String> {
        let file = self.file.display();
        let object = generator
            .as_object()
            .ok_or_else(|| format!("{file}: configMapGenerator entries are mappings"))?;
        if let Some(key) = object
            .keys()
            .find(|k| !["name", "files", "options"].contains(&k.as_str()))
        {
            return Err(format!(
                "{file}: configMapGenerator.{key} is outside the supported kustomize subset"
            ));
        }
        let name = object
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("{file}: configMapGenerator needs a name"))?;
        let options = object.get("options").cloned().unwrap_or(Value::Null);
        if options["disableNameSuffixHash"] != true {
            return Err(format!(
                "{file}: configMapGenerator {name}: only disableNameSuffixHash: true is supported"
            ));
        }
        let mut data = Map::new();
        for entry in object
            .get("files")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let entry = entry
                .as_str()
                .ok_or_else(|| format!("{file}: files entries are strings"))?;
            let path = dir.join(entry);
            let key = path
                .file_name()
                .and_then(|n| n.to_str())
                .ok_or_else(|| format!("{file}: bad file {entry}"))?;
            let text =
                std::fs::read_to_string(&path).map_err(|e| format!("{file}: {entry}: {e}"))?;
            data.insert(key.to_owned(), Value::String(text));
        }
        let mut metadata = Map::new();
        for key in ["annotations", "labels"] {
            if options[key].is_object() {
                metadata.insert(key.to_owned(), options[key].clone());
            }
        }
        metadata.insert("name".into(), name.into());
        Ok(
            serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": data}),
        )
    }

    fn patch(&self, dir: &Path, patch: &Value, into: &mut Vec<Value>) -> Result<(), String> {
        let file = self.file.display();
        let text = match (patch["path"].as_str(), patch["patch"].as_str()) {
            (Some(path), None) => std::fs::read_to_string(dir.join(path))
                .map_err(|e| format!("{file}: patch {path}: {e}"))?,
            (None, Some(inline)) => inline.to_owned(),
            _ => {
                return Err(format!(
                    "{file}: a patch needs exactly one of path and patch"
                ));
            }
        };
        let docs = parse_documents(&text).map_err(|e| format!("{file}: patch: {e:#}"))?;
        let [body @ Value::Object(_)] = &docs[..] else {
            return Err(format!(
                "{file}: only strategic-merge patches (one mapping) are supported"
            ));
        };
        let target = &patch["target"];
        if let Some(key) = target.as_object().and_then(|t| {
            t.keys().find(|k| {
                !["group", "version", "kind", "name", "labelSelector"].contains(&k.as_str())
            })
        }) {
            return Err(format!(
                "{file}: patch target.{key} is outside the supported kustomize subset"
            ));
        }
        let matches = |resource: &Value| -> bool {
            if target.is_null() {
                return resource["kind"] == body["kind"]
                    && resource["metadata"]["name"] == body["metadata"]["name"];
            }
            let api = resource["apiVersion"].as_str().unwrap_or_default();
            let (group, version) = api.rsplit_once('/').unwrap_or(("", api));
            let same =
                |key: &str, actual: &str| target[key].as_str().is_none_or(|want| want == actual);
            same("group", group)
                && same("version", version)
                && same("kind", resource["kind"].as_str().unwrap_or_default())
                && same(
                    "name",
                    resource["metadata"]["name"].as_str().unwrap_or_default(),
                )
                && target["labelSelector"].as_str().is_none_or(|selector| {
                    selector.split(',').all(|pair| {
                        pair.split_once('=').is_some_and(|(k, v)| {
                            resource["metadata"]["labels"][k.trim()] == v.trim()
                        })
                    })
                })
        };
        let delete = body["$patch"] == "delete";
        let before = into.len();
        let mut matched = 0;
        let mut kept = Vec::with_capacity(before);
        for mut resource in into.drain(..) {
            if matches(&resource) {
                matched += 1;
                if delete {
                    continue;
                }
                let mut body = body.clone();
                body.as_object_mut().into_iter().for_each(|b| {
                    b.remove("metadata");
                    b.remove("apiVersion");
                    b.remove("kind");
                });
                merge(&mut resource, &body, "")?;
            }
            kept.push(resource);
        }
        *into = kept;
        if target.is_null() && matched == 0 {
            return Err(format!(
                "{file}: the patch for {} matches no resource",
                crate::kube::describe(body)
            ));
        }
        Ok(())
    }

    fn image(&self, image: &Value, into: &mut [Value]) -> Result<(), String> {
        let file = self.file.display();
        if let Some(key) = image.as_object().and_then(|i| {
            i.keys()
                .find(|k| !["name", "newName", "newTag"].contains(&k.as_str()))
        }) {
            return Err(format!(
                "{file}: images.{key} is outside the supported kustomize subset"
            ));
        }
        let name = image["name"]
            .as_str()
            .ok_or_else(|| format!("{file}: images entries need a name"))?;
        for resource in into.iter_mut() {
            for list in ["containers", "initContainers"] {
                let containers = resource
                    .pointer_mut(&format!("/spec/template/spec/{list}"))
                    .and_then(Value::as_array_mut);
                for container in containers.into_iter().flatten() {
                    let Some(current) = container["image"].as_str() else {
                        continue;
                    };
                    let (base, tag) = match current.rsplit_once(':') {
                        Some((base, tag)) if !tag.contains('/') => (base, Some(tag)),
                        _ => (current, None),
                    };
                    if base != name {
                        continue;
                    }
                    let base = image["newName"].as_str().unwrap_or(base);
                    let tag = image["newTag"].as_str().or(tag);
                    container["image"] = match tag {
                        Some(tag) => format!("{base}:{tag}"),
                        None => base.to_owned(),
                    }
                    .into();
                }
            }
        }
        Ok(())
    }
}

/// The key that identifies items of the list at `field`, for strategic merge (from the
/// Kubernetes API's `patchMergeKey`s); `None` means the patch replaces the list.
fn merge_key(field: &str, items: &[Value]) -> Option<&'static str> {
    match field {
        "containers" | "initContainers" | "volumes" | "env" | "imagePullSecrets" => Some("name"),
        "volumeMounts" => Some("mountPath"),
        "ports" if items.iter().all(|i| i.get("containerPort").is_some()) => Some("containerPort"),
        "ports" => Some("port"),
        _ => None,
    }
}

/// Strategic merge of `patch` into `target`; `field` is the key `target` sits under.
fn merge(target: &mut Value, patch: &Value, field: &str) -> Result<(), String> {
    match (target, patch) {
        (Value::Object(target), Value::Object(patch)) => {
            for (key, value) in patch {
                if key.starts_with('$') {
                    return Err(format!(
                        "the patch directive {key} is outside the supported kustomize subset"
                    ));
                }
                if value.is_null() {
                    target.remove(key);
                } else if let Some(existing) = target.get_mut(key) {
                    merge(existing, value, key)?;
                } else {
                    target.insert(key.clone(), value.clone());
                }
            }
            Ok(())
        }
        (Value::Array(target), Value::Array(patch)) => {
            let Some(key) = merge_key(field, patch) else {
                *target = patch.clone();
                return Ok(());
            };
            // Items of the patch first (merged into their match), then the others, as kustomize does.
            let mut merged = Vec::with_capacity(target.len() + patch.len());
            let mut used = BTreeSet::new();
            for item in patch {
                let found = target
                    .iter()
                    .position(|t| t.get(key).is_some() && t.get(key) == item.get(key));
                match found {
                    Some(i) => {
                        let mut base = target[i].clone();
                        merge(&mut base, item, "")?;
                        used.insert(i);
                        merged.push(base);
                    }
                    None => merged.push(item.clone()),
                }
            }
            merged.extend(
                target
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| !used.contains(i))
                    .map(|(_, t)| t.clone()),
            );
            *target = merged;
            Ok(())
        }
        (target, patch) => {
            *target = patch.clone();
            Ok(())
        }
    }
}

/// kustomize refuses two resources with the same kind, namespace and name.
fn check_unique(resources: &[Value], file: &Path) -> Result<(), String> {
    let mut seen = BTreeSet::new();
    for r in resources {
        let id = (
            r["apiVersion"].as_str().unwrap_or_default().to_owned(),
            r["kind"].as_str().unwrap_or_default().to_owned(),
            r["metadata"]["namespace"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            r["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
        if !seen.insert(id.clone()) {
            return Err(format!("{}: two resources are {id:?}", file.display()));
        }
    }
    Ok(())
}

/// Sorts resources by kind, namespace and name, so that two renderings compare equal regardless
/// of the order each tool prints.
pub fn sorted(mut resources: Vec<Value>) -> Vec<Value> {
    let key = |r: &Value| {
        (
            r["kind"].as_str().unwrap_or_default().to_owned(),
            r["metadata"]["namespace"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            r["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        )
    };
    resources.sort_by_key(key);
    resources
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ScratchDir;
    use serde_json::json;

    fn write(dir: &ScratchDir, files: &[(&str, &str)]) {
        for (name, text) in files {
            dir.write(name, text).unwrap();
        }
    }

    #[test]
    fn renders_components_patches_namespace_labels_images_and_generators() {
        let dir = ScratchDir::new("kustomize").unwrap();
        write(
            &dir,
            &[
                (
                    "app/kustomization.yaml",
                    "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nnamespace: prod\n\
              labels:\n  - pairs: {team: a}\nresources: [deploy.yaml]\ncomponents: [../sidecar]\n\
              configMapGenerator:\n  - name: files\n    files: [data.json]\n    options: {disableNameSuffixHash: true, labels: {x: \"1\"}}\n",
                ),
                (
                    "app/deploy.yaml",
                    "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, labels: {inject: \"yes\"}}\n\
              spec:\n  template:\n    spec:\n      containers:\n        - {name: web, image: web:1}\n      volumes: [{name: v, emptyDir: {}}]\n",
                ),
                ("app/data.json", "{\"a\": 1}\n"),
                (
                    "sidecar/kustomization.yaml",
                    "apiVersion: kustomize.config.k8s.io/v1alpha1\nkind: Component\n\
              patches:\n  - path: patch.yaml\n    target: {kind: Deployment, labelSelector: inject=yes}\n\
              images:\n  - {name: side, newTag: \"2\"}\n",
                ),
                (
                    "sidecar/patch.yaml",
                    "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: any}\n\
              spec:\n  template:\n    spec:\n      containers:\n        - {name: side, image: side}\n      volumes: [{name: s, emptyDir: {}}]\n",
                ),
            ],
        );
        let out = build(&dir.join("app")).unwrap();
        let deployment = &out[0];
        assert_eq!(deployment["metadata"]["namespace"], "prod");
        assert_eq!(
            deployment["metadata"]["labels"],
            json!({"inject": "yes", "team": "a"})
        );
        let spec = &deployment["spec"]["template"]["spec"];
        assert_eq!(
            spec["containers"],
            json!([{"name": "side", "image": "side:2"}, {"name": "web", "image": "web:1"}])
        );
        assert_eq!(
            spec["volumes"],
            json!([{"name": "s", "emptyDir": {}}, {"name": "v", "emptyDir": {}}])
        );
        assert_eq!(out[1]["data"]["data.json"], "{\"a\": 1}\n");
        assert_eq!(out[1]["metadata"]["namespace"], "prod");
    }

    #[test]
    fn anything_outside_the_subset_is_an_error_naming_file_and_key() {
        let dir = ScratchDir::new("kustomize").unwrap();
        write(
            &dir,
            &[(
                "kustomization.yaml",
                "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nnamePrefix: x-\n",
            )],
        );
        let err = build(dir.path()).unwrap_err();
        assert!(
            err.contains("kustomization.yaml") && err.contains("namePrefix"),
            "{err}"
        );

        write(
            &dir,
            &[
                (
                    "kustomization.yaml",
                    "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources: [cm.yaml]\n\
              patches:\n  - patch: '[{\"op\": \"add\", \"path\": \"/data/x\", \"value\": \"1\"}]'\n",
                ),
                (
                    "cm.yaml",
                    "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n",
                ),
            ],
        );
        let err = build(dir.path()).unwrap_err();
        assert!(err.contains("strategic-merge"), "{err}");
    }

    #[test]
    fn duplicate_ids_and_unmatched_named_patches_are_errors() {
        let dir = ScratchDir::new("kustomize").unwrap();
        write(
            &dir,
            &[
                (
                    "kustomization.yaml",
                    "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources: [a.yaml, b.yaml]\n",
                ),
                (
                    "a.yaml",
                    "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n",
                ),
                (
                    "b.yaml",
                    "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n",
                ),
            ],
        );
        assert!(build(dir.path()).unwrap_err().contains("two resources"));
        write(
            &dir,
            &[(
                "kustomization.yaml",
                "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources: [a.yaml]\n\
              patches:\n  - patch: 'apiVersion: v1\n\n      kind: ConfigMap\n\n      metadata: {name: other}'\n",
            )],
        );
        assert!(
            build(dir.path())
                .unwrap_err()
                .contains("matches no resource")
        );
    }
}
