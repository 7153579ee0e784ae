{{/* Name of the chart, overridable. */}}
{{- define "codeground.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Full name of the operator's objects: <release>-codeground, or the release name if it has the chart name. */}}
{{- define "codeground.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "codeground.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "codeground.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: codeground
{{- end -}}

{{- define "codeground.operatorSelector" -}}
app.kubernetes.io/name: {{ include "codeground.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "codeground.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "codeground.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* image reference: repository:tag, the tag defaulting to the chart's appVersion. Call with (list $img $) */}}
{{- define "codeground.image" -}}
{{- $img := index . 0 -}}{{- $root := index . 1 -}}
{{- printf "%s:%s" $img.repository (default $root.Chart.AppVersion $img.tag) -}}
{{- end -}}

{{/* Names of the MinIO objects. */}}
{{- define "codeground.minio.fullname" -}}
{{- printf "%s-minio" (include "codeground.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The Secret of S3 keys the chart holds or names for runs in the release namespace ("" = none). */}}
{{- define "codeground.artifactsSecret" -}}
{{- if .Values.artifacts.credentials.existingSecret -}}
{{- .Values.artifacts.credentials.existingSecret -}}
{{- else if .Values.artifacts.credentials.create -}}
{{- printf "%s-s3" (include "codeground.fullname" .) -}}
{{- else if .Values.minio.enabled -}}
{{- include "codeground.minio.fullname" . -}}
{{- end -}}
{{- end -}}

{{/* The S3 endpoint runs should use ("" = AWS). */}}
{{- define "codeground.artifactsEndpoint" -}}
{{- if .Values.artifacts.endpoint -}}
{{- .Values.artifacts.endpoint -}}
{{- else if .Values.minio.enabled -}}
{{- printf "http://%s.%s.svc:9000" (include "codeground.minio.fullname" .) .Release.Namespace -}}
{{- end -}}
{{- end -}}
