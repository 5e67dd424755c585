{{/* Chart name. */}}
{{- define "session-sidecar.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: release-chart, unless the release name already holds the chart name. */}}
{{- define "session-sidecar.fullname" -}}
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

{{- define "session-sidecar.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Common labels. */}}
{{- define "session-sidecar.labels" -}}
helm.sh/chart: {{ include "session-sidecar.chart" . }}
{{ include "session-sidecar.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Selector labels. */}}
{{- define "session-sidecar.selectorLabels" -}}
app.kubernetes.io/name: {{ include "session-sidecar.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "session-sidecar.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "session-sidecar.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "session-sidecar.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The Secret the env vars read: existingSecret or this chart's. */}}
{{- define "session-sidecar.secretName" -}}
{{- default (include "session-sidecar.fullname" .) .Values.existingSecret }}
{{- end }}

{{- define "session-sidecar.host" -}}
{{- if .Values.listen.host }}{{ .Values.listen.host }}{{ else if eq .Values.mode "sidecar" }}127.0.0.1{{ else }}0.0.0.0{{ end }}
{{- end }}

{{/* redis.url: given, or built from redis.mode. */}}
{{- define "session-sidecar.redisUrl" -}}
{{- $r := .Values.redis }}
{{- if $r.url }}
{{- $r.url }}
{{- else if eq $r.mode "standalone" }}
{{- printf "%s://%s:%v/%v" (ternary "rediss" "redis" (toString $r.tls | eq "true")) $r.host $r.port $r.db }}
{{- else if eq $r.mode "sentinel" }}
{{- printf "redis+sentinel://%s/%s/%v" (join "," $r.sentinel.hosts) $r.sentinel.masterName $r.db }}
{{- else if eq $r.mode "cluster" }}
{{- printf "redis+cluster://%s" (join "," $r.cluster.nodes) }}
{{- end }}
{{- end }}

{{/* "true" when redis.url holds "@": credentials (user:password@), whose password may hold unencoded "/", "?",
"#" or "@" so that no pattern finds where it ends. The whole URL then goes into the Secret, never the ConfigMap. */}}
{{- define "session-sidecar.redisUrlInSecret" -}}
{{- if contains "@" (toString .Values.redis.url) }}true{{ end }}
{{- end }}

{{/* redis.url for humans (NOTES): everything from "//" to the last "@" masked, so a password with unencoded
"/", "?", "#" or "@" is hidden too. */}}
{{- define "session-sidecar.redisUrlMasked" -}}
{{- regexReplaceAll "//.*@" (include "session-sidecar.redisUrl" .) "//***@" }}
{{- end }}

{{/* The replicas a disruption budget has to fit: autoscaling.minReplicas, else replicaCount. */}}
{{- define "session-sidecar.minReplicas" -}}
{{- if .Values.autoscaling.enabled }}{{ .Values.autoscaling.minReplicas | int }}{{ else }}{{ .Values.replicaCount | int }}{{ end }}
{{- end }}

{{/* Every bad combination of values, each with a clear message. Included by every template. */}}
{{- define "session-sidecar.validate" -}}
{{- $v := .Values }}
{{- if not (has $v.mode (list "central" "sidecar")) }}
{{- fail (printf "mode must be central or sidecar (got %q)" (toString $v.mode)) }}
{{- end }}
{{- if not $v.redis.url }}
{{- if not (has $v.redis.mode (list "standalone" "sentinel" "cluster")) }}
{{- fail (printf "redis.mode must be standalone, sentinel or cluster (got %q), or set redis.url" (toString $v.redis.mode)) }}
{{- end }}
{{- if and (eq $v.redis.mode "sentinel") (or (empty $v.redis.sentinel.hosts) (empty $v.redis.sentinel.masterName)) }}
{{- fail "redis.mode sentinel needs redis.sentinel.hosts (host:port entries) and redis.sentinel.masterName" }}
{{- end }}
{{- if and (eq $v.redis.mode "cluster") (empty $v.redis.cluster.nodes) }}
{{- fail "redis.mode cluster needs redis.cluster.nodes (host:port entries)" }}
{{- end }}
{{- if and (eq $v.redis.mode "standalone") (empty $v.redis.host) }}
{{- fail "redis.mode standalone needs redis.host (or set redis.url)" }}
{{- end }}
{{- end }}
{{- if not (has $v.redis.failure_policy (list "deny" "stale")) }}
{{- fail (printf "redis.failure_policy must be deny or stale (got %q)" (toString $v.redis.failure_policy)) }}
{{- end }}
{{- if and (eq $v.redis.failure_policy "stale") (not $v.cache.enabled) }}
{{- fail "redis.failure_policy stale needs cache.enabled: true (the last known identities live in the cache)" }}
{{- end }}
{{- $inline := include "session-sidecar.hasInlineSecrets" . }}
{{- if and $v.existingSecret (include "session-sidecar.redisUrlInSecret" .) }}
{{- fail "existingSecret is set and redis.url holds credentials (\"@\"): leave them out of redis.url and put the password in the existing Secret's redis-password" }}
{{- end }}
{{- if and $v.existingSecret $inline }}
{{- fail "existingSecret is set: leave token.keys, session.encryption_keys, redis.password, redis.sentinel_password, api.token and assertion.keys[].private_key empty (put them in the existing Secret)" }}
{{- end }}
{{- if $v.assertion.enabled }}
{{- if empty $v.assertion.keys }}
{{- fail "assertion.enabled needs at least one key in assertion.keys: {kid, private_key} (a PEM EC P-256 or Ed25519 private key, e.g. openssl genpkey -algorithm ed25519), or {kid} with an existingSecret holding assertion-key-<kid>" }}
{{- end }}
{{- $kids := list }}
{{- range $i, $key := $v.assertion.keys }}
{{- if has $key.kid $kids }}
{{- fail (printf "assertion.keys[%d]: duplicate kid %q" $i $key.kid) }}
{{- end }}
{{- $kids = append $kids $key.kid }}
{{- if and (not $v.existingSecret) (not $key.private_key) }}
{{- fail (printf "assertion.keys[%d] (kid %q) needs private_key (a PEM EC P-256 or Ed25519 private key), or an existingSecret with key assertion-key-%s" $i $key.kid $key.kid) }}
{{- end }}
{{- end }}
{{- $header := $v.assertion.header }}
{{- $stripped := false }}
{{- range $v.headers.strip_prefixes }}{{ if hasPrefix . $header }}{{ $stripped = true }}{{ end }}{{ end }}
{{- if not $stripped }}
{{- fail (printf "assertion.header %q does not start with any of headers.strip_prefixes (%s), so a client-supplied (replayed) assertion would reach the upstream" $header (join ", " $v.headers.strip_prefixes)) }}
{{- end }}
{{- range $key := list "user_id" "email" "roles" "session" }}
{{- if eq (index $v.headers $key) $header }}
{{- fail (printf "assertion.header: same header as headers.%s (%q)" $key $header) }}
{{- end }}
{{- end }}
{{- end }}
{{- if and $v.api.enabled (not $v.existingSecret) (not $v.api.token) }}
{{- fail "api.enabled needs api.token (at least 24 printable characters) or an existingSecret with key api-token" }}
{{- end }}
{{- if or (lt (int $v.workers) 1) (gt (int $v.workers) 64) }}
{{- fail (printf "workers must be between 1 and 64 (got %v)" $v.workers) }}
{{- end }}
{{- /* Worker i listens on each port + i (admin: worker 0 only); no two listeners may share a port. */}}
{{- $n := int $v.workers }}
{{- $ranges := list (list "grpcPort" (int $v.listen.grpcPort) $n "") }}
{{- if $v.listen.httpEnabled }}{{ $ranges = append $ranges (list "httpPort" (int $v.listen.httpPort) $n " or set listen.httpEnabled: false") }}{{ end }}
{{- if $v.api.enabled }}{{ $ranges = append $ranges (list "apiPort" (int $v.listen.apiPort) $n "") }}{{ end }}
{{- $ranges = append $ranges (list "adminPort" (int $v.listen.adminPort) 1 "") }}
{{- range $i, $a := $ranges }}
{{- range $j, $b := $ranges }}
{{- if and (lt $i $j) (lt (index $b 1) (add (index $a 1) (index $a 2))) (lt (index $a 1) (add (index $b 1) (index $b 2))) }}
{{- fail (printf "workers %d: listen.%s %d..%d and listen.%s %d..%d collide (worker i uses port + i, admin worker 0 only); move listen.%s%s" $n (index $a 0) (index $a 1) (sub (add (index $a 1) (index $a 2)) 1) (index $b 0) (index $b 1) (sub (add (index $b 1) (index $b 2)) 1) (index $b 0) (index $b 3)) }}
{{- end }}
{{- end }}
{{- end }}
{{- if eq $v.mode "central" }}
{{- if and $v.networkPolicy.enabled (empty $v.networkPolicy.from) }}
{{- fail "networkPolicy.enabled needs networkPolicy.from: the peers that call ext_authz (the mesh proxies, an ingress); an empty from would admit no one, and every request of the mesh would be denied (set networkPolicy.enabled: false to admit every pod instead)" }}
{{- end }}
{{- if and $v.networkPolicy.enabled $v.api.enabled (empty $v.networkPolicy.apiFrom) }}
{{- fail "api.enabled with networkPolicy.enabled needs networkPolicy.apiFrom: the peers that call the SessionService API (your login services); the ext_authz callers of networkPolicy.from do not get it" }}
{{- end }}
{{- if $v.pdb.enabled }}
{{- $replicas := int (include "session-sidecar.minReplicas" .) }}
{{- $min := $v.pdb.minAvailable }}
{{- if and (gt $replicas 1) (or (eq (toString $min) "100%") (and (kindIs "float64" $min) (ge (int $min) $replicas)) (and (kindIs "int" $min) (ge (int $min) $replicas)) (and (kindIs "int64" $min) (ge (int $min) $replicas))) }}
{{- fail (printf "pdb.minAvailable %v leaves no pod of the %d replicas evictable, so every node drain would block: set it below %d (or a percentage below 100%%)" $min $replicas $replicas) }}
{{- end }}
{{- end }}
{{- end }}
{{- if and $v.autoscaling.enabled (lt (int $v.autoscaling.maxReplicas) (int $v.autoscaling.minReplicas)) }}
{{- fail "autoscaling.maxReplicas must be >= autoscaling.minReplicas" }}
{{- end }}
{{- end }}

{{/* The sidecar's config file (no secrets: those come from the Secret as SIDECAR_* env). */}}
{{- define "session-sidecar.config" -}}
{{- $v := .Values }}
{{- $host := include "session-sidecar.host" . }}
{{- $cfg := dict }}
{{- $listen := dict "grpc" (printf "%s:%v" $host $v.listen.grpcPort) "http" (ternary (printf "%s:%v" $host $v.listen.httpPort) "" $v.listen.httpEnabled) "admin" (printf "%s:%v" $host $v.listen.adminPort) }}
{{- /* The API on its own port: whoever may call ext_authz on listen.grpc does not reach it. */}}
{{- $_ := set $listen "api" (ternary (printf "%s:%v" $host $v.listen.apiPort) "" $v.api.enabled) }}
{{- $_ := set $listen "idle_timeout" $v.listen.idle_timeout }}
{{- $_ := set $listen "max_connections" $v.listen.max_connections }}
{{- $_ := set $listen "grpc_threads" $v.listen.grpc_threads }}
{{- $_ := set $cfg "listen" $listen }}
{{- $redis := pick $v.redis "key_prefix" "timeout" "failure_policy" "stale_for" "wait_replicas" "wait_timeout" "max_connections" "username" "sentinel_username" "tls_ca_file" "tls_cert_file" "tls_key_file" "tls_verify" }}
{{- if not (include "session-sidecar.redisUrlInSecret" .) }}
{{- $_ := set $redis "url" (include "session-sidecar.redisUrl" .) }}
{{- end }}
{{- $_ := set $cfg "redis" $redis }}
{{- $_ := set $cfg "cookie" $v.cookie }}
{{- $_ := set $cfg "session" (omit $v.session "encryption_keys") }}
{{- $_ := set $cfg "headers" $v.headers }}
{{- $_ := set $cfg "deny" $v.deny }}
{{- $_ := set $cfg "routes" $v.routes }}
{{- $api := dict "enabled" $v.api.enabled }}
{{- if $v.api.enabled }}{{ $_ := set $api "token_file" (printf "%s/api-token" (include "session-sidecar.secretsDir" .)) }}{{ end }}
{{- $_ := set $cfg "api" $api }}
{{- $_ := set $cfg "cache" $v.cache }}
{{- $_ := set $cfg "log" $v.log }}
{{- $assertion := pick $v.assertion "enabled" "header" "issuer" "ttl" "claims" "audience" }}
{{- $keys := list }}
{{- if $v.assertion.enabled }}
{{- range $v.assertion.keys }}
{{- $keys = append $keys (dict "kid" .kid "private_key_file" (printf "%s/%s" (include "session-sidecar.secretsDir" $) (include "session-sidecar.assertionKeyPath" .))) }}
{{- end }}
{{- end }}
{{- $_ := set $assertion "keys" $keys }}
{{- $_ := set $cfg "assertion" $assertion }}
{{- $_ := set $cfg "forward_auth" $v.forward_auth }}
{{- $_ := set $cfg "sources" $v.sources }}
{{- toYaml $cfg }}
{{- end }}

{{/* Where the Secret's files (api-token, assertion keys) are mounted read-only. */}}
{{- define "session-sidecar.secretsDir" -}}
/etc/session-sidecar/secrets
{{- end }}

{{/* The file name of one assertion key (an item of assertion.keys) in the secrets dir; its Secret key is
assertion-key-<kid>. */}}
{{- define "session-sidecar.assertionKeyPath" -}}
{{- printf "assertion-key-%s.pem" .kid }}
{{- end }}

{{/* The shared Prometheus multiprocess directory of `serve --workers N` (N > 1): an emptyDir. */}}
{{- define "session-sidecar.metricsDir" -}}
/var/lib/session-sidecar/metrics
{{- end }}

{{/* The items of the Secret mounted at secretsDir: api-token (api.enabled) and the assertion keys. Empty when
nothing is mounted. */}}
{{- define "session-sidecar.secretFiles" -}}
{{- if .Values.api.enabled }}
- key: api-token
  path: api-token
  mode: 288
{{- end }}
{{- if .Values.assertion.enabled }}
{{- range .Values.assertion.keys }}
- key: assertion-key-{{ .kid }}
  path: {{ include "session-sidecar.assertionKeyPath" . }}
  mode: 288
{{- end }}
{{- end }}
{{- end }}

{{/* Secret env vars (token keys, encryption keys, Redis passwords). */}}
{{- define "session-sidecar.secretEnv" -}}
{{- $v := .Values }}
{{- $secret := include "session-sidecar.secretName" . }}
{{- $optional := ternary true false (not (empty $v.existingSecret)) -}}
{{- range $item := list (list "SIDECAR_TOKEN__KEYS" "token-keys" $v.token.keys) (list "SIDECAR_SESSION__ENCRYPTION_KEYS" "encryption-keys" $v.session.encryption_keys) (list "SIDECAR_REDIS__PASSWORD" "redis-password" $v.redis.password) (list "SIDECAR_REDIS__SENTINEL_PASSWORD" "redis-sentinel-password" $v.redis.sentinel_password) (list "SIDECAR_REDIS__URL" "redis-url" (include "session-sidecar.redisUrlInSecret" .)) }}
{{- if or $optional (index $item 2) }}
- name: {{ index $item 0 }}
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ index $item 1 }}
      {{- if $optional }}
      optional: true
      {{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/* The sidecar container (central Deployment and the sidecar-mode snippet). */}}
{{- define "session-sidecar.container" -}}
{{- $v := .Values -}}
name: session-sidecar
image: {{ include "session-sidecar.image" . }}
imagePullPolicy: {{ $v.image.pullPolicy }}
args: ["serve", "--config", "/etc/session-sidecar/config.yaml", "--workers", {{ $v.workers | int | toString | quote }}]
ports:
{{- range $i, $_ := until (int $v.workers) }}
{{- $suffix := ternary "" (printf "-%d" $i) (eq $i 0) }}
  - name: grpc{{ $suffix }}
    containerPort: {{ add $v.listen.grpcPort $i }}
    protocol: TCP
  {{- if $v.listen.httpEnabled }}
  - name: http{{ $suffix }}
    containerPort: {{ add $v.listen.httpPort $i }}
    protocol: TCP
  {{- end }}
  {{- if $v.api.enabled }}
  - name: api{{ $suffix }}
    containerPort: {{ add $v.listen.apiPort $i }}
    protocol: TCP
  {{- end }}
{{- end }}
  - name: admin
    containerPort: {{ $v.listen.adminPort }}
    protocol: TCP
{{- $env := include "session-sidecar.secretEnv" . | trim }}
{{- $multiprocess := gt (int $v.workers) 1 }}
{{- if or $env $multiprocess $v.extraEnv }}
env:
  {{- with $env }}
  {{- . | nindent 2 }}
  {{- end }}
  {{- if $multiprocess }}
  - name: PROMETHEUS_MULTIPROC_DIR
    value: {{ include "session-sidecar.metricsDir" . }}
  {{- end }}
  {{- with $v.extraEnv }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end }}
readinessProbe:
  grpc:
    port: {{ $v.listen.grpcPort }}
    {{- /* "" stays SERVING while the store is down; this name follows the store (sidecar/app.py). */}}
    service: envoy.service.auth.v3.Authorization
  {{- toYaml $v.probes.readiness | nindent 2 }}
livenessProbe:
  grpc:
    port: {{ $v.listen.grpcPort }}
  {{- toYaml $v.probes.liveness | nindent 2 }}
securityContext:
  {{- toYaml $v.securityContext | nindent 2 }}
resources:
  {{- toYaml $v.resources | nindent 2 }}
volumeMounts:
  - name: config
    mountPath: /etc/session-sidecar/config.yaml
    subPath: config.yaml
    readOnly: true
  {{- if include "session-sidecar.secretFiles" . }}
  - name: secrets
    mountPath: {{ include "session-sidecar.secretsDir" . }}
    readOnly: true
  {{- end }}
  - name: tmp
    mountPath: /tmp
  {{- if gt (int $v.workers) 1 }}
  - name: metrics
    mountPath: {{ include "session-sidecar.metricsDir" . }}
  {{- end }}
  {{- with $v.extraVolumeMounts }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end }}

{{- define "session-sidecar.volumes" -}}
- name: config
  configMap:
    name: {{ include "session-sidecar.fullname" . }}
{{- with include "session-sidecar.secretFiles" . | trim }}
- name: secrets
  secret:
    secretName: {{ include "session-sidecar.secretName" $ }}
    {{- /* 0440 for every file (API token, assertion keys): root-owned, group fsGroup (podSecurityContext),
    readable by the non-root sidecar and nobody else. */}}
    defaultMode: 288
    items:
      {{- . | nindent 6 }}
{{- end }}
- name: tmp
  emptyDir:
    medium: Memory
    sizeLimit: 16Mi
{{- if gt (int .Values.workers) 1 }}
- name: metrics
  emptyDir:
    sizeLimit: 64Mi
{{- end }}
{{- with .Values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* "true" when any secret is given inline in values. */}}
{{- define "session-sidecar.hasInlineSecrets" -}}
{{- $v := .Values }}
{{- $assertionKeys := false }}
{{- if $v.assertion.enabled }}{{ range $v.assertion.keys }}{{ if .private_key }}{{ $assertionKeys = true }}{{ end }}{{ end }}{{ end }}
{{- if or $v.token.keys $v.session.encryption_keys $v.redis.password $v.redis.sentinel_password $v.api.token $assertionKeys (include "session-sidecar.redisUrlInSecret" .) }}true{{ end }}
{{- end }}
