{{/* haproxy.cfg: h2c frontend for gRPC, leastconn over the headless Service's pods. */}}
{{- define "pysonic.haproxyConfig" -}}
{{- $lb := .Values.loadBalancer -}}
{{- $h := $lb.haproxy -}}
{{- $s := .Values.server -}}
{{- $hc := $lb.healthCheck -}}
global
  log stdout format raw local0
  {{- if $h.maxconn }}
  maxconn {{ $h.maxconn }}
  {{- else }}
  # maxconn: derived from the container's file-descriptor limit
  {{- end }}

defaults
  mode http
  log global
  option httplog
  timeout connect 2s
  timeout client 1h
  timeout server {{ if eq $lb.routeTimeout "0s" }}1h{{ else }}{{ $lb.routeTimeout }}{{ end }}
  {{- if $lb.retries.enabled }}
  # L7 retries on another server (inference is idempotent); HAProxy cannot read gRPC trailers,
  # so it retries what fails before an answer, not grpc-status UNAVAILABLE
  retries {{ $lb.retries.numRetries }}
  option redispatch 1
  retry-on conn-failure empty-response response-timeout
  {{- end }}

resolvers k8s
  parse-resolv-conf
  hold valid {{ $h.resolveHoldValid }}
  accepted_payload_size 8192

frontend grpc
  bind :{{ $lb.service.grpcPort }} proto h2
  default_backend pysonic_servers

frontend stats
  bind :{{ $h.statsPort }}
  http-request use-service prometheus-exporter if { path /metrics }
  stats enable
  stats uri /stats

backend pysonic_servers
  balance leastconn
  option httpchk
  # the servers' HTTP port speaks HTTP/1.1: without this the checks inherit "proto h2" and fail
  http-check connect proto h1
  http-check send meth GET uri {{ $hc.path }}
  http-check expect status 200
  default-server check port {{ $s.ports.http }} inter {{ $hc.interval }} fall {{ $hc.unhealthyThreshold }} rise {{ $hc.healthyThreshold }} resolvers k8s init-addr none proto h2
  server-template srv 1-{{ $h.maxServers }} {{ include "pysonic.server" . }}-headless.{{ .Release.Namespace }}.svc.cluster.local:{{ $s.ports.grpc }}
{{- end -}}
