{{/* Names and labels shared by every object of the chart. */}}

{{- define "pysonic.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "pysonic.fullname" -}}
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

{{/* Object names: fullname plus a component suffix, within 63 characters. */}}
{{- define "pysonic.server" -}}{{ include "pysonic.fullname" . | trunc 56 | trimSuffix "-" }}-server{{- end -}}
{{- define "pysonic.lb" -}}{{ include "pysonic.fullname" . | trunc 60 | trimSuffix "-" }}-lb{{- end -}}

{{- define "pysonic.selectorLabels" -}}
app.kubernetes.io/name: {{ include "pysonic.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "pysonic.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "pysonic.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* The gpu vendor block, or an empty dict for CPU-only servers. */}}
{{- define "pysonic.gpu" -}}
{{- $vendor := .Values.server.gpu.vendor -}}
{{- if $vendor -}}
{{- if not (has $vendor (list "nvidia" "amd")) -}}
{{- fail (printf "server.gpu.vendor must be \"\", nvidia or amd, not %q" $vendor) -}}
{{- end -}}
{{- toYaml (index .Values.server.gpu $vendor) -}}
{{- else -}}
{}
{{- end -}}
{{- end -}}

{{/*
The autoscaling (and admission) query: the average queue time per model execution, in ms,
over this release's servers. Idle servers execute nothing, and 0/0 is NaN in PromQL; the
"> 0" filter turns that into "no sample" and "or vector(0)" into 0, so idle reads as 0 ms.
*/}}
{{- define "pysonic.queueLatencyQuery" -}}
{{- $a := .Values.autoscaling -}}
{{- if $a.query -}}
{{- $a.query -}}
{{- else -}}
{{- $sel := $a.metricSelector | default (printf "namespace=%q,pod=~%q" .Release.Namespace (printf "%s-.*" (include "pysonic.server" .))) -}}
{{- if $a.model -}}{{- $sel = printf "%s,model=%q" $sel $a.model -}}{{- end -}}
{{- printf "sum(rate(nv_inference_queue_duration_us{%s}[%s])) / (sum(rate(nv_inference_exec_count{%s}[%s])) * 1000 > 0) or vector(0)" $sel $a.window $sel $a.window -}}
{{- end -}}
{{- end -}}

{{- define "pysonic.admissionThreshold" -}}
{{- .Values.loadBalancer.envoy.admission.threshold | default .Values.autoscaling.threshold -}}
{{- end -}}
