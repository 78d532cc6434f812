"""The pure parts of the real-node harness: address plan, node specs, rendered configuration,
and the OCI archives containerd imports (no machine changes, no cluster)."""

from __future__ import annotations

import hashlib
import io
import ipaddress
import json
import tarfile
from pathlib import Path

import pytest

from tests.cluster import oci, realnet, realnode


def test_address_plan_keeps_everything_on_one_bridge():
    plan = realnet.NetPlan(index=7, nodes=3)
    assert plan.bridge == "dsabr7"
    assert [plan.node_ip(i) for i in range(3)] == ["10.213.7.1", "10.213.7.2", "10.213.7.3"]
    # The kubernetes Service's ClusterIP is the first address of the Service CIDR, and on the bridge.
    assert plan.api_ip == str(ipaddress.ip_network(plan.service_cidr)[1]) == "10.214.7.1"
    assert f"{plan.api_ip}/24" in plan.bridge_addresses()
    ranges = [plan.pod_range(i) for i in range(3)]
    addrs = [
        set(range(int(ipaddress.ip_address(lo)), int(ipaddress.ip_address(hi)) + 1)) for lo, hi in ranges
    ]
    assert not (addrs[0] & addrs[1] or addrs[1] & addrs[2] or addrs[0] & addrs[2])
    node_ips = {int(ipaddress.ip_address(plan.node_ip(i))) for i in range(3)}
    assert not node_ips & set().union(*addrs)
    assert all(ipaddress.ip_address(a) in plan.node_subnet for r in ranges for a in r)


@pytest.mark.parametrize(
    ("index", "nodes", "message"), [(0, 3, "outside 1..200"), (1, 0, "between 1 and 15")]
)
def test_address_plan_rejects_bad_sizes(index, nodes, message):
    with pytest.raises(realnet.NetError, match=message):
        realnet.NetPlan(index, nodes)


def test_gpu_like_and_cpu_nodes():
    specs = realnode.node_specs(
        realnet.NetPlan(2, 3),
        Path("/x"),
        1,
        gpus=8,
        gpu_product="NVIDIA-H200",
        zones=("zone-a",),
        rack_label="topology.dsa-operator.io/rack",
    )
    assert [(s.name, s.gpu, s.taints) for s in specs] == [
        ("real-gpu-0", True, (realnode.GPU_TAINT,)),
        ("real-gpu-1", True, (realnode.GPU_TAINT,)),
        ("real-cpu-0", False, ()),
    ]
    assert specs[0].labels["nvidia.com/gpu.count"] == "8"
    assert all(s.labels[realnode.NODE_KIND_LABEL] == "real" for s in specs)
    assert "nvidia.com/gpu.product" not in specs[2].labels
    assert len({s.cgroup_root for s in specs}) == 3


def test_rendered_configuration_never_routes_or_masquerades(tmp_path):
    plan = realnet.NetPlan(1, 2)
    node = realnode.node_specs(plan, tmp_path, 1, gpus=8, gpu_product="x", zones=("z",), rack_label="r")[0]
    bridge = realnode.cni_config(node, plan)["plugins"][0]
    assert (bridge["isGateway"], bridge["ipMasq"], bridge["bridge"]) == (False, False, "dsabr1")
    toml = realnode.containerd_config(node, plan, "localhost/dsa/pause:3.10.1")
    assert "restrict_oom_score_adj = true" in toml and str(node.socket) in toml
    kubelet = realnode.kubelet_config(node, plan, tmp_path / "ca.crt", (tmp_path / "c", tmp_path / "k"), 1234)
    assert kubelet["makeIPTablesUtilChains"] is False and kubelet["clusterDNS"] == [plan.dns_ip]
    script = realnode.namespace_script(node)
    assert "mount --bind" in script and "/proc/sys/net/ipv4/ip_forward" in script
    assert "forward" not in realnode.corefile(plan, tmp_path / "kc", 1, 2).replace("ip_forward", "")


def test_oci_archive_names_and_layers(tmp_path):
    binary = tmp_path / "pause"
    binary.write_bytes(b"\x7fELF fake")
    layer = tmp_path / "layer.tar"
    layer.write_bytes(oci.layer_from_files([oci.FileSpec("/bin/pause", binary, 0o755)]))
    out = tmp_path / "img.tar"
    digest = oci.write_archive(out, "localhost/dsa/t:1", [layer], entrypoint=["/bin/pause"])
    assert oci.archive_image_names(out) == ["localhost/dsa/t:1"]
    with tarfile.open(out) as tar:
        index = json.load(tar.extractfile("index.json"))
        manifest_bytes = tar.extractfile(f"blobs/sha256/{digest[7:]}").read()
        assert "sha256:" + hashlib.sha256(manifest_bytes).hexdigest() == digest
        manifest = json.loads(manifest_bytes)
        config = json.load(tar.extractfile(f"blobs/sha256/{manifest['config']['digest'][7:]}"))
    assert index["manifests"][0]["digest"] == digest
    assert config["config"]["Entrypoint"] == ["/bin/pause"]
    assert config["rootfs"]["diff_ids"] == [manifest["layers"][0]["digest"]]
    # deterministic: the same inputs give the same image
    assert (
        oci.write_archive(tmp_path / "again.tar", "localhost/dsa/t:1", [layer], entrypoint=["/bin/pause"])
        == digest
    )


def test_docker_archive_names_and_bad_archives(tmp_path):
    docker = tmp_path / "d.tar"
    with tarfile.open(docker, "w") as tar:
        data = json.dumps([{"RepoTags": ["localhost/a:1", "b:2", "c/d:3"], "Layers": []}]).encode()
        info = tarfile.TarInfo("manifest.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    assert oci.archive_image_names(docker) == ["localhost/a:1", "docker.io/library/b:2", "docker.io/c/d:3"]
    empty = tmp_path / "e.tar"
    with tarfile.open(empty, "w"):
        pass
    with pytest.raises(ValueError, match="neither an OCI image layout"):
        oci.archive_image_names(empty)
    with pytest.raises(ValueError, match="expected /dest=src"):
        oci.parse_file_spec("pause")
