#!/usr/bin/env bash
# Build (or reuse) the test cluster's binaries from Go modules: the control plane, and the real
# nodes' kubelet, containerd (+ ctr, runc shim), CoreDNS and pause image.
#
#   tests/cluster/build.sh            # build what is missing, link into .cluster/bin/
#   FORCE=1 tests/cluster/build.sh    # rebuild everything
#   DSA_BUILD_LWS=1 tests/cluster/build.sh   # (or: build.sh lws) also LeaderWorkerSet, which only
#                                            # benchmarks use; the default build (CI) leaves it out
#
# Binaries are cached by version in ${DSA_CLUSTER_BIN_CACHE:-~/.cache/dsa-operator/bin}
# as <component>-<version>; a second run builds nothing. .cluster/bin/<component> are symlinks.
# Each tool is built from its own small wrapper module under tests/cluster/modules/<name>/
# (go.mod/go.sum with a `tool` directive), so each gets the dependency set its upstream
# release tested instead of one merged MVS build list.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
# shellcheck source=versions.env
source "$HERE/versions.env"

for arg in "$@"; do
  case "$arg" in
    lws) DSA_BUILD_LWS=1 ;;
    *) printf '[cluster-bins] unknown argument %s (known: lws)\n' "$arg" >&2; exit 2 ;;
  esac
done

CACHE="${DSA_CLUSTER_BIN_CACHE:-$HOME/.cache/dsa-operator/bin}"
LINKDIR="${DSA_CLUSTER_LINK_DIR:-$ROOT/.cluster/bin}"
mkdir -p "$CACHE" "$LINKDIR"

export GOTOOLCHAIN="${GOTOOLCHAIN:-local}"
export CGO_ENABLED=0
export GOFLAGS="${GOFLAGS:--p=2} -mod=readonly"

log() { printf '[cluster-bins] %s\n' "$*" >&2; }
need() { [[ "${FORCE:-0}" == 1 || ! -x "$CACHE/$1-$2" ]]; }
link() { ln -sfn "$CACHE/$1-$2" "$LINKDIR/$1"; }

# go.mod must pin the same versions as versions.env
check_mod() { # dir module version
  local got
  got="$(cd "$HERE/modules/$1" && go list -m -f '{{.Version}}' "$2")"
  if [[ "$got" != "$3" ]]; then
    log "version mismatch: modules/$1 has $2 $got, versions.env says $3"; exit 1
  fi
}

start=$(date +%s)
built=()

# ---- kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, kubelet -----------
K8S_BINS=(kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet)
k8s_missing=()
for b in "${K8S_BINS[@]}"; do need "$b" "$K8S_VERSION" && k8s_missing+=("$b"); done
if ((${#k8s_missing[@]})); then
  check_mod kubernetes k8s.io/kubernetes "$K8S_VERSION"
  v="${K8S_VERSION#v}"; major="${v%%.*}"; rest="${v#*.}"; minor="${rest%%.*}"
  ld="-s -w"
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=$major -X $p.gitMinor=$minor"
    ld+=" -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
  done
  tmp="$(mktemp -d "$CACHE/.build.XXXXXX")"
  pkgs=(); for b in "${k8s_missing[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$b"); done
  log "building ${k8s_missing[*]} $K8S_VERSION (this takes minutes on a cold cache)"
  (cd "$HERE/modules/kubernetes" && go build -trimpath -ldflags "$ld" -o "$tmp/" "${pkgs[@]}")
  for b in "${k8s_missing[@]}"; do mv -f "$tmp/$b" "$CACHE/$b-$K8S_VERSION"; built+=("$b"); done
  rmdir "$tmp"
fi
for b in "${K8S_BINS[@]}"; do link "$b" "$K8S_VERSION"; done

# ---- generic single-binary builder -------------------------------------------------------
build_one() { # name version moddir module pkg ldflags
  local name=$1 ver=$2 dir=$3 mod=$4 pkg=$5 ld=$6
  if need "$name" "$ver"; then
    check_mod "$dir" "$mod" "$ver"
    log "building $name $ver"
    local tmp; tmp="$(mktemp "$CACHE/.$name.XXXXXX")"
    (cd "$HERE/modules/$dir" && go build -trimpath -ldflags "-s -w $ld" -o "$tmp" "$pkg")
    mv -f "$tmp" "$CACHE/$name-$ver"; built+=("$name")
  fi
  link "$name" "$ver"
}

build_one etcd "$ETCD_VERSION" etcd go.etcd.io/etcd/server/v3 go.etcd.io/etcd/server/v3 \
  "-X go.etcd.io/etcd/api/v3/version.GitSHA=$ETCD_VERSION"

kv="${K8S_VERSION#v}"
build_one kwok "$KWOK_VERSION" kwok sigs.k8s.io/kwok sigs.k8s.io/kwok/cmd/kwok \
  "-X sigs.k8s.io/kwok/pkg/consts.Version=${KWOK_VERSION#v} -X sigs.k8s.io/kwok/pkg/consts.KubeVersion=$kv"

hv="${HELM_VERSION#v}"; hmaj="${kv%%.*}"; hr="${kv#*.}"; hmin="${hr%%.*}"
build_one helm "$HELM_VERSION" helm helm.sh/helm/v3 helm.sh/helm/v3/cmd/helm \
  "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean \
   -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=$hmaj -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$hmin \
   -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=$hmaj -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$hmin"

# ---- containerd, ctr, containerd-shim-runc-v2 (one module, one build) ------------------------
CTRD_BINS=(containerd ctr containerd-shim-runc-v2)
ctrd_missing=()
for b in "${CTRD_BINS[@]}"; do need "$b" "$CONTAINERD_VERSION" && ctrd_missing+=("$b"); done
if ((${#ctrd_missing[@]})); then
  check_mod containerd github.com/containerd/containerd/v2 "$CONTAINERD_VERSION"
  tmp="$(mktemp -d "$CACHE/.build.XXXXXX")"
  pkgs=(); for b in "${ctrd_missing[@]}"; do pkgs+=("github.com/containerd/containerd/v2/cmd/$b"); done
  log "building ${ctrd_missing[*]} $CONTAINERD_VERSION"
  # The tags leave out snapshotters that need cgo or kernel features the nodes do not use.
  (cd "$HERE/modules/containerd" && go build -trimpath -tags "no_btrfs no_devmapper no_zfs" \
    -ldflags "-s -w -X github.com/containerd/containerd/v2/version.Version=$CONTAINERD_VERSION" \
    -o "$tmp/" "${pkgs[@]}")
  for b in "${ctrd_missing[@]}"; do mv -f "$tmp/$b" "$CACHE/$b-$CONTAINERD_VERSION"; built+=("$b"); done
  rmdir "$tmp"
fi
for b in "${CTRD_BINS[@]}"; do link "$b" "$CONTAINERD_VERSION"; done

build_one coredns "$COREDNS_VERSION" coredns github.com/coredns/coredns dsa-operator/tests/cluster/coredns ""

# ---- Kueue (gang admission, topology-aware scheduling), and its CRDs and webhook manifests -----
build_one kueue "$KUEUE_VERSION" kueue sigs.k8s.io/kueue sigs.k8s.io/kueue/cmd/kueue \
  "-X sigs.k8s.io/kueue/pkg/version.GitVersion=$KUEUE_VERSION"
kdir="$CACHE/kueue-manifests-$KUEUE_VERSION"
if [[ "${FORCE:-0}" == 1 || ! -f "$kdir/webhook.yaml" ]]; then
  src="$(cd "$HERE/modules/kueue" && go mod download -json sigs.k8s.io/kueue | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')"
  tmp="$(mktemp -d "$CACHE/.kueue-manifests.XXXXXX")"
  cp "$src"/config/components/crd/bases/*.yaml "$tmp/"
  cp "$src/config/components/webhook/manifests.yaml" "$tmp/webhook.yaml"
  chmod 644 "$tmp"/*.yaml; rm -rf "$kdir"; mv "$tmp" "$kdir"; built+=(kueue-manifests)
fi
ln -sfn "$kdir" "$LINKDIR/kueue-manifests"

# ---- LeaderWorkerSet, its CRD and webhook manifests: only with DSA_BUILD_LWS=1 (`build.sh lws`) --
# Only benchmarks run it (Cluster(lws=True)); CI's build stays as it was.
if [[ "${DSA_BUILD_LWS:-0}" == 1 ]]; then
  # The module's source (manifests below) and, for GitCommit as upstream's Makefile sets it, the
  # release tag's commit from the proxy's .info record ("unknown" where a proxy leaves it out).
  read -r lws_src lws_commit < <(cd "$HERE/modules/lws" && go mod download -json sigs.k8s.io/lws | python3 -c '
import json, sys
m = json.load(sys.stdin)
print(m["Dir"], (json.load(open(m["Info"])).get("Origin") or {}).get("Hash", "unknown"))')
  build_one lws "$LWS_VERSION" lws sigs.k8s.io/lws sigs.k8s.io/lws/cmd \
    "-X sigs.k8s.io/lws/pkg/version.GitVersion=$LWS_VERSION -X sigs.k8s.io/lws/pkg/version.GitCommit=$lws_commit \
     -X sigs.k8s.io/lws/pkg/version.BuildDate=1970-01-01T00:00:00Z"
  ldir="$CACHE/lws-manifests-$LWS_VERSION"
  if [[ "${FORCE:-0}" == 1 || ! -f "$ldir/webhook.yaml" ]]; then
    tmp="$(mktemp -d "$CACHE/.lws-manifests.XXXXXX")"
    cp "$lws_src"/config/crd/bases/*.yaml "$tmp/"
    # manifests.yaml as controller-gen wrote it: the pod webhooks' objectSelector is added by a
    # kustomize patch upstream, so the harness sets it itself (Cluster._lws_webhooks).
    cp "$lws_src/config/webhook/manifests.yaml" "$tmp/webhook.yaml"
    chmod 644 "$tmp"/*.yaml; rm -rf "$ldir"; mv "$tmp" "$ldir"; built+=(lws-manifests)
  fi
  ln -sfn "$ldir" "$LINKDIR/lws-manifests"
fi

# ---- pause: build/pause/linux/pause.c of the Kubernetes module, static, as an OCI archive ---
if need pause "$PAUSE_VERSION"; then
  src="$(cd "$HERE/modules/kubernetes" && go list -m -f '{{.Dir}}' k8s.io/kubernetes)/build/pause/linux/pause.c"
  [[ -f "$src" ]] || (cd "$HERE/modules/kubernetes" && go mod download k8s.io/kubernetes)
  log "building pause $PAUSE_VERSION (gcc -static)"
  tmp="$(mktemp "$CACHE/.pause.XXXXXX")"
  gcc -Os -Wall -Werror -static -DVERSION="v$PAUSE_VERSION-k8s-$K8S_VERSION" -o "$tmp" "$src"
  strip "$tmp"; chmod 755 "$tmp"
  mv -f "$tmp" "$CACHE/pause-$PAUSE_VERSION"; built+=(pause)
  rm -f "$CACHE/pause-image-$PAUSE_VERSION.tar"
fi
link pause "$PAUSE_VERSION"
if [[ "${FORCE:-0}" == 1 || ! -f "$CACHE/pause-image-$PAUSE_VERSION.tar" ]]; then
  python3 "$HERE/oci.py" "$CACHE/pause-image-$PAUSE_VERSION.tar" --name "localhost/dsa/pause:$PAUSE_VERSION" \
    --file "/pause=$CACHE/pause-$PAUSE_VERSION:0755" --entrypoint /pause --user 65535:65535 >/dev/null
  built+=(pause-image)
fi
ln -sfn "$CACHE/pause-image-$PAUSE_VERSION.tar" "$LINKDIR/pause-image.tar"

log "done in $(( $(date +%s) - start ))s; built: ${built[*]:-nothing (all cached)}; bins in $LINKDIR"
