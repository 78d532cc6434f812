# Test cluster: control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok,
# helm) and real nodes (kubelet, containerd, CoreDNS).
# Included by the top-level Makefile, which defines PYTHON (?= .venv/bin/python).
#   make cluster-bins   build the pinned binaries from Go modules, or reuse ~/.cache/dsa-operator/bin
#   make lws-bin        the same plus LeaderWorkerSet (DSA_BUILD_LWS=1), for benchmarks; not built by default
#   make cluster-up     start in the background; kubeconfig .cluster/kubeconfig, kubectl/helm .cluster/bin/
#                       with REAL_NODES (default 3) real kubelet+containerd nodes; REAL_NODES=0: kwok only
#   make cluster-load-image IMAGES="x.tar ..."   import image archives into the real nodes
#   make cluster-status
#   make cluster-down   stop it, leaving no process behind
PYTHON ?= .venv/bin/python
CLUSTER_NODES ?= 4
REAL_NODES ?= 3
# nvidia.com/gpu per GPU-like node (real and kwok)
REAL_GPUS_PER_NODE ?= 8

.PHONY: cluster-bins lws-bin cluster-deps cluster-up cluster-down cluster-status cluster-load-image

cluster-bins:
	bash tests/cluster/build.sh

lws-bin:
	DSA_BUILD_LWS=1 bash tests/cluster/build.sh

cluster-up: cluster-bins
	$(PYTHON) tests/cluster/harness.py up --nodes=$(CLUSTER_NODES) --real-nodes=$(REAL_NODES) --gpus-per-node=$(REAL_GPUS_PER_NODE)

cluster-deps:  ## Debian packages of the real nodes (root)
	bash tests/cluster/install-deps.sh

# make cluster-load-image IMAGES="a.tar b.tar": import into every real node's containerd
cluster-load-image:
	$(PYTHON) tests/cluster/harness.py load-image $(IMAGES)

cluster-status:
	$(PYTHON) tests/cluster/harness.py status

cluster-down:
	$(PYTHON) tests/cluster/harness.py down
