{{/* Names */}}
{{- define "dsa-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "dsa-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "dsa-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "dsa-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "dsa-operator.webhookService" -}}
{{- printf "%s-webhook" (include "dsa-operator.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "dsa-operator.webhookSecret" -}}
{{- printf "%s-webhook-tls" (include "dsa-operator.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Where the webhook's TLS comes from: helm (genCA at install, kept on upgrade), certManager (a
Certificate; cainjector fills the caBundle) or operator (the operator makes the Secret and the
caBundle itself: no install-time step, so plain manifests carry it). webhook.certManager.enabled
is the older spelling of tlsSource=certManager.
*/}}
{{- define "dsa-operator.webhookTLS" -}}
{{- $src := default "helm" .Values.webhook.tlsSource }}
{{- if (default dict .Values.webhook.certManager).enabled }}
{{- if eq $src "operator" }}
{{- fail "webhook.certManager.enabled=true contradicts webhook.tlsSource=operator: set only webhook.tlsSource" }}
{{- end }}
{{- $src = "certManager" }}
{{- end }}
{{- $src }}
{{- end }}

{{- define "dsa-operator.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s:%s@%s" .Values.image.repository $tag .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{- define "dsa-operator.leaderElect" -}}
{{- if gt (int .Values.replicas) 1 }}true{{- end }}
{{- end }}

{{/* Labels */}}
{{- define "dsa-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "dsa-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "dsa-operator.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "dsa-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: dsa-operator
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
RBAC in the namespaces holding DSAModels: exactly what the operator's code does there.
  - dsamodels list/watch: kopf's event handler (and the webhook needs no RBAC); get: each
    reconcile reads the model afresh (Kube.get_model), never a watch's possibly older copy.
  - dsamodels/status patch: Kube.patch_status.
  - dsamodels/finalizers update: children carry ownerReferences with blockOwnerDeletion=true;
    clusters running the OwnerReferencesPermissionEnforcement admission plugin require it.
  - pods list/watch: kopf's pod event handler and Kube.list; deletecollection:
    Kube.delete_pods (a group restarts as a whole); delete: Kube.delete_pod (finishing a
    restart recorded before the operator died); get: the router Role the operator creates
    grants pods get/list/watch, and RBAC only lets it create (and bind) a Role whose rights it
    holds itself (no escalate/bind).
  - statefulsets, deployments list/watch: kopf event handlers and Kube.list; statefulsets patch
    also writes each group's record (Kube.patch_annotation).
  - children (configmaps, serviceaccounts, services, roles, rolebindings, statefulsets,
    deployments): list (Kube.list of its children), create + patch (server-side apply is a
    PATCH that creates when absent, which the API server also authorizes as create), delete
    (Kube.delete: garbage of an old plan, removed groups).
  - events create: Kube.event and kopf's own (warning) events, core v1.
  - dsaevaluations get/list/watch, dsaevaluations/status patch: the evaluations' loops, as for
    DSAModels. jobs list/watch/create/patch/delete: an evaluation's or a canary's Job (created by
    server-side apply; patch also records its result; delete: a superseded run). pods/log get:
    the progress line of a running evaluation (the last lines only).
*/}}
{{- define "dsa-operator.namespacedRules" -}}
- apiGroups: [serving.dsa.dev]
  resources: [dsamodels]
  verbs: [get, list, watch]
- apiGroups: [serving.dsa.dev]
  resources: [dsamodels/status]
  verbs: [patch]
- apiGroups: [serving.dsa.dev]
  resources: [dsamodels/finalizers]
  verbs: [update]
- apiGroups: [serving.dsa.dev]
  resources: [dsaevaluations]
  verbs: [get, list, watch]
- apiGroups: [serving.dsa.dev]
  resources: [dsaevaluations/status]
  verbs: [patch]
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch, delete, deletecollection]
- apiGroups: [""]
  resources: [pods/log]
  verbs: [get]
- apiGroups: [batch]
  resources: [jobs]
  verbs: [list, watch, create, patch, delete]
- apiGroups: [apps]
  resources: [statefulsets, deployments]
  verbs: [list, watch, create, patch, delete]
- apiGroups: [""]
  resources: [configmaps, serviceaccounts, services]
  verbs: [list, watch, create, patch, delete]
- apiGroups: [rbac.authorization.k8s.io]
  resources: [roles, rolebindings]
  verbs: [list, watch, create, patch, delete]
- apiGroups: [""]
  resources: [events]
  verbs: [create]
{{- if .Values.kueue.readWorkloads }}
# Kueue's Workloads of queued groups (spec.placement.queueName): read only while a group waits for
# admission, to quote Kueue's reason in the DSAModel's status.
- apiGroups: [kueue.x-k8s.io]
  resources: [workloads]
  verbs: [get]
{{- end }}
{{- end }}

{{/*
Cluster-scoped reads of kopf itself: it scans and watches CustomResourceDefinitions (to
start serving DSAModels when the CRD appears, settings.scanning) and, when watching named
namespaces, lists/watches Namespaces to notice them come and go. Cluster-wide it needs no
namespace reads. Nodes get (read only, by name): the node of a pod that is not ready or is
being deleted, to tell a lost node (Kube.get_node; observe.lost_node). With
webhook.tlsSource=operator: get and patch of the release's one ValidatingWebhookConfiguration
(webhook_provision.py sets its caBundle).
*/}}
{{- define "dsa-operator.clusterRules" -}}
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  verbs: [list, watch]
- apiGroups: [""]
  resources: [nodes]
  verbs: [get]
{{- if and .Values.webhook.enabled (eq (include "dsa-operator.webhookTLS" .) "operator") }}
- apiGroups: [admissionregistration.k8s.io]
  resources: [validatingwebhookconfigurations]
  resourceNames: [{{ include "dsa-operator.fullname" . | quote }}]
  verbs: [get, patch]
{{- end }}
{{- if .Values.watchNamespaces }}
- apiGroups: [""]
  resources: [namespaces]
  verbs: [list, watch]
{{- end }}
{{- end }}

{{- define "dsa-operator.probeTiming" -}}
{{- range $k := list "initialDelaySeconds" "periodSeconds" "timeoutSeconds" "failureThreshold" }}
{{- if hasKey $ $k }}
{{ $k }}: {{ index $ $k }}
{{- end }}
{{- end }}
{{- end }}
