"""`dsa-operator plan`: the JSON contract other tools read, exit codes, clean errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import ROOT

PP_CP = str(ROOT / "examples" / "17-pp-cp.yaml")


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dsa_operator", *args],
        capture_output=True,
        text=True,
        input=stdin,
        check=False,
    )


def test_json_contract_for_pp_cp():
    r = run("plan", "-f", PP_CP, "-o", "json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    pods = out["pods"]
    assert len(pods) == 2
    for pod in pods:
        assert set(pod) >= {"role", "group", "rank", "argv", "env"}
        assert all(isinstance(a, str) for a in pod["argv"])
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in pod["env"].items())
        assert pod["env"]["SGLANG_PP_LAYER_PARTITION"] == "30,31"
    argvs = [p["argv"] for p in pods]
    assert [a[a.index("--node-rank") + 1] for a in argvs] == ["0", "1"]
    assert len({a[a.index("--dist-init-addr") + 1] for a in argvs}) == 1
    assert out["roles"][0]["nodesPerGroup"] == 2
    assert out["roles"][0]["kernels"] == {
        "prefill": "flashmla_sparse",
        "decode": "fa3",
        "kvCacheDtype": "bf16",
    }


def test_version_override_changes_spelling():
    out = json.loads(run("plan", "-f", PP_CP, "-o", "json", "--sglang-version", "0.5.23").stdout)
    argv = out["pods"][0]["argv"]
    assert not [a for a in argv if a.startswith("--nsa-")]
    i = argv.index("--enable-prefill-cp")
    assert argv[i + 1 : i + 3] == ["--cp-strategy", "interleave"]
    old = json.loads(run("plan", "-f", PP_CP, "-o", "json", "--sglang-version", "0.5.12").stdout)
    assert "--enable-nsa-prefill-context-parallel" in old["pods"][0]["argv"]


def test_yaml_and_text_outputs():
    y = yaml.safe_load(run("plan", "-f", PP_CP, "-o", "yaml").stdout)
    assert len(y["pods"]) == 2
    t = run("plan", "-f", PP_CP).stdout
    assert "rank 0:" in t and "rank 1:" in t and "python3 -m sglang.launch_server" in t


def test_stdin_json():
    doc = json.dumps(yaml.safe_load(Path(PP_CP).read_text()))
    r = run("plan", "-f", "-", "-o", "json", stdin=doc)
    assert r.returncode == 0 and json.loads(r.stdout)["pods"]


def test_invalid_spec_names_fields_without_traceback(tmp_path):
    bad = yaml.safe_load(Path(PP_CP).read_text())
    bad["spec"]["serving"]["parallelism"]["tp"] = 3
    bad["spec"]["decode"] = {"parallelism": {"tp": 8}}
    f = tmp_path / "bad.yaml"
    f.write_text(yaml.safe_dump(bad))
    r = run("plan", "-f", str(f))
    assert r.returncode == 1
    assert "spec.serving.parallelism.tp" in r.stderr and "spec.serving" in r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""


def test_unreadable_and_malformed_files(tmp_path):
    r = run("plan", "-f", str(tmp_path / "missing.yaml"))
    assert r.returncode != 0 and "cannot read" in r.stderr and "Traceback" not in r.stderr
    f = tmp_path / "x.yaml"
    f.write_text("spec: [unclosed")
    r = run("plan", "-f", str(f))
    assert r.returncode != 0 and "not valid YAML" in r.stderr and "Traceback" not in r.stderr


def test_rules_lists_every_rule_with_its_source():
    from dsa_operator.rules import RULES

    r = run("rules", "-o", "json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert [row["rule"] for row in rows] == [x.name for x in RULES]
    for row in rows:
        assert (
            row["protects"] and row["sources"] and row["action"] in ("refuse", "override", "warn", "operator")
        )
        assert row["sglangVersions"].startswith("0.5.")
    pp_mtp = next(row for row in rows if row["rule"] == "pp_without_mtp")
    assert any("0.5.12" in s and "check_server_args" in s for s in pp_mtp["sources"])
    assert any("0.5.23" in s and "validation_hook.py" in s for s in pp_mtp["sources"])


def test_rules_for_one_version_and_as_text():
    old = {row["rule"] for row in json.loads(run("rules", "--sglang-version", "0.5.12", "-o", "json").stdout)}
    new = {row["rule"] for row in json.loads(run("rules", "--sglang-version", "0.5.23", "-o", "json").stdout)}
    assert "moe_dense_tp_size_one" in old - new and "no_zigzag_on_deepseek_v32" in new - old
    text = run("rules").stdout
    assert "cp_moe_layout  [override, SGLang 0.5.9-0.5.23]" in text
    assert "source:   0.5.12 sglang/srt/server_args.py ServerArgs._handle_model_specific_adjustments" in text
    bad = run("rules", "--sglang-version", "0.4.0")
    assert (
        bad.returncode == 2 and "unsupported SGLang version" in bad.stderr and "Traceback" not in bad.stderr
    )


def test_text_plan_shows_what_sglang_sets_itself():
    out = run("plan", "-f", PP_CP, "--sglang-version", "0.5.12").stdout
    assert "SGLang sets itself: moe_dense_tp_size=1 page_size=64" in out
