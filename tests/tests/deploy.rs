//! deploy/: every kustomization renders with a real kustomize, passes `kubernetes-validate
//! --strict` and the CRD schemas kept in `deploy/schemas/`, and `yamllint`; and the rendered
//! objects agree with what the agent, the picker, Prometheus and the gateways expect of them.

use std::collections::BTreeSet;
use std::path::PathBuf;

use inferpick_tests::kube::{self, CrdSchemas, Kustomize, UnknownKind, by_kind, describe};
use inferpick_tests::kustomize;
use inferpick_tests::tool::{KUBERNETES_VALIDATE, YAMLLINT};
use inferpick_tests::{ScratchDir, repo_root};
use serde_json::{Value, json};

/// Every kustomization users apply, relative to deploy/.
const KUSTOMIZATIONS: &[&str] = &[
    "base",
    "examples/vllm",
    "examples/sglang",
    "examples/gateway-api",
    "monitoring",
];
/// Kustomize components (not buildable on their own), relative to deploy/.
const COMPONENTS: &[&str] = &["components/sidecar"];
/// The custom resources the manifests use; each needs a schema in deploy/schemas/.
const CUSTOM_KINDS: &[(&str, &str)] = &[
    ("InferencePool", "inference.networking.k8s.io/v1"),
    ("HTTPRoute", "gateway.networking.k8s.io/v1"),
    ("PodMonitor", "monitoring.coreos.com/v1"),
    ("ServiceMonitor", "monitoring.coreos.com/v1"),
    ("PrometheusRule", "monitoring.coreos.com/v1"),
];

fn deploy() -> PathBuf {
    repo_root().join("deploy")
}

/// Renders `deploy/<dir>` with a real kustomize, or the built-in renderer where none is installed.
fn render(dir: &str) -> Vec<Value> {
    Kustomize::real_or_builtin()
        .resources(&deploy().join(dir))
        .unwrap_or_else(|e| panic!("deploy/{dir}: {e:#}"))
}

fn find<'a>(resources: &'a [Value], kind: &str, name: &str) -> &'a Value {
    resources
        .iter()
        .find(|r| r["kind"] == kind && r["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind}/{name} among {:?}", names(resources)))
}

fn names(resources: &[Value]) -> Vec<String> {
    resources.iter().map(describe).collect()
}

fn container<'a>(pod_spec: &'a Value, name: &str) -> &'a Value {
    pod_spec["containers"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no container {name} in {pod_spec}"))
}

fn env<'a>(container: &'a Value, name: &str) -> &'a Value {
    container["env"]
        .as_array()
        .and_then(|vars| vars.iter().find(|v| v["name"] == name))
        .unwrap_or_else(|| panic!("container {} has no env {name}", container["name"]))
}

fn args(container: &Value) -> Vec<String> {
    container["args"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// The value of `--flag=value` in a container's args.
fn flag(container: &Value, flag: &str) -> Option<String> {
    let prefix = format!("{flag}=");
    args(container)
        .iter()
        .find_map(|a| a.strip_prefix(&prefix).map(str::to_owned))
}

/// The Secret or ConfigMap volume mounted at the directory of `file`, and the key `file` names.
fn mounted_key<'a>(pod_spec: &'a Value, container: &Value, file: &str) -> (&'a Value, String) {
    let (dir, key) = file.rsplit_once('/').expect("an absolute file path");
    let mount = container["volumeMounts"]
        .as_array()
        .and_then(|ms| ms.iter().find(|m| m["mountPath"] == dir))
        .unwrap_or_else(|| {
            panic!(
                "{file}: nothing is mounted at {dir} in {}",
                container["name"]
            )
        });
    assert_eq!(mount["readOnly"], true, "{dir} must be mounted read-only");
    let volume = pod_spec["volumes"]
        .as_array()
        .and_then(|vs| vs.iter().find(|v| v["name"] == mount["name"]))
        .unwrap_or_else(|| panic!("no volume {} in the pod", mount["name"]));
    (volume, key.to_owned())
}

fn secret_value(resources: &[Value], name: &str, key: &str) -> String {
    let secret = find(resources, "Secret", name);
    secret["stringData"][key]
        .as_str()
        .unwrap_or_else(|| panic!("Secret {name} has no stringData.{key}"))
        .to_owned()
}

fn assert_locked_down(container: &Value, pod_spec: &Value) {
    let name = &container["name"];
    let sc = &container["securityContext"];
    let pod_sc = &pod_spec["securityContext"];
    let non_root = sc["runAsNonRoot"] == true || pod_sc["runAsNonRoot"] == true;
    assert!(non_root, "{name}: runAsNonRoot");
    assert_eq!(
        sc["allowPrivilegeEscalation"], false,
        "{name}: allowPrivilegeEscalation"
    );
    assert_eq!(
        sc["readOnlyRootFilesystem"], true,
        "{name}: readOnlyRootFilesystem"
    );
    assert_eq!(
        sc["capabilities"]["drop"],
        json!(["ALL"]),
        "{name}: capabilities"
    );
    let seccomp = sc["seccompProfile"]["type"]
        .as_str()
        .or(pod_sc["seccompProfile"]["type"].as_str());
    assert_eq!(seccomp, Some("RuntimeDefault"), "{name}: seccompProfile");
    for probe in ["readinessProbe", "livenessProbe"] {
        assert!(
            container[probe]["httpGet"]["path"].is_string(),
            "{name}: {probe}"
        );
    }
    assert!(
        container["resources"]["requests"]["cpu"].is_string(),
        "{name}: cpu request"
    );
    assert!(
        container["resources"]["limits"]["memory"].is_string(),
        "{name}: memory limit"
    );
}

fn labels_match(selector: &Value, labels: &Value) -> bool {
    selector
        .as_object()
        .is_some_and(|s| !s.is_empty() && s.iter().all(|(k, v)| &labels[k] == v))
}

#[test]
fn the_lists_of_kustomizations_and_components_are_complete() {
    let mut found = BTreeSet::new();
    let mut stack = vec![deploy()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.file_name().is_some_and(|n| n == "kustomization.yaml") {
                let text = std::fs::read_to_string(&path).unwrap();
                let doc = &kube::parse_documents(&text).unwrap()[0];
                let rel = path.parent().unwrap().strip_prefix(deploy()).unwrap();
                found.insert((
                    doc["kind"].as_str().unwrap().to_owned(),
                    rel.display().to_string(),
                ));
            }
        }
    }
    let expected: BTreeSet<(String, String)> = KUSTOMIZATIONS
        .iter()
        .map(|d| ("Kustomization".to_owned(), (*d).to_owned()))
        .chain(
            COMPONENTS
                .iter()
                .map(|d| ("Component".to_owned(), (*d).to_owned())),
        )
        .collect();
    assert_eq!(
        found, expected,
        "update KUSTOMIZATIONS/COMPONENTS so that every one is tested"
    );
}

#[test]
fn every_kustomization_passes_kubernetes_validate_and_the_crd_schemas() {
    let test = "every_kustomization_passes_kubernetes_validate_and_the_crd_schemas";
    let kustomize = Kustomize::real_or_builtin();
    let Some(validator) = KUBERNETES_VALIDATE.or_skip(test) else {
        return;
    };
    let schemas = CrdSchemas::new(deploy().join("schemas"));
    let scratch = ScratchDir::new("deploy").unwrap();
    let mut custom_seen = BTreeSet::new();
    for dir in KUSTOMIZATIONS {
        let yaml = kustomize
            .render(&deploy().join(dir))
            .unwrap_or_else(|e| panic!("{e:#}"));
        let resources = kube::parse_documents(&yaml).unwrap();
        assert!(!resources.is_empty(), "deploy/{dir} renders nothing");
        let file = scratch
            .write(&format!("{}.yaml", dir.replace('/', "-")), &yaml)
            .unwrap();
        let unknown = kube::kubernetes_validate(&validator, &file)
            .unwrap_or_else(|e| panic!("deploy/{dir}: {e:#}"));
        for kind in &unknown {
            assert!(
                CUSTOM_KINDS.contains(&(kind.kind.as_str(), kind.api_version.as_str())),
                "deploy/{dir}: kubernetes-validate has no schema for {kind:?}, and it is not a known custom resource"
            );
            custom_seen.insert(kind.clone());
        }
        let checked = schemas
            .validate(&validator, &resources, &unknown)
            .unwrap_or_else(|e| panic!("deploy/{dir}: {e:#}"));
        assert_eq!(
            checked,
            resources.iter().filter(|r| is_custom(r)).count(),
            "deploy/{dir}"
        );
    }
    let expected: BTreeSet<UnknownKind> = CUSTOM_KINDS
        .iter()
        .map(|(kind, api)| UnknownKind {
            kind: (*kind).into(),
            api_version: (*api).into(),
        })
        .collect();
    assert_eq!(
        custom_seen, expected,
        "every custom resource kind is used and checked"
    );
}

fn is_custom(resource: &Value) -> bool {
    CUSTOM_KINDS
        .iter()
        .any(|(kind, api)| resource["kind"] == *kind && resource["apiVersion"] == *api)
}

/// The validators are only worth something if they reject mistakes; each broken copy must fail.
#[test]
fn validators_reject_broken_manifests() {
    let test = "validators_reject_broken_manifests";
    let Some(validator) = KUBERNETES_VALIDATE.or_skip(test) else {
        return;
    };
    let base = render("base");
    let gateway = render("examples/gateway-api");
    let monitoring = render("monitoring");
    let scratch = ScratchDir::new("deploy-broken").unwrap();

    // A misspelled field in the picker Deployment.
    let mut deployment = find(&base, "Deployment", "inferpick-picker").clone();
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = json!({});
    let file = scratch
        .write(
            "deployment.yaml",
            serde_json::to_string(&deployment).unwrap(),
        )
        .unwrap();
    let err = kube::kubernetes_validate(&validator, &file)
        .unwrap_err()
        .to_string();
    assert!(err.contains("readinessProbes"), "{err}");

    let schemas = CrdSchemas::new(deploy().join("schemas"));
    let mut broken = Vec::new();
    let mut pool = find(&gateway, "InferencePool", "llama-3-1-8b").clone();
    pool["spec"]["endpointPickerRef"]
        .as_object_mut()
        .unwrap()
        .remove("port");
    broken.push((pool, "port"));
    let mut pool = find(&gateway, "InferencePool", "llama-3-1-8b").clone();
    pool["spec"]["extensionRef"] = json!({"name": "inferpick-picker"});
    broken.push((pool, "extensionRef"));
    let mut rule = find(&monitoring, "PrometheusRule", "inferpick").clone();
    rule["spec"]["groups"][0]["rules"][0]["record"] = json!("inferpick:both");
    broken.push((rule, "is valid under each of"));
    let mut monitor = find(&monitoring, "PodMonitor", "inferpick-agents").clone();
    monitor["spec"]["podMetricsEndpoints"][0]["interval"] = json!("15 seconds");
    broken.push((monitor, "15 seconds"));
    for (resource, expected) in broken {
        let err = schemas
            .validate(&validator, std::slice::from_ref(&resource), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains(expected), "expected {expected:?} in: {err}");
    }
}

/// The built-in renderer (used where no kustomize can be installed) renders exactly what the real
/// kustomize renders, for every kustomization of deploy/.
#[test]
fn builtin_renderer_matches_kustomize() {
    let real = match Kustomize::find() {
        Ok(Some(real)) => real,
        Ok(None) => {
            // Not a failure even under INFERPICK_REQUIRE_E2E: the built-in renderer is what runs
            // where kustomize is missing, and it is unit-tested on its own.
            eprintln!(
                "SKIP builtin_renderer_matches_kustomize: no kustomize or kubectl to compare with"
            );
            return;
        }
        Err(message) => panic!("{message}"),
    };
    for dir in KUSTOMIZATIONS {
        let path = deploy().join(dir);
        let expected = kustomize::sorted(real.resources(&path).unwrap());
        let actual = kustomize::sorted(Kustomize::Builtin.resources(&path).unwrap());
        assert_eq!(
            names(&actual),
            names(&expected),
            "deploy/{dir}: the same objects"
        );
        for (a, e) in actual.iter().zip(&expected) {
            assert_eq!(a, e, "deploy/{dir}: {} differs", describe(e));
        }
    }
}

#[test]
fn yaml_passes_yamllint_strict() {
    let Some(yamllint) = YAMLLINT.or_skip("yaml_passes_yamllint_strict") else {
        return;
    };
    // The Kubernetes manifests, CRD schemas and monitoring files; deploy/gateways/ holds gateway
    // configs that their own tests check.
    let paths: Vec<PathBuf> = [
        "deploy/base",
        "deploy/components",
        "deploy/examples",
        "deploy/monitoring",
        "dashboards",
    ]
    .iter()
    .map(|p| repo_root().join(p))
    .collect();
    let paths: Vec<&std::path::Path> = paths.iter().map(PathBuf::as_path).collect();
    kube::yamllint(&yamllint, &paths).unwrap_or_else(|e| panic!("{e:#}"));
}

#[test]
fn picker_runs_replicated_locked_down_and_probed() {
    let base = render("base");
    let deployment = find(&base, "Deployment", "inferpick-picker");
    assert!(
        deployment["spec"]["replicas"].as_u64().unwrap() >= 2,
        "2+ replicas, all serving"
    );
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["automountServiceAccountToken"], false);
    assert_eq!(pod["serviceAccountName"], "inferpick-picker");
    find(&base, "ServiceAccount", "inferpick-picker");
    let picker = container(pod, "picker");
    assert_locked_down(picker, pod);
    assert!(
        picker["image"]
            .as_str()
            .unwrap()
            .starts_with("ghcr.io/inferpick/inferpick-picker:")
    );
    let ports: BTreeSet<(String, u64)> = picker["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_owned(),
                p["containerPort"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        ports,
        BTreeSet::from([("http".into(), 9000), ("grpc".into(), 9002)])
    );

    let selector = &deployment["spec"]["selector"]["matchLabels"];
    let pod_labels = &deployment["spec"]["template"]["metadata"]["labels"];
    let pdb = find(&base, "PodDisruptionBudget", "inferpick-picker");
    assert!(labels_match(
        &pdb["spec"]["selector"]["matchLabels"],
        pod_labels
    ));
    assert!(pdb["spec"]["minAvailable"].as_u64().unwrap() >= 1);

    let api = find(&base, "Service", "inferpick-picker");
    assert!(labels_match(&api["spec"]["selector"], pod_labels));
    let api_ports: Vec<u64> = api["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["port"].as_u64().unwrap())
        .collect();
    assert_eq!(
        api_ports,
        [9000, 9002],
        "gateways: HTTP 9000 and gRPC ext_proc 9002"
    );
    let headless = find(&base, "Service", "inferpick-picker-headless");
    assert_eq!(
        headless["spec"]["clusterIP"], "None",
        "agents must resolve every replica"
    );
    assert!(labels_match(&headless["spec"]["selector"], pod_labels));
    assert_eq!(headless["spec"]["ports"][0]["port"], 9000);
    assert!(labels_match(selector, pod_labels));
}

/// The ConfigMap's picker.yaml is read by the real picker, with the token file where the
/// Deployment mounts the Secret.
#[test]
fn picker_config_in_the_configmap_is_accepted_by_the_picker() {
    use clap::Parser;
    let base = render("base");
    let deployment = find(&base, "Deployment", "inferpick-picker");
    let pod = &deployment["spec"]["template"]["spec"];
    let picker = container(pod, "picker");
    let config_path = flag(picker, "--config").expect("--config flag");
    let (config_volume, config_key) = mounted_key(pod, picker, &config_path);
    let config_map = find(
        &base,
        "ConfigMap",
        config_volume["configMap"]["name"].as_str().unwrap(),
    );
    let text = config_map["data"][&config_key]
        .as_str()
        .expect("the config file in the ConfigMap");
    let config: Value = serde_norway::from_str(text).unwrap();

    let token_path = config["auth"]["report_token_file"]
        .as_str()
        .expect("report_token_file");
    let (token_volume, token_key) = mounted_key(pod, picker, token_path);
    let secret_name = token_volume["secret"]["secretName"]
        .as_str()
        .expect("token from a Secret");
    let token = secret_value(&base, secret_name, &token_key);

    // Same file, with the paths moved into a scratch directory.
    let scratch = ScratchDir::new("picker-config").unwrap();
    let token_file = scratch.write("report-token", &token).unwrap();
    let local = text.replace(token_path, token_file.to_str().unwrap());
    let config_file = scratch.write("picker.yaml", local).unwrap();
    let args = inferpick_picker::Args::try_parse_from([
        "inferpick-picker".into(),
        format!("--config={}", config_file.display()),
    ])
    .unwrap();
    let settings = inferpick_picker::Settings::from_args(args)
        .unwrap_or_else(|e| panic!("the picker rejects deploy/base's config: {e}"));
    let debug = format!("{settings:?}");
    assert!(debug.contains("9002"), "grpc_listen from the file: {debug}");
}

#[test]
fn network_policy_admits_pushes_from_model_servers_and_picks_from_gateways() {
    let base = render("base");
    let policy = find(&base, "NetworkPolicy", "inferpick-picker");
    let deployment = find(&base, "Deployment", "inferpick-picker");
    assert!(labels_match(
        &policy["spec"]["podSelector"]["matchLabels"],
        &deployment["spec"]["template"]["metadata"]["labels"]
    ));
    assert_eq!(policy["spec"]["policyTypes"], json!(["Ingress", "Egress"]));
    assert_eq!(
        policy["spec"]["egress"],
        json!([]),
        "the picker opens no connections"
    );
    let rules = policy["spec"]["ingress"].as_array().unwrap();
    let ports_of = |rule: &Value| -> Vec<u64> {
        rule["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["port"].as_u64().unwrap())
            .collect()
    };
    let pushes = rules
        .iter()
        .find(|r| r["from"][0]["podSelector"]["matchLabels"]["inferpick.io/model-server"] == "true")
        .expect("a rule for model-server pods");
    assert_eq!(
        pushes["from"][0]["namespaceSelector"],
        json!({}),
        "model servers in any namespace"
    );
    assert_eq!(ports_of(pushes), [9000]);
    let picks = rules
        .iter()
        .find(|r| {
            r["from"][0]["namespaceSelector"]["matchLabels"]["inferpick.io/gateway"] == "true"
        })
        .expect("a rule for the gateway namespace");
    assert!(picks["from"][0]["podSelector"].is_null());
    assert_eq!(ports_of(picks), [9000, 9002]);
    for rule in rules {
        assert!(
            !rule["from"].as_array().unwrap().is_empty(),
            "no rule admits everyone: {rule}"
        );
    }
}

/// The sidecar in a rendered model-server Deployment: identity, picker, token, GPU access.
fn check_sidecar(resources: &[Value], deployment_name: &str, engine: &str, headless: &str) {
    let deployment = find(resources, "Deployment", deployment_name);
    let template = &deployment["spec"]["template"];
    assert_eq!(
        template["metadata"]["labels"]["inferpick.io/model-server"],
        "true"
    );
    let pod = &template["spec"];
    container(pod, engine);
    let agent = container(pod, "inferpick-agent");
    assert_locked_down(agent, pod);
    assert!(
        agent["image"]
            .as_str()
            .unwrap()
            .starts_with("ghcr.io/inferpick/inferpick-agent:")
    );
    for (var, path) in [
        ("POD_IP", "status.podIP"),
        ("POD_NAME", "metadata.name"),
        ("POD_NAMESPACE", "metadata.namespace"),
        ("NODE_NAME", "spec.nodeName"),
    ] {
        assert_eq!(
            env(agent, var)["valueFrom"]["fieldRef"]["fieldPath"],
            path,
            "{var}"
        );
    }
    assert_eq!(flag(agent, "--picker").as_deref(), Some("$(PICKER_URL)"));
    let picker_url = env(agent, "PICKER_URL")["value"].as_str().unwrap();
    assert_eq!(picker_url, format!("dns+http://{headless}:9000"));
    assert_eq!(
        flag(agent, "--engine-url").as_deref(),
        Some("$(ENGINE_URL)")
    );
    assert!(
        env(agent, "ENGINE_URL")["value"]
            .as_str()
            .unwrap()
            .starts_with("http://127.0.0.1:")
    );
    assert_eq!(flag(agent, "--listen").as_deref(), Some("0.0.0.0:9400"));
    assert_eq!(
        agent["ports"][0],
        json!({"name": "agent-metrics", "containerPort": 9400, "protocol": "TCP"})
    );
    assert_eq!(env(agent, "NVIDIA_VISIBLE_DEVICES")["value"], "all");
    assert_eq!(env(agent, "NVIDIA_DRIVER_CAPABILITIES")["value"], "utility");

    let token_file = flag(agent, "--token-file").expect("--token-file");
    let (volume, key) = mounted_key(pod, agent, &token_file);
    let secret = volume["secret"]["secretName"]
        .as_str()
        .expect("token from a Secret");
    assert!(!secret_value(resources, secret, &key).is_empty());

    let (sockets, _) = mounted_key(pod, agent, "/var/lib/kubelet/pod-resources/kubelet.sock");
    assert_eq!(
        sockets["hostPath"]["path"],
        "/var/lib/kubelet/pod-resources"
    );
}

#[test]
fn sidecar_is_injected_into_the_vllm_and_sglang_examples() {
    let headless = "inferpick-picker-headless.inferpick.svc";
    let vllm = render("examples/vllm");
    check_sidecar(&vllm, "vllm-llama-3-1-8b", "vllm", headless);
    let sglang = render("examples/sglang");
    check_sidecar(&sglang, "sglang-qwen2-5-7b", "sglang", headless);
    let engine = container(
        &find(&sglang, "Deployment", "sglang-qwen2-5-7b")["spec"]["template"]["spec"],
        "sglang",
    );
    assert!(
        args(engine).contains(&"--enable-metrics".to_owned()),
        "SGLang serves /metrics only with it"
    );
}

#[test]
fn agents_and_pickers_share_the_report_token() {
    let base = render("base");
    let vllm = render("examples/vllm");
    assert_eq!(
        secret_value(&base, "inferpick-report-token", "report-token"),
        secret_value(&vllm, "inferpick-agent-token", "report-token"),
        "the sidecar component's token must equal the picker's, or every push gets 401"
    );
}

#[test]
fn gateway_api_pool_points_at_the_pickers_grpc_port() {
    let all = render("examples/gateway-api");
    let kinds = by_kind(&all);
    assert!(
        !kinds.contains_key("Namespace"),
        "the namespace is the user's: {:?}",
        names(&all)
    );
    let namespaces: BTreeSet<&str> = all
        .iter()
        .filter_map(|r| r["metadata"]["namespace"].as_str())
        .collect();
    assert_eq!(
        namespaces,
        BTreeSet::from(["llm"]),
        "pool, picker and model servers share a namespace"
    );

    let pool = find(&all, "InferencePool", "llama-3-1-8b");
    let picker_ref = &pool["spec"]["endpointPickerRef"];
    assert_eq!(picker_ref["kind"], "Service");
    let service = find(&all, "Service", picker_ref["name"].as_str().unwrap());
    let port = service["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["port"] == picker_ref["port"]["number"])
        .expect("endpointPickerRef.port is a port of the picker Service");
    assert_eq!(port["name"], "grpc");
    assert_eq!(port["port"], 9002);

    let model_server = find(&all, "Deployment", "vllm-llama-3-1-8b");
    let template = &model_server["spec"]["template"];
    assert!(labels_match(
        &pool["spec"]["selector"]["matchLabels"],
        &template["metadata"]["labels"]
    ));
    let engine = container(&template["spec"], "vllm");
    assert_eq!(
        pool["spec"]["targetPorts"][0]["number"],
        engine["ports"][0]["containerPort"]
    );
    check_sidecar(
        &all,
        "vllm-llama-3-1-8b",
        "vllm",
        "inferpick-picker-headless.llm.svc",
    );

    let route = find(&all, "HTTPRoute", "llama-3-1-8b");
    let backend = &route["spec"]["rules"][0]["backendRefs"][0];
    assert_eq!(backend["group"], "inference.networking.k8s.io");
    assert_eq!(backend["kind"], "InferencePool");
    assert_eq!(backend["name"], pool["metadata"]["name"]);
    // The base and the component each bring a token Secret; both end up here, equal.
    assert_eq!(
        secret_value(&all, "inferpick-report-token", "report-token"),
        secret_value(&all, "inferpick-agent-token", "report-token")
    );
}

#[test]
fn monitors_select_agents_and_pickers_and_keep_their_endpoint_label() {
    let monitoring = render("monitoring");
    let base = render("base");
    let vllm = render("examples/vllm");

    let pod_monitor = find(&monitoring, "PodMonitor", "inferpick-agents");
    assert_eq!(pod_monitor["spec"]["namespaceSelector"]["any"], true);
    let model_server = &find(&vllm, "Deployment", "vllm-llama-3-1-8b")["spec"]["template"];
    assert!(labels_match(
        &pod_monitor["spec"]["selector"]["matchLabels"],
        &model_server["metadata"]["labels"]
    ));
    let endpoint = &pod_monitor["spec"]["podMetricsEndpoints"][0];
    let agent = container(&model_server["spec"], "inferpick-agent");
    assert_eq!(endpoint["port"], agent["ports"][0]["name"]);
    assert_eq!(endpoint["path"], "/metrics");
    assert_eq!(
        endpoint["honorLabels"], true,
        "else the operator renames `endpoint` to `exported_endpoint`"
    );

    let service_monitor = find(&monitoring, "ServiceMonitor", "inferpick-picker");
    let selector = &service_monitor["spec"]["selector"]["matchLabels"];
    let selected: Vec<&Value> = base
        .iter()
        .filter(|r| r["kind"] == "Service" && labels_match(selector, &r["metadata"]["labels"]))
        .collect();
    assert_eq!(
        selected.len(),
        1,
        "exactly one picker Service, so each pod is scraped once"
    );
    assert_eq!(selected[0]["metadata"]["name"], "inferpick-picker");
    let endpoint = &service_monitor["spec"]["endpoints"][0];
    assert!(
        selected[0]["spec"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == endpoint["port"])
    );
    assert_eq!(endpoint["honorLabels"], true);
    assert_eq!(
        service_monitor["spec"]["namespaceSelector"]["matchNames"],
        json!([find(&base, "Deployment", "inferpick-picker")["metadata"]["namespace"]])
    );
}

#[test]
fn prometheus_rule_carries_the_alert_rules_file() {
    let monitoring = render("monitoring");
    let rule = find(&monitoring, "PrometheusRule", "inferpick");
    let file = std::fs::read_to_string(repo_root().join("dashboards/alerts.yaml")).unwrap();
    let rules: Value = serde_norway::from_str(&file).unwrap();
    assert_eq!(
        rule["spec"]["groups"], rules["groups"],
        "deploy/monitoring/prometheusrule.yaml spec.groups must equal dashboards/alerts.yaml groups"
    );
}

#[test]
fn dashboards_configmap_is_generated_from_dashboards() {
    let dashboards = repo_root().join("dashboards");
    let copies = deploy().join("monitoring/dashboards");
    let mut json_files: Vec<String> = std::fs::read_dir(&dashboards)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".json"))
        .collect();
    json_files.sort();
    assert_eq!(
        json_files,
        ["inferpick-fleet.json", "inferpick-picker.json"]
    );
    for name in &json_files {
        assert_eq!(
            std::fs::read(dashboards.join(name)).unwrap(),
            std::fs::read(copies.join(name)).unwrap_or_default(),
            "deploy/monitoring/dashboards/{name} differs: cp dashboards/{name} deploy/monitoring/dashboards/"
        );
    }
    let monitoring = render("monitoring");
    let config_map = find(&monitoring, "ConfigMap", "inferpick-dashboards");
    assert_eq!(config_map["metadata"]["labels"]["grafana_dashboard"], "1");
    let data = config_map["data"].as_object().unwrap();
    assert_eq!(data.keys().cloned().collect::<Vec<_>>(), json_files);
    for name in &json_files {
        let original = std::fs::read_to_string(dashboards.join(name)).unwrap();
        assert_eq!(
            data[name].as_str().unwrap(),
            original,
            "{name} in the ConfigMap"
        );
    }
}

/// What can be checked of the Dockerfiles without a Docker engine: they build an existing
/// package's binary, copy it into a non-root runtime stage, and run nothing in that stage.
#[test]
fn dockerfiles_build_the_binaries_into_a_non_root_image_without_a_shell() {
    let ignore = std::fs::read_to_string(repo_root().join(".dockerignore")).unwrap();
    assert!(
        ignore
            .lines()
            .any(|l| l.trim() == "/target" || l.trim() == "**/target")
    );
    for (crate_dir, binary) in [("agent", "inferpick-agent"), ("picker", "inferpick-picker")] {
        let path = repo_root().join(crate_dir).join("Dockerfile");
        let text = std::fs::read_to_string(&path).unwrap();
        let manifest =
            std::fs::read_to_string(repo_root().join(crate_dir).join("Cargo.toml")).unwrap();
        assert!(
            manifest.contains(&format!("name = \"{binary}\"")),
            "{crate_dir} builds {binary}"
        );
        let stages: Vec<&str> = text.split("\nFROM ").skip(1).collect();
        assert_eq!(
            stages.len(),
            2,
            "{}: a build stage and a runtime stage",
            path.display()
        );
        let (build, runtime) = (stages[0], stages[1]);
        assert!(
            build.contains(&format!("cargo build --release --locked -p {binary}")),
            "{build}"
        );
        assert!(
            runtime.starts_with("gcr.io/distroless/cc-debian12:nonroot"),
            "{runtime}"
        );
        assert!(
            !runtime.contains("\nRUN "),
            "the runtime stage has no shell to run anything"
        );
        assert!(runtime.contains(&format!(
            "COPY --from=build /out/{binary} /usr/local/bin/{binary}"
        )));
        assert!(runtime.contains("\nUSER 65532:65532"));
        assert!(runtime.contains(&format!("ENTRYPOINT [\"/usr/local/bin/{binary}\"]")));
    }
}
