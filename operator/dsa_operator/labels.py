"""Label and annotation keys shared by the planner (router selectors) and the renderer."""

MODEL = "serving.dsa.dev/model"
ROLE = "serving.dsa.dev/role"
GROUP = "serving.dsa.dev/group"
COMPONENT = "app.kubernetes.io/component"
MANAGED_BY = "app.kubernetes.io/managed-by"
# Set by the StatefulSet controller on every pod (Kubernetes 1.28+): the node rank.
POD_INDEX = "apps.kubernetes.io/pod-index"
# The SGLang router reads a prefill pod's bootstrap port from this annotation.
BOOTSTRAP_PORT = "sglang.ai/bootstrap-port"

# On every engine pod: its group, unique in the cluster (placement.group_key); spec.placement.exclusive
# keeps other groups' pods out of a group's topology domain by it.
GROUP_KEY = "serving.dsa.dev/group-key"
# Kueue: the LocalQueue a workload is submitted to (on each engine StatefulSet, spec.placement.queueName).
QUEUE_NAME = "kueue.x-k8s.io/queue-name"
# Kueue topology-aware scheduling: the node label whose one domain must hold the whole pod set.
REQUIRED_TOPOLOGY = "kueue.x-k8s.io/podset-required-topology"


def rank0_selector(model: str, role: str) -> dict[str, str]:
    """Selects the rank-0 pods of a role: non-zero ranks answer /health too, never route to them."""
    return {MODEL: model, ROLE: role, POD_INDEX: "0"}
