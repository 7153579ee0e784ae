{{/*
The operator's least privileges: exactly the rules of operator/rbac.yaml (tests/chart compares them),
which tests/operator/test_rbac_cluster.py proves sufficient by running a whole run with only these.
All are namespaced (kopf's cluster-wide scanning is off), so they go into a ClusterRole when every
namespace is watched, or into a Role in operator.watchNamespace when only that one is.
*/}}
{{- define "codeground.rbac.rules" -}}
# Watch the API objects; read one fresh before each reconcile; list runs to size a Sandbox's pool.
- apiGroups: [codeground.dev]
  resources: [trainingruns, sandboxes]
  verbs: [get, list, watch]
# Status is the operator's only write to them (no finalizers, no kopf state annotations).
- apiGroups: [codeground.dev]
  resources: [trainingruns/status, sandboxes/status]
  verbs: [patch]
# One Job per stage attempt; patch = suspend/resume; deletecollection = ttlSecondsAfterFinished.
- apiGroups: [batch]
  resources: [jobs]
  verbs: [list, watch, create, patch, deletecollection]
# list/watch: termination messages and the progress annotation. get/patch are not used by the
# operator itself: RBAC lets it grant the `codeground-stage` Role (get/patch pods) only if it holds them.
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch, patch]
# The run spec ConfigMap: read to compare, created once, replaced when an accepted spec changes.
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get, create, update]
# Headless Services of multi-node stages and Sandbox pools (create-if-absent).
- apiGroups: [""]
  resources: [services]
  verbs: [create]
# The per-namespace `codeground-stage` ServiceAccount, Role and RoleBinding (create-if-absent).
- apiGroups: [""]
  resources: [serviceaccounts]
  verbs: [create]
- apiGroups: [rbac.authorization.k8s.io]
  resources: [roles, rolebindings]
  verbs: [create]
# Sandbox pools: read status, create, patch replicas and template.
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch, create, patch]
# Default-deny NetworkPolicy of each pool (create-if-absent).
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [create]
# Events on every transition (the operator's and kopf's own warnings).
- apiGroups: [""]
  resources: [events]
  verbs: [create]
{{- end -}}
