"""The cluster launchers in cluster/ are valid for the Ray that vgray installs, and safe.

* aws.yaml, gcp.yaml, onprem.yaml pass Ray's own cluster-config checks: the raw file against the
  JSON schema Ray ships (ray/autoscaler/ray-schema.json), then the same prepare_config +
  validate_config that `ray up` runs before it contacts any cloud.
* The KubeRay manifests have the expected kinds, a head group, a GPU worker group and only
  ClusterIP services.
* No file opens anything but SSH to the whole internet, and none turns Ray token auth off.

No network, no cluster: everything here is file parsing and Ray's pure-Python validation.
"""

import copy
import json
import re
from pathlib import Path

import pytest
import yaml

jsonschema = pytest.importorskip("jsonschema")  # a dependency of ray itself, never added by vgray
autoscaler = pytest.importorskip("ray.autoscaler")
from ray.autoscaler._private.util import prepare_config, validate_config  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CLUSTER = ROOT / "cluster"
LAUNCHERS = ["aws.yaml", "gcp.yaml", "onprem.yaml"]
KUBERAY = ["kuberay-raycluster.yaml", "kuberay-rayjob.yaml"]
ALL_YAML = sorted(p.name for p in CLUSTER.glob("*.y*ml"))
WORLD = {"0.0.0.0/0", "::/0"}


def load(name):
    return yaml.safe_load((CLUSTER / name).read_text())


def load_all(name):
    return [doc for doc in yaml.safe_load_all((CLUSTER / name).read_text()) if doc is not None]


def walk(node):
    """Every dict and string inside a parsed YAML document."""
    yield node
    if isinstance(node, dict):
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


def test_the_expected_files_exist():
    assert set(LAUNCHERS + KUBERAY) <= set(ALL_YAML)
    assert (CLUSTER / "README.md").is_file()


# --- Ray's cluster-config schema -------------------------------------------------------------


@pytest.mark.parametrize("name", LAUNCHERS)
def test_launcher_matches_rays_json_schema(name):
    schema = json.loads((Path(autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(load(name), schema)


@pytest.mark.parametrize("name", LAUNCHERS)
def test_launcher_passes_rays_validate_config_as_ray_up_does(name):
    # ray up: _bootstrap_config -> prepare_config (merge the provider's defaults.yaml, on-prem node
    # types) -> validate_config (schema + head type + min/max workers). Both are local-only.
    config = prepare_config(copy.deepcopy(load(name)))
    validate_config(config)
    assert config["head_node_type"] in config["available_node_types"]


def test_validator_is_not_a_rubber_stamp():
    bad = copy.deepcopy(load("aws.yaml"))
    bad["dashboard_port"] = 8265  # not a cluster-config field
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(bad))


@pytest.mark.parametrize("name", ["aws.yaml", "gcp.yaml"])
def test_cloud_launchers_have_a_head_and_autoscaling_gpu_workers(name):
    config = load(name)
    types = config["available_node_types"]
    head = config["head_node_type"]
    assert types[head]["resources"].get("GPU", 0) == 0
    gpu_workers = [t for key, t in types.items() if key != head and t["resources"].get("GPU", 0) > 0]
    assert gpu_workers
    for worker in gpu_workers:
        assert worker["min_workers"] == 0 and worker["max_workers"] >= 1
    assert config["max_workers"] >= max(t["max_workers"] for t in gpu_workers)


def test_gcp_gpu_workers_request_accelerators():
    types = load("gcp.yaml")["available_node_types"]
    for key, node_type in types.items():
        if node_type["resources"].get("GPU"):
            node = node_type["node_config"]
            # A2/G2 machine types carry their GPUs; n1 needs guestAccelerators.
            assert node.get("guestAccelerators") or not node["machineType"].startswith("n1-"), key
            assert node["scheduling"]["onHostMaintenance"] == "TERMINATE", key


def test_onprem_is_a_local_provider():
    provider = load("onprem.yaml")["provider"]
    assert provider["type"] == "local" and provider["head_ip"] and provider["worker_ips"]


@pytest.mark.parametrize("name", LAUNCHERS)
def test_launcher_sets_vgray_datasets_and_installs_vgray(name):
    config = load(name)
    setup = " ".join(config["setup_commands"])
    assert re.search(r"export VGRAY_DATASETS=/\S+", setup)
    assert "pip install" in setup and "~/vgray" in setup
    assert config["file_mounts"]["~/vgray"] == "."


# --- KubeRay -----------------------------------------------------------------------------------


def ray_cluster_spec(name):
    docs = load_all(name)
    rays = [d for d in docs if d["apiVersion"] == "ray.io/v1"]
    assert len(rays) == 1
    doc = rays[0]
    if doc["kind"] == "RayCluster":
        return doc, doc["spec"]
    assert doc["kind"] == "RayJob"
    return doc, doc["spec"]["rayClusterSpec"]


def test_kuberay_kinds():
    assert ray_cluster_spec("kuberay-raycluster.yaml")[0]["kind"] == "RayCluster"
    job, _ = ray_cluster_spec("kuberay-rayjob.yaml")
    assert job["kind"] == "RayJob"
    assert job["spec"]["shutdownAfterJobFinishes"] is True
    assert re.search(r"\bvgray sweep sweeps/\S+\.yaml\b.*--storage /mnt/results", job["spec"]["entrypoint"])


@pytest.mark.parametrize("name", KUBERAY)
def test_kuberay_head_and_gpu_worker_groups(name):
    _, spec = ray_cluster_spec(name)
    head = spec["headGroupSpec"]
    assert head["template"]["spec"]["containers"]
    assert head.get("serviceType", "ClusterIP") == "ClusterIP"
    gpu_groups = []
    for group in spec["workerGroupSpecs"]:
        for container in group["template"]["spec"]["containers"]:
            limits = container.get("resources", {}).get("limits", {})
            if int(limits.get("nvidia.com/gpu", 0)) > 0:
                gpu_groups.append(group)
    assert gpu_groups
    for group in gpu_groups:
        assert group["minReplicas"] <= group["maxReplicas"] and group["maxReplicas"] >= 1


@pytest.mark.parametrize("name", KUBERAY)
def test_kuberay_mounts_shared_volumes_for_datasets_and_results(name):
    docs = load_all(name)
    claims = {d["metadata"]["name"]: d for d in docs if d["kind"] == "PersistentVolumeClaim"}
    _, spec = ray_cluster_spec(name)
    pod_specs = [spec["headGroupSpec"]["template"]["spec"]]
    pod_specs += [g["template"]["spec"] for g in spec["workerGroupSpecs"]]
    for pod in pod_specs:
        used = {v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
        assert used and used <= set(claims)
        for container in pod["containers"]:
            mounts = {m["mountPath"] for m in container["volumeMounts"]}
            assert {"/mnt/datasets", "/mnt/results"} <= mounts
            env = {e["name"]: e.get("value") for e in container.get("env", [])}
            assert env.get("VGRAY_DATASETS") == "/mnt/datasets"
    for claim in claims.values():
        assert "ReadWriteMany" in claim["spec"]["accessModes"]  # shared by every node


def test_kuberay_files_declare_the_same_claims():
    def claims(name):
        return {d["metadata"]["name"]: d for d in load_all(name) if d["kind"] == "PersistentVolumeClaim"}

    assert claims("kuberay-raycluster.yaml") == claims("kuberay-rayjob.yaml")


@pytest.mark.parametrize("name", KUBERAY)
def test_kuberay_never_publishes_a_service(name):
    for node in walk(load_all(name)):
        if isinstance(node, dict):
            assert node.get("serviceType") not in {"LoadBalancer", "NodePort"}
            if node.get("kind") == "Service":
                assert node["spec"].get("type", "ClusterIP") == "ClusterIP"
            assert node.get("kind") != "Ingress"
            assert node.get("enableIngress") is not True


# --- security: ports and auth --------------------------------------------------------------------


def cidrs_in(node):
    return {s.strip() for s in walk(node) if isinstance(s, str)}


def world_open_rules(doc):
    """(rule, ports) for every firewall-like rule in doc that admits the whole internet.

    Understands AWS IpPermissions (FromPort/ToPort/IpProtocol + IpRanges/Ipv6Ranges), GCP firewall
    rules (sourceRanges + allowed[].ports) and Kubernetes NetworkPolicy ipBlocks (+ ports)."""
    rules = []
    for node in walk(doc):
        if not isinstance(node, dict):
            continue
        if "IpRanges" in node or "Ipv6Ranges" in node or "FromPort" in node:
            ranges = cidrs_in(node.get("IpRanges", [])) | cidrs_in(node.get("Ipv6Ranges", []))
            if ranges & WORLD:
                if str(node.get("IpProtocol", "-1")) == "-1":
                    rules.append((node, "all"))
                else:
                    rules.append((node, (node.get("FromPort"), node.get("ToPort"))))
        elif "sourceRanges" in node:
            if cidrs_in(node["sourceRanges"]) & WORLD:
                ports = [p for allowed in node.get("allowed", []) for p in allowed.get("ports", ["all"])]
                rules.append((node, tuple(ports) or "all"))
        elif "ipBlock" in node and node["ipBlock"].get("cidr") in WORLD:
            rules.append((node, "see NetworkPolicy ports"))
    return rules


def is_ssh_only(ports):
    return ports in {(22, 22), ("22",)}


@pytest.mark.parametrize("name", ALL_YAML)
def test_nothing_but_ssh_is_open_to_the_internet(name):
    for doc in load_all(name):
        for rule, ports in world_open_rules(doc):
            assert is_ssh_only(ports), f"{name}: {rule} opens {ports} to the internet"


@pytest.mark.parametrize("name", ALL_YAML)
def test_no_world_cidr_hides_outside_a_parsed_rule(name):
    # Any 0.0.0.0/0 in the data (comments are not data) must belong to an SSH-only rule above.
    parsed = [rule for doc in load_all(name) for rule, _ in world_open_rules(doc)]
    for doc in load_all(name):
        for node in walk(doc):
            if isinstance(node, str) and node.strip() in WORLD:
                assert parsed, f"{name}: {node} outside any firewall rule"


def test_port_checker_catches_an_open_dashboard():
    aws = copy.deepcopy(load("aws.yaml"))
    aws["provider"]["security_group"]["IpPermissions"] = [
        {"FromPort": 8265, "ToPort": 8265, "IpProtocol": "tcp", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}
    ]
    assert not all(is_ssh_only(p) for _, p in world_open_rules(aws))
    gcp_rule = {"name": "x", "sourceRanges": ["0.0.0.0/0"], "allowed": [{"IPProtocol": "tcp", "ports": ["6379"]}]}
    assert not all(is_ssh_only(p) for _, p in world_open_rules(gcp_rule))


def test_guide_firewall_commands_open_only_ssh_to_the_internet():
    """The clusters guide's gcloud commands (docs/guides/clusters.md) open SSH only to the world."""
    guide = (CLUSTER.parent / "docs" / "guides" / "clusters.md").read_text().replace("\\\n", " ")
    creates = [line for line in guide.splitlines() if "firewall-rules create" in line]
    assert creates, "the clusters guide shows how to create the firewall rules"
    for line in creates:
        if re.search(r"--source-ranges=\S*(0\.0\.0\.0/0|::/0)", line):
            assert re.search(r"--allow=tcp:22(\s|$)", line), line


@pytest.mark.parametrize("name", ["aws.yaml"])
def test_aws_security_group_adds_no_extra_rules(name):
    # Ray itself adds the intra-cluster rule and SSH; anything here would be on top of that.
    assert load(name)["provider"]["security_group"]["IpPermissions"] == []


@pytest.mark.parametrize("name", LAUNCHERS)
def test_dashboard_binds_to_localhost_on_vm_heads(name):
    starts = " ".join(load(name)["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in starts
    assert "--dashboard-host=0.0.0.0" not in starts


AUTH_OFF = re.compile(r"RAY_AUTH_MODE\s*[=:]\s*['\"]?(?!token\b)\w+", re.I)


@pytest.mark.parametrize("name", ALL_YAML)
def test_no_yaml_disables_ray_auth(name):
    text = (CLUSTER / name).read_text()
    data = "\n".join(line.split(" #")[0] for line in text.splitlines() if not line.lstrip().startswith("#"))
    assert not AUTH_OFF.search(data), f"{name} sets RAY_AUTH_MODE to something other than token"
    for doc in load_all(name):
        for node in walk(doc):
            if isinstance(node, dict):
                if node.get("name") == "RAY_AUTH_MODE":  # Kubernetes env entry
                    assert node.get("value") == "token", name
                if "authOptions" in node:
                    assert node["authOptions"].get("mode") == "token", name
                for key, value in node.items():
                    if key == "RAY_AUTH_MODE":
                        assert value == "token", name


def test_auth_checker_catches_disabling():
    assert AUTH_OFF.search("export RAY_AUTH_MODE=disabled")
    assert AUTH_OFF.search("RAY_AUTH_MODE: disabled")
    assert not AUTH_OFF.search("RAY_AUTH_MODE=token ray start --head")


@pytest.mark.parametrize("name", LAUNCHERS)
def test_vm_launchers_force_token_auth_on_every_node(name):
    config = load(name)
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = [c for c in config[key] if "ray start" in c]
        assert start and all("RAY_AUTH_MODE=token ray start" in c for c in start), key
    assert "~/.vgray-ray-auth" in config["file_mounts"]  # the token reaches every node


@pytest.mark.parametrize("name", KUBERAY)
def test_kuberay_enables_token_auth(name):
    _, spec = ray_cluster_spec(name)
    assert spec["authOptions"]["mode"] == "token"
    major, minor = (int(x) for x in spec["rayVersion"].split(".")[:2])
    assert (major, minor) >= (2, 52)  # KubeRay honours authOptions only from Ray 2.52
