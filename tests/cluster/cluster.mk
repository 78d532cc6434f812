# Test control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok, helm).
# Included by the top-level Makefile, which defines PYTHON (?= .venv/bin/python).
#   make cluster-bins   build the pinned binaries from Go modules, or reuse ~/.cache/dsa-operator/bin
#   make cluster-up     start in the background; kubeconfig .cluster/kubeconfig, kubectl/helm .cluster/bin/
#   make cluster-status
#   make cluster-down   stop it, leaving no process behind
PYTHON ?= .venv/bin/python
CLUSTER_NODES ?= 4

.PHONY: cluster-bins cluster-up cluster-down cluster-status

cluster-bins:
	bash tests/cluster/build.sh

cluster-up: cluster-bins
	$(PYTHON) tests/cluster/harness.py up --nodes=$(CLUSTER_NODES)

cluster-status:
	$(PYTHON) tests/cluster/harness.py status

cluster-down:
	$(PYTHON) tests/cluster/harness.py down
