{{- define "lookalike.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "lookalike.fullname" -}}
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

{{- define "lookalike.selectorLabels" -}}
app.kubernetes.io/name: {{ include "lookalike.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "lookalike.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "lookalike.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "lookalike.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "lookalike.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "lookalike.image" -}}
{{- $flavour := ternary "cuda" "cpu" .Values.gpu.enabled }}
{{- $tag := default (printf "%s-%s" .Chart.AppVersion $flavour) .Values.image.tag }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}

{{/* The port of a "host:port" address, as a number. */}}
{{- define "lookalike.port" -}}
{{- $parts := splitList ":" . }}
{{- if lt (len $parts) 2 }}
{{- fail (printf "address %q has no port" .) }}
{{- end }}
{{- last $parts | atoi }}
{{- end }}

{{- define "lookalike.grpcPort" -}}
{{- include "lookalike.port" .Values.config.listen }}
{{- end }}

{{- define "lookalike.adminPort" -}}
{{- include "lookalike.port" .Values.config.admin_listen }}
{{- end }}

{{/* The HTTP/JSON API and console port; empty when config.http_listen is unset (off). */}}
{{- define "lookalike.httpPort" -}}
{{- with .Values.config.http_listen }}{{ include "lookalike.port" . }}{{ end }}
{{- end }}

{{- define "lookalike.tlsDir" -}}/etc/lookalike/tls{{- end }}
{{- define "lookalike.keysDir" -}}/etc/lookalike/api-keys{{- end }}
{{- define "lookalike.natsCredsDir" -}}/etc/lookalike/nats/creds{{- end }}
{{- define "lookalike.natsTlsDir" -}}/etc/lookalike/nats/tls{{- end }}

{{/*
Whether the pods' count is the HPA's (autoscaling.enabled): the StatefulSet
then leaves spec.replicas to it. "true" or "".
*/}}
{{- define "lookalike.autoscaled" -}}
{{- if and .Values.cluster.enabled .Values.autoscaling.enabled }}true{{ end }}
{{- end }}

{{/*
Values that only make sense together, for templates that render whatever
the schema allowed (helm --skip-schema-validation renders without it).
*/}}
{{- define "lookalike.checkReplicas" -}}
{{- if and (gt (int .Values.replicas) 1) (not .Values.cluster.enabled) }}
{{- fail (printf "replicas: %d needs cluster.enabled: without a NATS JetStream cluster each pod would be a separate store with its own galleries, not a replica (README: \"Replicas (NATS JetStream)\")" (int .Values.replicas)) }}
{{- end }}
{{- if and .Values.autoscaling.enabled (not .Values.cluster.enabled) }}
{{- fail "autoscaling.enabled needs cluster.enabled: only clustered replicas share the galleries" }}
{{- end }}
{{- if .Values.cluster.enabled }}
{{- if not .Values.cluster.urls }}
{{- fail "cluster.enabled needs cluster.urls (the NATS servers)" }}
{{- end }}
{{- if and .Values.persistence.existingClaim (or (gt (int .Values.replicas) 1) .Values.autoscaling.enabled) }}
{{- fail "persistence.existingClaim is one volume: with several replicas each needs its own (the claim template), so leave it unset" }}
{{- end }}
{{- end }}
{{- if include "lookalike.autoscaled" . }}
{{- if gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas) }}
{{- fail "autoscaling.minReplicas must not exceed autoscaling.maxReplicas" }}
{{- end }}
{{- if not (.Values.resources.requests | default dict).cpu }}
{{- fail "autoscaling.enabled needs resources.requests.cpu (the HPA's CPU utilisation is relative to it)" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "lookalike.apiKeysSecret" -}}
{{- default (printf "%s-api-keys" (include "lookalike.fullname" .)) .Values.apiKeys.existingSecret }}
{{- end }}

{{/*
A checksum of a Secret the chart does not create, for a pod template
annotation: its name, a revision value and its data, read from the cluster
with lookup where Helm can reach it (install, upgrade). Renderers without
cluster access (helm template, most GitOps tools) see no data: the name and
the revision are all they hash.
Usage: include "lookalike.secretChecksum" (dict "ctx" $ "name" NAME "revision" REV)
*/}}
{{- define "lookalike.secretChecksum" -}}
{{- $secret := lookup "v1" "Secret" .ctx.Release.Namespace .name }}
{{- printf "%s/%v/%s" .name .revision (toJson (dig "data" dict $secret)) | sha256sum }}
{{- end }}

{{/*
What tells the helm test pod apart from the server pod (both carry the
chart's labels): the NetworkPolicy admits it to the API ports.
*/}}
{{- define "lookalike.testComponent" -}}
app.kubernetes.io/component: test
{{- end }}

{{/*
YAML with indented sequences (toYamlPretty, Helm 3.17+), the style the
rendered manifests keep (yamllint); older Helm gets toYaml, equally valid.
tpl keeps the function name out of the template's parse on old Helm.
Usage: include "lookalike.toYaml" (dict "ctx" $ "value" V)
*/}}
{{- define "lookalike.toYaml" -}}
{{- if semverCompare ">=3.17.0-0" .ctx.Capabilities.HelmVersion.Version }}
{{- tpl "{{ toYamlPretty .value }}" (dict "value" .value) }}
{{- else }}
{{- toYaml .value }}
{{- end }}
{{- end }}

{{/*
A security context from values: keys set to null are dropped (Helm
deletes null overrides of defaults already; this also covers a null
given where the chart has no default).
Usage: include "lookalike.securityContext" (dict "ctx" $ "value" V)
*/}}
{{- define "lookalike.securityContext" -}}
{{- $out := dict }}
{{- range $k, $v := .value }}
{{- if not (kindIs "invalid" $v) }}
{{- $_ := set $out $k $v }}
{{- end }}
{{- end }}
{{- include "lookalike.toYaml" (dict "ctx" .ctx "value" $out) }}
{{- end }}

{{/*
The config the server runs with: .Values.config plus what the chart's own
settings imply (GPU provider, TLS files, API-key folder, [cluster]).
*/}}
{{- define "lookalike.config" -}}
{{- $cfg := deepCopy .Values.config }}
{{- if .Values.gpu.enabled }}
{{- $embed := default dict (get $cfg "embed") }}
{{- $_ := set $embed "provider" "cuda" }}
{{- $_ := set $embed "require_gpu" true }}
{{- $_ := set $cfg "embed" $embed }}
{{- end }}
{{- if .Values.tls.enabled }}
{{- $dir := include "lookalike.tlsDir" . }}
{{- $tls := dict "cert" (printf "%s/tls.crt" $dir) "key" (printf "%s/tls.key" $dir) }}
{{- if .Values.tls.clientAuth }}
{{- $_ := set $tls "client_ca" (printf "%s/ca.crt" $dir) }}
{{- end }}
{{- $_ := set $cfg "tls" $tls }}
{{- end }}
{{- if .Values.apiKeys.enabled }}
{{- $_ := set $cfg "auth" (dict "keys_dir" (include "lookalike.keysDir" .)) }}
{{- end }}
{{- with .Values.cluster }}
{{- if .enabled }}
{{- $cluster := dict "urls" .urls "stream_replicas" .streamReplicas "prefix" .prefix "read_wait_ms" .readWaitMs "tombstone_ttl_s" .tombstoneTtlS "ack_timeout_ms" .ackTimeoutMs }}
{{- if .credentialsSecret.name }}
{{- $_ := set $cluster "credentials" (printf "%s/nats.creds" (include "lookalike.natsCredsDir" $)) }}
{{- end }}
{{- if .tlsSecret.name }}
{{- $dir := include "lookalike.natsTlsDir" $ }}
{{- $tls := dict "ca" (printf "%s/ca.crt" $dir) }}
{{- if .tlsSecret.clientCert }}
{{- $_ := set $tls "cert" (printf "%s/tls.crt" $dir) }}
{{- $_ := set $tls "key" (printf "%s/tls.key" $dir) }}
{{- end }}
{{- $_ := set $cluster "tls" $tls }}
{{- end }}
{{- $_ := set $cfg "cluster" $cluster }}
{{- end }}
{{- end }}
{{- toJson $cfg }}
{{- end }}

{{/*
TOML from a map. Helm reads YAML numbers as float64 and its toToml writes
50051 as 50051.0, which the server's integer keys reject; integral numbers
are written as integers here (float keys accept them).
*/}}
{{- define "lookalike.tomlValue" -}}
{{- if kindIs "string" . }}{{ toJson . }}
{{- else if kindIs "bool" . }}{{ . }}
{{- else if kindIs "float64" . }}{{ if eq . (floor .) }}{{ int64 . }}{{ else }}{{ . }}{{ end }}
{{- else if kindIs "slice" . }}[{{ range $i, $v := . }}{{ if $i }}, {{ end }}{{ include "lookalike.tomlValue" $v }}{{ end }}]
{{- else }}{{ . }}
{{- end }}
{{- end }}

{{- define "lookalike.tomlTable" -}}
{{- $prefix := .prefix }}
{{- range $k, $v := .table }}
{{- if not (kindIs "map" $v) }}
{{ $k }} = {{ include "lookalike.tomlValue" $v }}
{{- end }}
{{- end }}
{{- range $k, $v := .table }}
{{- if kindIs "map" $v }}
[{{ $prefix }}{{ $k }}]
{{- include "lookalike.tomlTable" (dict "prefix" (printf "%s%s." $prefix $k) "table" $v) }}
{{- end }}
{{- end }}
{{- end }}

{{- define "lookalike.toml" -}}
{{- include "lookalike.tomlTable" (dict "prefix" "" "table" (include "lookalike.config" . | fromJson)) }}
{{- end }}
