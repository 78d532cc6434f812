# dsa-operator: the README's two commands are `make demo` and `make test`.
SHELL := /bin/bash
PYTHON_BOOT ?= python3.11
VENV ?= .venv
PYTHON ?= $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: venv lint test test-unit chaos sglang-envs crd images demo demo-down bench-scale clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON_BOOT) -m venv $(VENV)
	$(PYTHON) -m pip install -q --upgrade pip==25.3
	$(PYTHON) -m pip install -q -e '.[test,runtime]'
	touch $@

venv: $(VENV)/.installed

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

crd: venv  ## regenerate crds/ from the API models, and the chart's copies and deploy/
	$(VENV)/bin/dsa-operator crd > crds/serving.dsa.dev_dsamodels.yaml
	$(VENV)/bin/dsa-operator crd --kind DSAEvaluation > crds/serving.dsa.dev_dsaevaluations.yaml
	cp crds/*.yaml charts/dsa-operator/crds/
	bash charts/render-deploy.sh

sglang-envs: venv  ## install the pinned SGLang releases' parsers (cached)
	$(PYTHON) tests/sglang_compat/envs.py ensure all

# The operator image and the runtime's simulator variant, from the repo's own Dockerfiles with
# buildah (no registry): cached by input hash under ~/.cache/dsa-operator/images, refs and
# archives in .images/index.json, loaded into a running test cluster. Needs buildah and
# mmdebstrap (images/install-deps.sh) and root.
images: venv
	$(PYTHON) -m tests.images build

test-unit: venv
	$(PYTHON) -m pytest tests/operator $(PYTEST_ARGS)

# Everything: unit, SGLang real-parser, runtime, control-plane integration, fault injection (one
# kill run per scenario here; `make chaos` runs 20 for its figures).
test: export DSA_CHAOS_RUNS ?= 4
test: venv lint sglang-envs cluster-bins
	$(PYTHON) -m pytest tests $(PYTEST_ARGS)

# Fault injection alone, its figures shown (also part of `make test`): the operator SIGKILLed at
# random points (DSA_CHAOS_RUNS, DSA_CHAOS_SEED), a leader failover, kube-apiserver and etcd
# restarts, a silently dropped connection. Figures: docs/benchmarks.md.
chaos: export DSA_CHAOS_RUNS ?= 20
chaos: venv cluster-bins
	$(PYTHON) -m pytest tests/chaos -s -p no:cacheprovider $(PYTEST_ARGS)

# The main job, on real nodes: the control plane with three real nodes (two GPU-like, one CPU;
# no kwok nodes), the images built and loaded, the operator installed by its Helm chart with
# its webhook, an invalid DSAModel refused, a PD DSAModel on the engine simulator until Ready,
# and a chat completion through its endpoint. Left running; `make demo-down` stops everything.
demo: CLUSTER_NODES = 0
demo: REAL_NODES = 3
demo: REAL_GPUS_PER_NODE = 16
demo: venv images cluster-up
	$(PYTHON) scripts/demo.py up

demo-down: cluster-down

# Scale, side by side with LeaderWorkerSet (not a test; figures in docs/benchmarks.md): 50, 100,
# 250 and 500 DSAModels and the same groups as LeaderWorkerSets on kwok nodes, one run (about
# 50 minutes on 2 cores). BENCH_ARGS, e.g. --steps 50 --controllers ours; see --help.
BENCH_ARGS ?=
bench-scale: venv cluster-bins lws-bin
	$(PYTHON) -m benchmarks.scale $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis

-include tests/cluster/cluster.mk
