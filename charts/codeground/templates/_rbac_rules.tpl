{{/*
The operator's least privileges, kept identical to operator/rbac.yaml (tests/chart checks it).
"cluster" rules are for cluster-scoped reads kopf needs; "namespaced" rules go into a ClusterRole
when every namespace is watched, or into a Role in operator.watchNamespace when only that one is watched.
*/}}
{{- define "codeground.rbac.clusterRules" -}}
# kopf discovers the CRDs it serves.
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  verbs: [get, list, watch]
# kopf follows namespaces when it watches several.
- apiGroups: [""]
  resources: [namespaces]
  verbs: [get, list, watch]
{{- end -}}

{{- define "codeground.rbac.namespacedRules" -}}
- apiGroups: [codeground.dev]
  resources: [trainingruns, sandboxes]
  verbs: [get, list, watch, patch]
- apiGroups: [codeground.dev]
  resources: [trainingruns/status, sandboxes/status]
  verbs: [get, patch]
- apiGroups: [batch]
  resources: [jobs]
  verbs: [get, list, watch, create, patch, delete, deletecollection]
# patch: stage pods report progress on their own Pod through a Role the operator creates, and RBAC
# lets the operator grant only what it holds itself.
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch, patch]
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get, list, watch, create, update, patch, delete]
- apiGroups: [""]
  resources: [services]
  verbs: [get, list, watch, create, patch, delete]
# The per-namespace `codeground-stage` ServiceAccount, Role and RoleBinding.
- apiGroups: [""]
  resources: [serviceaccounts]
  verbs: [get, create]
- apiGroups: [rbac.authorization.k8s.io]
  resources: [roles, rolebindings]
  verbs: [get, create]
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [get, create, patch, delete]
- apiGroups: ["", events.k8s.io]
  resources: [events]
  verbs: [create, patch]
{{- end -}}
