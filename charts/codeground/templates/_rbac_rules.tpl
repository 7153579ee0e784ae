{{/*
The operator's least privileges, kept identical to operator/rbac.yaml (tests/chart checks it).
"cluster" rules are for cluster-scoped reads kopf needs; "namespaced" rules go into a ClusterRole
when every namespace is watched, or into a Role per namespace in operator.watchNamespaces.
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
  verbs: [get, list, watch, patch, update]
- apiGroups: [codeground.dev]
  resources: [trainingruns/status, sandboxes/status]
  verbs: [get, patch, update]
- apiGroups: [batch]
  resources: [jobs]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch]
- apiGroups: [""]
  resources: [configmaps, services]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [apps]
  resources: [deployments/scale]
  verbs: [get, patch, update]
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: ["", events.k8s.io]
  resources: [events]
  verbs: [create, patch]
{{- end -}}
