{{/* Envoy's bootstrap (envoy.yaml): one HTTP/2 listener for gRPC in front of the servers. */}}
{{- define "pysonic.envoyConfig" -}}
{{- $lb := .Values.loadBalancer -}}
{{- $e := $lb.envoy -}}
{{- $s := .Values.server -}}
{{- $prom := urlParse $e.admission.prometheusUrl -}}
{{- $promHost := splitList ":" $prom.host | first -}}
{{- $promPort := splitList ":" $prom.host | rest | first | default (ternary "443" "80" (eq $prom.scheme "https")) -}}
admin:
  address:
    socket_address: {address: 0.0.0.0, port_value: {{ $e.adminPort }}}
static_resources:
  listeners:
    - name: grpc
      address:
        socket_address: {address: 0.0.0.0, port_value: {{ $lb.service.grpcPort }}}
      filter_chains:
        - filters:
            - name: envoy.filters.network.http_connection_manager
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
                stat_prefix: grpc
                codec_type: HTTP2
                http2_protocol_options:
                  max_concurrent_streams: {{ $e.maxConcurrentStreams }}
                route_config:
                  name: pysonic
                  virtual_hosts:
                    - name: pysonic
                      domains: ["*"]
                      routes:
                        - match: {prefix: /}
                          route:
                            cluster: pysonic_servers
                            timeout: {{ $lb.routeTimeout }}
                            {{- if $lb.retries.enabled }}
                            retry_policy:
                              retry_on: {{ $lb.retries.retryOn | quote }}
                              num_retries: {{ $lb.retries.numRetries }}
                              retry_host_predicate:
                                - name: envoy.retry_host_predicates.previous_hosts
                                  typed_config:
                                    "@type": type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate
                              host_selection_retry_max_attempts: 5
                            {{- end }}
                http_filters:
                  {{- if $e.admission.enabled }}
                  - name: envoy.filters.http.lua
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua
                      default_source_code:
                        inline_string: |
                          local ADMISSION_QUERY_PATH = {{ printf "/api/v1/query?query=%s" (include "pysonic.queueLatencyQuery" . | urlquery) | quote }}
                          local ADMISSION_AUTHORITY = {{ $prom.host | quote }}
                          local ADMISSION_THRESHOLD_MS = {{ include "pysonic.admissionThreshold" . | float64 }}
                          local ADMISSION_TIMEOUT_MS = {{ $e.admission.timeoutMs | int }}
                          local ADMISSION_FAIL_OPEN = {{ $e.admission.failOpen }}
                          {{- .Files.Get "files/envoy/admission.lua" | nindent 26 }}
                  {{- end }}
                  - name: envoy.filters.http.router
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
    - name: pysonic_servers
      type: STRICT_DNS
      dns_lookup_family: V4_ONLY
      connect_timeout: 1s
      lb_policy: {{ $e.lbPolicy }}
      {{- if eq $e.lbPolicy "LEAST_REQUEST" }}
      least_request_lb_config:
        choice_count: {{ $e.choiceCount }}
      {{- end }}
      typed_extension_protocol_options:
        envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
          "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
          explicit_http_config:
            http2_protocol_options:
              max_concurrent_streams: {{ $e.maxConcurrentStreams }}
      # Envoy's defaults (1024 requests, 3 concurrent retries) would refuse a busy site's load
      circuit_breakers:
        thresholds:
          - max_connections: 100000
            max_pending_requests: 100000
            max_requests: 100000
            max_retries: 1000
      load_assignment:
        cluster_name: pysonic_servers
        endpoints:
          - lb_endpoints:
              - endpoint:
                  address:
                    socket_address:
                      address: {{ include "pysonic.server" . }}-headless.{{ .Release.Namespace }}.svc.cluster.local
                      port_value: {{ $s.ports.grpc }}
                  health_check_config:
                    port_value: {{ $s.ports.http }}
      health_checks:
        - timeout: {{ $lb.healthCheck.timeout }}
          interval: {{ $lb.healthCheck.interval }}
          unhealthy_threshold: {{ $lb.healthCheck.unhealthyThreshold }}
          healthy_threshold: {{ $lb.healthCheck.healthyThreshold }}
          http_health_check:
            path: {{ $lb.healthCheck.path }}
            codec_client_type: HTTP1
      outlier_detection:
        consecutive_5xx: {{ $e.outlierDetection.consecutive5xx }}
        consecutive_gateway_failure: {{ $e.outlierDetection.consecutiveGatewayFailure }}
        interval: {{ $e.outlierDetection.interval }}
        base_ejection_time: {{ $e.outlierDetection.baseEjectionTime }}
        max_ejection_percent: {{ $e.outlierDetection.maxEjectionPercent }}
    {{- if $e.admission.enabled }}
    - name: prometheus
      type: STRICT_DNS
      dns_lookup_family: V4_ONLY
      connect_timeout: 1s
      load_assignment:
        cluster_name: prometheus
        endpoints:
          - lb_endpoints:
              - endpoint:
                  address:
                    socket_address: {address: {{ $promHost }}, port_value: {{ $promPort }}}
      {{- if eq $prom.scheme "https" }}
      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
          sni: {{ $promHost }}
      {{- end }}
    {{- end }}
{{- end -}}
