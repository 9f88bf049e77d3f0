{{/*
Return the chart name, truncated to the 63 characters a DNS label allows.
*/}}
{{- define "asyncinfer.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Return the object name prefix: `<release>-<chart>`, or the release name alone when it already contains the chart name.
Kept to 52 characters so suffixes such as "-worker" and the StatefulSet's pod names still fit 63.
*/}}
{{- define "asyncinfer.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Return the chart label value `<name>-<version>`.
*/}}
{{- define "asyncinfer.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Return the selector labels of one component. Call with (dict "ctx" $ "component" "api").
*/}}
{{- define "asyncinfer.selectorLabels" -}}
app.kubernetes.io/name: {{ include "asyncinfer.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/*
Return the full label set of one component's objects. Call with (dict "ctx" $ "component" "api").
*/}}
{{- define "asyncinfer.labels" -}}
helm.sh/chart: {{ include "asyncinfer.chart" .ctx }}
{{ include "asyncinfer.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: asyncinfer
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Return `<prefix><suffix>` in at most `max` characters: as is when it fits, else the prefix cut short and
followed by 5 hex characters of its hash (two long releases keep distinct names), the suffix kept whole.
Call with (dict "prefix" p "suffix" s "max" n).
*/}}
{{- define "asyncinfer.fitName" -}}
{{- $whole := printf "%s%s" .prefix .suffix }}
{{- if le (len $whole) (int .max) }}
{{- $whole }}
{{- else }}
{{- $keep := max 1 (sub (sub (int .max) (len .suffix)) 6) }}
{{- printf "%s-%s%s" (trunc (int $keep) .prefix | trimSuffix "-") (sha256sum .prefix | trunc 5) .suffix }}
{{- end }}
{{- end }}

{{/*
Return the labels of one component's pod template: the selector labels and what never changes with a
chart upgrade. Not `helm.sh/chart` or the version: in a pod template they would restart every pod
(Redis included) on each chart upgrade. Call with (dict "ctx" $ "component" "api").
*/}}
{{- define "asyncinfer.podLabels" -}}
{{ include "asyncinfer.selectorLabels" . }}
app.kubernetes.io/part-of: asyncinfer
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Return the name of one component's objects: `<fullname>-<component>`, at most 63 characters (a DNS label,
and label values such as KEDA's `scaledobject.keda.sh/name`); Redis's at most 52: its StatefulSet's
`controller-revision-hash` label is the name plus 11 characters.
*/}}
{{- define "asyncinfer.componentName" -}}
{{- include "asyncinfer.fitName" (dict "prefix" (include "asyncinfer.fullname" .ctx) "suffix" (printf "-%s" .component) "max" (ternary 52 63 (eq .component "redis"))) }}
{{- end }}

{{/*
Return the image reference of a component: `<registry>/<repository>:<tag>`, the registry being the
image's own `registry` or else global.imageRegistry (none: the runtime's default, Docker Hub), the tag
defaulting to the chart appVersion. Call with (dict "ctx" $ "image" .Values.api.image).
*/}}
{{- define "asyncinfer.image" -}}
{{- $registry := .image.registry | default (.ctx.Values.global).imageRegistry | default "" | trimSuffix "/" }}
{{- $reference := printf "%s:%s" .image.repository (default .ctx.Chart.AppVersion .image.tag) }}
{{- if $registry }}{{ printf "%s/%s" $registry $reference }}{{ else }}{{ $reference }}{{ end }}
{{- end }}

{{/*
Return the Redis host: the headless Service's fully qualified name, so KEDA resolves it from its own namespace too.
*/}}
{{- define "asyncinfer.redisHost" -}}
{{- printf "%s.%s.svc.%s" (include "asyncinfer.componentName" (dict "ctx" . "component" "redis")) .Release.Namespace .Values.clusterDomain }}
{{- end }}

{{/*
Return the Redis address as `host:port` (KEDA's redis trigger `address`).
*/}}
{{- define "asyncinfer.redisAddress" -}}
{{- if .Values.redis.external.enabled }}
{{- $host := (urlParse .Values.redis.external.url).host }}
{{- if regexMatch ":[0-9]+$" $host }}{{ $host }}{{ else }}{{ printf "%s:6379" $host }}{{ end }}
{{- else }}
{{- printf "%s:%d" (include "asyncinfer.redisHost" .) (int .Values.redis.port) }}
{{- end }}
{{- end }}

{{/*
Return REDIS_URL without a password: the services read it from REDIS_PASSWORD_FILE (the Secret) instead.
With Sentinels its host is not dialled (they name the primary); it still gives the db, the user and TLS.
*/}}
{{- define "asyncinfer.redisUrl" -}}
{{- if .Values.redis.external.enabled }}
{{- .Values.redis.external.url }}
{{- else }}
{{- printf "redis://%s/0" (include "asyncinfer.redisAddress" .) }}
{{- end }}
{{- end }}

{{/*
Return "true" when the chart runs Redis itself (not redis.external).
*/}}
{{- define "asyncinfer.redisInChart" -}}
{{- if not .Values.redis.external.enabled }}true{{ end }}
{{- end }}

{{/*
Return "true" for the in-chart replication set: a primary, replicas and a Sentinel in each pod.
*/}}
{{- define "asyncinfer.redisReplication" -}}
{{- if and (not .Values.redis.external.enabled) (eq .Values.redis.architecture "replication") }}true{{ end }}
{{- end }}

{{/*
Return "true" for the in-chart Redis Cluster (redis.architecture=cluster).
*/}}
{{- define "asyncinfer.redisClusterInChart" -}}
{{- if and (not .Values.redis.external.enabled) (eq .Values.redis.architecture "cluster") }}true{{ end }}
{{- end }}

{{/*
Return "true" when Redis is a Redis Cluster, the chart's own or an external one (REDIS_CLUSTER).
*/}}
{{- define "asyncinfer.redisCluster" -}}
{{- if .Values.redis.external.enabled }}{{ if .Values.redis.external.cluster }}true{{ end }}
{{- else if eq .Values.redis.architecture "cluster" }}true{{ end }}
{{- end }}

{{/*
Return the in-chart Cluster's nodes as `host:port` separated by spaces (the bootstrap Job's NODES).
*/}}
{{- define "asyncinfer.redisClusterNodes" -}}
{{- $sts := include "asyncinfer.componentName" (dict "ctx" . "component" "redis") }}
{{- $c := .Values.redis.cluster }}
{{- $nodes := list }}
{{- range $i := until (int (mul $c.masters (add1 $c.replicasPerMaster))) }}
{{- $nodes = append $nodes (printf "%s-%d.%s:%d" $sts $i (include "asyncinfer.redisHost" $) (int $.Values.redis.port)) }}
{{- end }}
{{- join " " $nodes }}
{{- end }}

{{/*
Return the replication set's pod names' DNS addresses, one per pod (`<sts>-<i>.<headless>.<ns>.svc.<domain>`):
what each redis-server and Sentinel announces, so Sentinels name the primary by a name that survives a pod's new IP.
*/}}
{{- define "asyncinfer.redisPodHosts" -}}
{{- $sts := include "asyncinfer.componentName" (dict "ctx" . "component" "redis") }}
{{- $hosts := list }}
{{- range $i := until (int .Values.redis.replication.replicas) }}
{{- $hosts = append $hosts (printf "%s-%d.%s" $sts $i (include "asyncinfer.redisHost" $)) }}
{{- end }}
{{- join "," $hosts }}
{{- end }}

{{/*
Return REDIS_SENTINELS (comma-separated host:port): the replication set's Sentinels, redis.external.sentinels,
or nothing (Redis is dialled directly at REDIS_URL).
*/}}
{{- define "asyncinfer.redisSentinels" -}}
{{- if .Values.redis.external.enabled }}
{{- join "," .Values.redis.external.sentinels }}
{{- else if include "asyncinfer.redisReplication" . }}
{{- $port := int .Values.redis.replication.sentinelPort }}
{{- $out := list }}
{{- range splitList "," (include "asyncinfer.redisPodHosts" .) }}
{{- $out = append $out (printf "%s:%d" . $port) }}
{{- end }}
{{- join "," $out }}
{{- end }}
{{- end }}

{{/*
Return REDIS_SENTINEL_MASTER: the master set's name the Sentinels know the primary by.
*/}}
{{- define "asyncinfer.redisSentinelMaster" -}}
{{- if .Values.redis.external.enabled }}{{ .Values.redis.external.masterSet }}{{ else }}{{ .Values.redis.replication.masterSet }}{{ end }}
{{- end }}

{{/*
Return the key of the Sentinels' password in the Redis Secret, or nothing when the Sentinels take none:
the in-chart Sentinels use Redis's own password; external ones redis.external.sentinelPasswordKey.
*/}}
{{- define "asyncinfer.redisSentinelSecretKey" -}}
{{- if .Values.redis.external.enabled }}
{{- if .Values.redis.external.sentinels }}{{ .Values.redis.external.sentinelPasswordKey }}{{ end }}
{{- else if include "asyncinfer.redisReplication" . }}
{{- include "asyncinfer.redisSecretKey" . }}
{{- end }}
{{- end }}

{{/*
Return the replica acknowledgement settings (REDIS_MIN_REPLICAS_ACK, REDIS_REPLICA_ACK_TIMEOUT_MS) as a
JSON object, empty for the standalone Redis (which has no replica to wait for).
*/}}
{{- define "asyncinfer.redisReplicaAck" -}}
{{- $source := dict }}
{{- if .Values.redis.external.enabled }}
{{- $source = .Values.redis.external }}
{{- else if include "asyncinfer.redisReplication" . }}
{{- $source = .Values.redis.replication }}
{{- end }}
{{- if $source }}
{{- toJson (dict "REDIS_MIN_REPLICAS_ACK" (int $source.minReplicasAck) "REDIS_REPLICA_ACK_TIMEOUT_MS" (int $source.replicaAckTimeoutMs)) }}
{{- else }}
{{- "{}" }}
{{- end }}
{{- end }}

{{/*
Return the key prefix: the one value the ConfigMap (KEY_PREFIX) and every ScaledObject's list names use.
*/}}
{{- define "asyncinfer.keyPrefix" -}}
{{- .Values.config.keyPrefix }}
{{- end }}

{{/*
Return a model's pending LIST at one priority, as jobqueue/keys.py names it. Call with (dict "ctx" $ "model" "iris" "priority" "high").
*/}}
{{- define "asyncinfer.pendingKey" -}}
{{- printf "%s:%s:pending:%s" (include "asyncinfer.keyPrefix" .ctx) .model .priority }}
{{- end }}

{{/*
Return a model's in-flight ZSET (KEDA counts it with ZCARD). Call with (dict "ctx" $ "model" "iris").
*/}}
{{- define "asyncinfer.inflightKey" -}}
{{- printf "%s:%s:inflight" (include "asyncinfer.keyPrefix" .ctx) .model }}
{{- end }}

{{/*
Return the names of a sharded model's KEDA triggers, space-separated: t0 t1 ... four per shard (its
pending lists high, normal, low, then its in-flight ZSET). Call with the model.
*/}}
{{- define "asyncinfer.kedaTriggerNames" -}}
{{- $names := list }}
{{- range $i := until (int (mul (len .tags) 4)) }}
{{- $names = append $names (printf "t%d" $i) }}
{{- end }}
{{- join " " $names }}
{{- end }}

{{/*
Return the name of the Secret holding the Redis password.
*/}}
{{- define "asyncinfer.redisSecretName" -}}
{{- default (include "asyncinfer.componentName" (dict "ctx" . "component" "redis")) .Values.redis.auth.existingSecret }}
{{- end }}

{{/*
Return the key of the Redis password inside that Secret.
*/}}
{{- define "asyncinfer.redisSecretKey" -}}
{{- if .Values.redis.auth.existingSecret }}
{{- .Values.redis.auth.existingSecretPasswordKey }}
{{- else -}}
redis-password
{{- end }}
{{- end }}

{{/*
Return the generated Secret's Redis password, base64-encoded: redis.auth.password without surrounding
whitespace (the services strip it, KEDA would not), else the one kept in the cluster, else a new one.
*/}}
{{- define "asyncinfer.redisPasswordB64" -}}
{{- if .Values.redis.auth.password }}
{{- .Values.redis.auth.password | trim | b64enc }}
{{- else }}
{{- include "asyncinfer.generatedSecretValue" (dict "ctx" . "name" (include "asyncinfer.redisSecretName" .) "key" "redis-password" "random" (randAlphaNum 32) "offline" (include "asyncinfer.offlineDerived" (dict "ctx" . "purpose" "redis-password"))) }}
{{- end }}
{{- end }}

{{/*
Return a checksum of the Redis password for pod annotations: Redis and every client read it only at
start, so a new password must roll them all. An existing Secret is read when helm reaches the cluster.
*/}}
{{- define "asyncinfer.redisPasswordChecksum" -}}
{{- if .Values.redis.auth.existingSecret }}
{{- $secret := lookup "v1" "Secret" .Release.Namespace .Values.redis.auth.existingSecret | default dict }}
{{- printf "%s/%s/%s" .Values.redis.auth.existingSecret .Values.redis.auth.existingSecretPasswordKey (index ($secret.data | default dict) .Values.redis.auth.existingSecretPasswordKey | default "") | sha256sum }}
{{- else }}
{{- include "asyncinfer.redisPasswordB64" . | sha256sum }}
{{- end }}
{{- end }}

{{/*
Return the name of the Secret holding the API tokens file.
*/}}
{{- define "asyncinfer.authSecretName" -}}
{{- default (include "asyncinfer.componentName" (dict "ctx" . "component" "auth")) .Values.auth.existingSecret }}
{{- end }}

{{/*
Return the key of the tokens file inside that Secret.
*/}}
{{- define "asyncinfer.authSecretKey" -}}
{{- if .Values.auth.existingSecret }}{{ .Values.auth.existingSecretKey }}{{ else }}tokens{{ end }}
{{- end }}

{{/*
Return the name of the Secret holding the webhook signing secret.
*/}}
{{- define "asyncinfer.webhookSecretName" -}}
{{- default (include "asyncinfer.componentName" (dict "ctx" . "component" "webhook")) .Values.webhooks.existingSecret }}
{{- end }}

{{/*
Return the key of the webhook signing secret inside that Secret.
*/}}
{{- define "asyncinfer.webhookSecretKey" -}}
{{- if .Values.webhooks.existingSecret }}{{ .Values.webhooks.existingSecretKey }}{{ else }}webhook-secret{{ end }}
{{- end }}

{{/*
Return where secret files are mounted; the *_FILE settings point below it.
*/}}
{{- define "asyncinfer.secretsDir" -}}
/etc/asyncinfer/secrets
{{- end }}

{{/*
Return the volume (Secret projection) a container reads its secret files from: Redis password always,
tokens file for the API, webhook secret for the notifier, the OTLP exporter's headers (tracing) for all. Call with (dict "ctx" $ "auth" bool "webhook" bool).
Files, never env vars: no `kubectl describe`, crash dump or child process sees them, and a rotated Secret
reaches the file without a restart.
*/}}
{{- define "asyncinfer.secretsVolume" -}}
- name: secrets
  projected:
    defaultMode: 0440
    sources:
      - secret:
          name: {{ include "asyncinfer.redisSecretName" .ctx }}
          items:
            - key: {{ include "asyncinfer.redisSecretKey" .ctx }}
              path: redis-password
            {{- with include "asyncinfer.redisSentinelSecretKey" .ctx }}
            - key: {{ . }}
              path: redis-sentinel-password
            {{- end }}
      {{- if and .auth .ctx.Values.auth.enabled }}
      - secret:
          name: {{ include "asyncinfer.authSecretName" .ctx }}
          items:
            - key: {{ include "asyncinfer.authSecretKey" .ctx }}
              path: auth-tokens
      {{- end }}
      {{- if .webhook }}
      - secret:
          name: {{ include "asyncinfer.webhookSecretName" .ctx }}
          items:
            - key: {{ include "asyncinfer.webhookSecretKey" .ctx }}
              path: webhook-secret
      {{- end }}
      {{- with .ctx.Values.objectStore }}
      {{- if and .url .existingSecret }}
      - secret:
          name: {{ .existingSecret }}
          items:
            - key: {{ .accessKeyIdKey }}
              path: aws-access-key-id
            - key: {{ .secretAccessKeyKey }}
              path: aws-secret-access-key
      {{- end }}
      {{- end }}
      {{- if and .ctx.Values.tracing.enabled .ctx.Values.tracing.headersSecret }}
      - secret:
          name: {{ .ctx.Values.tracing.headersSecret }}
          items:
            - key: {{ .ctx.Values.tracing.headersSecretKey }}
              path: otlp-headers
      {{- end }}
{{- end }}

{{/*
OpenTelemetry tracing (`tracing`): the standard OTEL_* variables of one process; nothing when off (the
process then never imports the tracing SDK). Headers (an API key) are a Secret file: TRACING_HEADERS_FILE,
in asyncinfer.secretsVolume and asyncinfer.secretFileEnv.
*/}}
{{- define "asyncinfer.tracingEnv" -}}
{{- $t := .ctx.Values.tracing -}}
{{- if $t.enabled }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ $t.endpoint | quote }}
- name: OTEL_EXPORTER_OTLP_PROTOCOL
  value: http/protobuf
- name: OTEL_SERVICE_NAME
  value: {{ .service | quote }}
- name: OTEL_TRACES_SAMPLER
  value: {{ $t.sampler | quote }}
{{- if $t.samplerArg }}
- name: OTEL_TRACES_SAMPLER_ARG
  value: {{ $t.samplerArg | quote }}
{{- end }}
- name: OTEL_RESOURCE_ATTRIBUTES
  value: {{ printf "service.namespace=%s,deployment.environment.name=%s" .ctx.Release.Name .ctx.Release.Namespace | quote }}
{{- end }}
{{- end -}}

{{/*
The egress rule to the tracing collector (tracing.collector.to on tracing.collector.port), for a pod
whose egress is restricted; nothing when tracing is off.
*/}}
{{- define "asyncinfer.collectorEgress" -}}
{{- $t := .Values.tracing -}}
{{- if $t.enabled }}
- to:
    {{- toYaml $t.collector.to | nindent 4 }}
  ports:
    - port: {{ $t.collector.port }}
      protocol: TCP
{{- end }}
{{- end -}}

{{/*
Return the *_FILE env entries matching asyncinfer.secretsVolume. Call with the same dict.
*/}}
{{- define "asyncinfer.secretFileEnv" -}}
- name: REDIS_PASSWORD_FILE
  value: {{ printf "%s/redis-password" (include "asyncinfer.secretsDir" .ctx) | quote }}
{{- if include "asyncinfer.redisSentinelSecretKey" .ctx }}
- name: REDIS_SENTINEL_PASSWORD_FILE
  value: {{ printf "%s/redis-sentinel-password" (include "asyncinfer.secretsDir" .ctx) | quote }}
{{- end }}
{{- if and .auth .ctx.Values.auth.enabled }}
- name: AUTH_TOKENS_FILE
  value: {{ printf "%s/auth-tokens" (include "asyncinfer.secretsDir" .ctx) | quote }}
{{- end }}
{{- if .webhook }}
- name: WEBHOOK_SECRET_FILE
  value: {{ printf "%s/webhook-secret" (include "asyncinfer.secretsDir" .ctx) | quote }}
{{- end }}
{{- if and .ctx.Values.objectStore.url .ctx.Values.objectStore.existingSecret }}
- name: AWS_ACCESS_KEY_ID_FILE
  value: {{ printf "%s/aws-access-key-id" (include "asyncinfer.secretsDir" .ctx) | quote }}
- name: AWS_SECRET_ACCESS_KEY_FILE
  value: {{ printf "%s/aws-secret-access-key" (include "asyncinfer.secretsDir" .ctx) | quote }}
{{- end }}
{{- if and .ctx.Values.tracing.enabled .ctx.Values.tracing.headersSecret }}
- name: TRACING_HEADERS_FILE
  value: {{ printf "%s/otlp-headers" (include "asyncinfer.secretsDir" .ctx) | quote }}
{{- end }}
{{- end }}

{{/*
Return true when helm talks to a cluster (install, upgrade, server dry-run): listing Secrets in the
release namespace then returns a list, while an offline render (`helm template`, `helm lint`) gets an
empty map. Helm itself lists those Secrets (its release records), so no extra permission is needed.
*/}}
{{- define "asyncinfer.clusterReachable" -}}
{{- if lookup "v1" "Secret" .Release.Namespace "" }}true{{ end }}
{{- end }}

{{/*
Return a generated secret value, base64-encoded: the one already in the cluster when the Secret exists
(kept across upgrades), a random one on a live install, or, offline, the `offline` value the caller
passes (deterministic, so two `helm template` runs give identical output).
Call with (dict "ctx" $ "name" secretName "key" dataKey "random" randomValue "offline" offlineValue).
*/}}
{{- define "asyncinfer.generatedSecretValue" -}}
{{- $existing := lookup "v1" "Secret" .ctx.Release.Namespace .name }}
{{- if and $existing $existing.data (hasKey $existing.data .key) }}
{{- index $existing.data .key }}
{{- else if include "asyncinfer.clusterReachable" .ctx }}
{{- .random | b64enc }}
{{- else }}
{{- .offline | b64enc }}
{{- end }}
{{- end }}

{{/*
Return a deterministic, NOT secret, stand-in for a generated secret in an offline render: derived from
the release's identity so renders are reproducible. GitOps (offline) users must set the existingSecret values.
Call with (dict "ctx" $ "purpose" "redis-password").
*/}}
{{- define "asyncinfer.offlineDerived" -}}
{{- printf "asyncinfer/%s/%s/%s" .ctx.Release.Namespace .ctx.Release.Name .purpose | sha256sum | trunc 32 }}
{{- end }}

{{/*
Return the pod-level security context: non-root with a fixed UID/GID, RuntimeDefault seccomp.
Call with the UID.
*/}}
{{- define "asyncinfer.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ . }}
runAsGroup: {{ . }}
fsGroup: {{ . }}
fsGroupChangePolicy: OnRootMismatch
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/*
Return the container-level security context shared by every container of the chart. Call with the UID.
*/}}
{{- define "asyncinfer.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ . }}
runAsGroup: {{ . }}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/*
Return a Kubernetes quantity ("512Mi", "1G", 1073741824) as a whole number of bytes.
*/}}
{{- define "asyncinfer.bytes" -}}
{{- if kindIs "string" . }}
{{- $number := regexFind "^[0-9]+(\\.[0-9]+)?" . }}
{{- $suffix := trimPrefix $number . }}
{{- $factors := dict "" 1 "k" 1000 "M" 1000000 "G" 1000000000 "T" 1000000000000 "Ki" 1024 "Mi" 1048576 "Gi" 1073741824 "Ti" 1099511627776 }}
{{- if or (not $number) (not (hasKey $factors $suffix)) }}
{{- fail (printf "%q is not a memory quantity this chart understands (bytes, or k/M/G/T/Ki/Mi/Gi/Ti)" .) }}
{{- end }}
{{- printf "%d" (int64 (mulf (float64 $number) (index $factors $suffix))) }}
{{- else }}
{{- printf "%d" (int64 .) }}
{{- end }}
{{- end }}

{{/*
Return a CPU quantity ("500m", "2", 1.5) as whole cores, rounded up, at least 1.
*/}}
{{- define "asyncinfer.cpuCores" -}}
{{- $cpu := toString . }}
{{- $cores := 0.0 }}
{{- if hasSuffix "m" $cpu }}
{{- $cores = divf (float64 (trimSuffix "m" $cpu)) 1000.0 }}
{{- else }}
{{- $cores = float64 $cpu }}
{{- end }}
{{- max 1 (int64 (ceil $cores)) }}
{{- end }}

{{/*
Return Redis's maxmemory in bytes: redis.maxmemory when set (it must be below the memory limit), else
redis.maxmemoryPercent of the container memory limit, leaving the rest for AOF rewrite buffers, client
buffers and fragmentation, so Redis refuses writes (noeviction) before the kernel OOM-kills it.
*/}}
{{- define "asyncinfer.redisMaxmemory" -}}
{{- $r := .Values.redis }}
{{- $limit := int64 (include "asyncinfer.bytes" $r.resources.limits.memory) }}
{{- if $r.maxmemory }}
{{- $explicit := int64 (include "asyncinfer.bytes" $r.maxmemory) }}
{{- if ge $explicit $limit }}
{{- fail (printf "redis.maxmemory (%v = %d bytes) must be below redis.resources.limits.memory (%v = %d bytes), or the kernel OOM-kills Redis before it refuses writes" $r.maxmemory $explicit $r.resources.limits.memory $limit) }}
{{- end }}
{{- $explicit }}
{{- else }}
{{- div (mul $limit (int64 $r.maxmemoryPercent)) 100 }}
{{- end }}
{{- end }}

{{/*
Return the models as a JSON list, each entry with its defaults filled in from config/worker/keda and
the path the services open it at: `image` = the path in the image; `pvc` and `url` = below
/models/<name>, where the claim or the downloaded file is mounted, in the API and the workers alike.
Fails on a duplicate name.
*/}}
{{- define "asyncinfer.models" -}}
{{- $c := .Values.config }}
{{- $w := .Values.worker }}
{{- $k := .Values.keda }}
{{- $seen := dict }}
{{- $out := list }}
{{- $cluster := include "asyncinfer.redisCluster" . }}
{{- /* Helm cannot compute a hash slot: the in-chart Cluster's tags come from files/cluster-tags.json
       (`python -m jobqueue.shards`), per master the tags whose slots it serves once slots are split
       evenly. Model j's shard i goes to master (j + i) mod masters, taking that master's next unused tag. */}}
{{- $columns := list }}
{{- if include "asyncinfer.redisClusterInChart" . }}
{{- $columns = index (.Files.Get "files/cluster-tags.json" | fromJson) (toString (int .Values.redis.cluster.masters)) }}
{{- end }}
{{- $taken := dict }}
{{- range $j, $m := .Values.models }}
{{- if hasKey $seen $m.name }}
{{- fail (printf "models: %q appears twice; every model needs its own name (it names its Redis keys and its worker Deployment)" $m.name) }}
{{- end }}
{{- $_ := set $seen $m.name true }}
{{- $dir := printf "/models/%s" $m.name }}
{{- $path := "" }}
{{- if eq $m.source.type "image" }}
{{- $path = $m.source.path }}
{{- else if eq $m.source.type "pvc" }}
{{- $path = printf "%s/%s" $dir (trimPrefix "/" $m.source.path) }}
{{- else }}
{{- $path = printf "%s/model.onnx" $dir }}
{{- end }}
{{- $mk := $m.keda | default dict }}
{{- $keda := dict }}
{{- range $key := list "minReplicaCount" "maxReplicaCount" "listLength" "activationListLength" }}
{{- $_ := set $keda $key (ternary (index $mk $key) (index $k $key) (hasKey $mk $key)) }}
{{- end }}
{{- $entry := dict "name" $m.name "source" $m.source "dir" $dir "path" $path "keda" $keda }}
{{- range $key := list "maxBatchSize" "maxBatchWaitMs" "inferenceProviders" "inferenceThreads" }}
{{- $_ := set $entry $key (ternary (index $m $key) (index $c $key) (hasKey $m $key)) }}
{{- end }}
{{- range $key := list "replicaCount" "resources" "nodeSelector" "tolerations" "affinity" "startupSeconds" }}
{{- $_ := set $entry $key (ternary (index $m $key) (index $w $key) (hasKey $m $key)) }}
{{- end }}
{{- if and (eq (int $entry.inferenceThreads) 0) (($entry.resources).limits).cpu }}
{{- /* ONNX Runtime's own default is one thread per core of the node, not of the CPU limit: a 2-CPU
       pod on a 64-core node would run 64 threads and be throttled. One per CPU of the limit instead. */}}
{{- $_ := set $entry "inferenceThreads" (include "asyncinfer.cpuCores" $entry.resources.limits.cpu | int) }}
{{- end }}
{{- $_ := set $entry "podAnnotations" (merge (deepCopy ($m.podAnnotations | default dict)) ($w.podAnnotations | default dict)) }}
{{- $_ := set $entry "labels" ($m.labels | default list) }}
{{- $_ := set $entry "sizeLimit" $.Values.modelFetch.sizeLimit }}
{{- $tags := $m.tags | default list }}
{{- $shards := int ($m.shards | default $c.queueShards) }}
{{- if $cluster }}
{{- if and $tags (hasKey $m "shards") (ne (int $m.shards) (len $tags)) }}
{{- fail (printf "model %s: shards (%d) differs from the number of its tags (%d)" $m.name (int $m.shards) (len $tags)) }}
{{- end }}
{{- if $tags }}
{{- $shards = len $tags }}
{{- else if $columns }}
{{- range $i := until $shards }}
{{- $master := mod (add $j $i) (len $columns) }}
{{- $column := index $columns $master }}
{{- $next := int (get $taken (toString $master) | default 0) }}
{{- if ge $next (len $column) }}
{{- fail (printf "model %s: master %d has no unused tag left in files/cluster-tags.json (%d per master): fewer shards, or more redis.cluster.masters" $m.name $master (len $column)) }}
{{- end }}
{{- $tags = append $tags (index $column $next) }}
{{- $_ := set $taken (toString $master) (add1 $next) }}
{{- end }}
{{- else if $.Values.keda.enabled }}
{{- fail (printf "model %s: with redis.external.cluster and keda.enabled every model needs `tags` (its shards' hash tags, e.g. from `python -m jobqueue.shards` against your Cluster's slot map): KEDA's triggers must name the keys" $m.name) }}
{{- end }}
{{- else if or $tags (gt (int ($m.shards | default 1)) 1) }}
{{- fail (printf "model %s: `shards` above 1 and `tags` need a Redis Cluster (redis.architecture=cluster or redis.external.cluster)" $m.name) }}
{{- end }}
{{- if $cluster }}
{{- $_ := set $entry "cluster" true }}
{{- $_ := set $entry "shards" $shards }}
{{- $_ := set $entry "tags" $tags }}
{{- end }}
{{- $out = append $out $entry }}
{{- end }}
{{- toJson $out }}
{{- end }}

{{/*
Return the name of the default model: config.defaultModel, or the first entry of `models`.
*/}}
{{- define "asyncinfer.defaultModel" -}}
{{- default (first .Values.models).name .Values.config.defaultModel }}
{{- end }}

{{/*
Return one model's MODELS_FILE entry (YAML, the keys jobqueue/models.py reads). `labels` there is a
file: the model's label list, rendered as labels-<name>.json in the same ConfigMap. Call with the model.
*/}}
{{- define "asyncinfer.modelsFileEntry" -}}
{{ .name }}:
  path: {{ .path | quote }}
  max_batch_size: {{ .maxBatchSize }}
  max_batch_wait_ms: {{ .maxBatchWaitMs }}
  inference_providers: {{ .inferenceProviders | quote }}
  inference_threads: {{ .inferenceThreads }}
  {{- if .labels }}
  labels: {{ printf "/etc/asyncinfer/models/labels-%s.json" .name | quote }}
  {{- end }}
  {{- if .cluster }}
  shards: {{ .shards }}
  {{- with .tags }}
  tags: {{ toJson . }}
  {{- end }}
  {{- end }}
{{- end }}

{{/*
Return the configMap volume items one model needs: its MODELS_FILE entry (`model-<name>.yaml`, for its
workers) or none, and its labels file when it has labels. Call with (dict "model" m "own" bool).
*/}}
{{- define "asyncinfer.modelFileItems" -}}
{{- if .own }}
- key: {{ printf "model-%s.yaml" .model.name }}
  path: {{ printf "model-%s.yaml" .model.name }}
{{- end }}
{{- if .model.labels }}
- key: {{ printf "labels-%s.json" .model.name }}
  path: {{ printf "labels-%s.json" .model.name }}
{{- end }}
{{- end }}

{{/*
Return the pod volumes that put one model's file where its `path` says (none for `image` sources).
Call with the model.
*/}}
{{- define "asyncinfer.modelVolume" -}}
{{- if eq .source.type "pvc" }}
- name: {{ printf "model-%s" .name }}
  persistentVolumeClaim:
    claimName: {{ .source.claimName | quote }}
    readOnly: true
{{- else if eq .source.type "url" }}
- name: {{ printf "model-%s" .name }}
  emptyDir:
    sizeLimit: {{ .sizeLimit | quote }}
{{- end }}
{{- end }}

{{/*
Return the volumeMounts of one model (read-only; none for `image` sources). Call with the model.
*/}}
{{- define "asyncinfer.modelMount" -}}
{{- if ne .source.type "image" }}
- name: {{ printf "model-%s" .name }}
  mountPath: {{ .dir | quote }}
  readOnly: true
{{- end }}
{{- end }}

{{/*
Return the init container that downloads a `url` model into its emptyDir and refuses it unless its
sha256 matches (`sha256sum -c` exits non-zero, the init container fails, the pod never starts).
Runs on the pod's own image (it has python3 and coreutils). Call with (dict "ctx" $ "model" m "image" img "pullPolicy" p "uid" uid).
*/}}
{{- define "asyncinfer.modelFetchInitContainer" -}}
{{- if eq .model.source.type "url" }}
- name: {{ printf "fetch-model-%s" .model.name }}
  image: {{ .image | quote }}
  imagePullPolicy: {{ .pullPolicy }}
  command:
    - sh
    - -c
    - |
      set -eu
      part="$MODEL_DIR/model.onnx.part"
      python3 -c 'import shutil, sys, urllib.request; shutil.copyfileobj(urllib.request.urlopen(sys.argv[1], timeout=float(sys.argv[3])), open(sys.argv[2], "wb"))' "$MODEL_URL" "$part" "$FETCH_TIMEOUT_S"
      echo "$MODEL_SHA256  $part" | sha256sum -c -
      mv "$part" "$MODEL_DIR/model.onnx"
  env:
    - name: MODEL_URL
      value: {{ .model.source.url | quote }}
    - name: MODEL_SHA256
      value: {{ .model.source.sha256 | quote }}
    - name: MODEL_DIR
      value: {{ .model.dir | quote }}
    - name: FETCH_TIMEOUT_S
      value: {{ .ctx.Values.modelFetch.timeoutSeconds | quote }}
  resources:
    {{- toYaml .ctx.Values.modelFetch.resources | nindent 4 }}
  securityContext:
    {{- include "asyncinfer.containerSecurityContext" .uid | nindent 4 }}
  volumeMounts:
    - name: {{ printf "model-%s" .model.name }}
      mountPath: {{ .model.dir | quote }}
    - name: tmp
      mountPath: /tmp
{{- end }}
{{- end }}

{{/*
Return nothing, or fail with one clear message when values contradict each other.
*/}}
{{- define "asyncinfer.validateValues" -}}
{{- $c := .Values.config }}
{{- if and .Values.tracing.enabled (not .Values.tracing.endpoint) }}
{{- fail "tracing.enabled needs tracing.endpoint: the collector's OTLP/HTTP base URL (e.g. http://otel-collector.observability:4318)" }}
{{- end }}
{{- if lt (float64 $c.drainTimeoutSeconds) (float64 $c.jobTimeoutSeconds) }}
{{- fail (printf "config.drainTimeoutSeconds (%v) must be at least config.jobTimeoutSeconds (%v): a routine scale-in would abort a batch still within its time and run it again elsewhere" $c.drainTimeoutSeconds $c.jobTimeoutSeconds) }}
{{- end }}
{{- if and .Values.worker.terminationGracePeriodSeconds (le (float64 .Values.worker.terminationGracePeriodSeconds) (float64 $c.drainTimeoutSeconds)) }}
{{- fail (printf "worker.terminationGracePeriodSeconds (%v) must be greater than config.drainTimeoutSeconds (%v), or Kubernetes kills workers mid-drain" .Values.worker.terminationGracePeriodSeconds $c.drainTimeoutSeconds) }}
{{- end }}
{{- if le (float64 .Values.api.terminationGracePeriodSeconds) (float64 $c.shutdownDelaySeconds) }}
{{- fail (printf "api.terminationGracePeriodSeconds (%v) must be greater than config.shutdownDelaySeconds (%v), or the API is killed before it stops taking traffic" .Values.api.terminationGracePeriodSeconds $c.shutdownDelaySeconds) }}
{{- end }}
{{- if and .Values.scaleIn.idleFirst .Values.keda.enabled }}
{{- $window := ((.Values.keda.behavior).scaleDown).stabilizationWindowSeconds | default 300 }}
{{- if ge (float64 .Values.scaleIn.debounceSeconds) (float64 $window) }}
{{- fail (printf "scaleIn.debounceSeconds (%v) must be under keda.behavior.scaleDown.stabilizationWindowSeconds (%v): a worker's pod-deletion-cost must be current before the HPA lowers the count, or a scale-in may take a busy worker while an idle one stays" .Values.scaleIn.debounceSeconds $window) }}
{{- end }}
{{- end }}
{{- if gt (int $c.requestTtlSeconds) (int $c.jobTtlSeconds) }}
{{- fail (printf "config.requestTtlSeconds (%d) must not exceed config.jobTtlSeconds (%d): a pending job's record must outlive its start deadline" (int $c.requestTtlSeconds) (int $c.jobTtlSeconds)) }}
{{- end }}
{{- if gt (float64 $c.recoveryIntervalSeconds) (mulf (float64 $c.workerTtlSeconds) 10.0) }}
{{- fail (printf "config.recoveryIntervalSeconds (%v) must be at most 10x config.workerTtlSeconds (%v)" $c.recoveryIntervalSeconds $c.workerTtlSeconds) }}
{{- end }}
{{- if eq (int .Values.api.metricsPort) (int .Values.api.containerPort) }}
{{- fail (printf "api.metricsPort (%d) must differ from api.containerPort: /metrics gets its own listener, kept out of the Ingress" (int .Values.api.metricsPort)) }}
{{- end }}
{{- if and .Values.monitoring.serviceMonitor.enabled (eq (int .Values.api.metricsPort) 0) }}
{{- fail "monitoring.serviceMonitor.enabled needs api.metricsPort > 0: the ServiceMonitor scrapes the API's metrics port" }}
{{- end }}
{{- with .Values.redis.auth.existingSecret }}
{{- with lookup "v1" "Secret" $.Release.Namespace . }}
{{- $stored := index (.data | default dict) $.Values.redis.auth.existingSecretPasswordKey | default "" | b64dec }}
{{- if ne $stored (trim $stored) }}
{{- fail (printf "redis.auth.existingSecret %s: the password has leading or trailing whitespace (a newline from `echo`?); KEDA would send it as it is while Redis and the services strip it. Store it without: kubectl create secret generic ... --from-literal" .metadata.name) }}
{{- end }}
{{- end }}
{{- end }}
{{- if and .Values.redis.auth.existingSecret .Values.redis.auth.password }}
{{- fail "redis.auth.password and redis.auth.existingSecret are mutually exclusive: the password comes from the existing Secret" }}
{{- end }}
{{- $names := list }}
{{- range $m := include "asyncinfer.models" . | fromJsonArray }}
{{- $names = append $names $m.name }}
{{- if eq $m.source.type "pvc" }}
{{- $modes := list $m.source.accessMode }}
{{- with lookup "v1" "PersistentVolumeClaim" $.Release.Namespace $m.source.claimName }}
{{- $modes = .spec.accessModes | default $modes }}
{{- end }}
{{- if not (or (has "ReadOnlyMany" $modes) (has "ReadWriteMany" $modes)) }}
{{- fail (printf "model %s: claim %q is %s, but the API pods and every worker of the model mount it, on any node (a ReadWriteOnce volume attaches to one node: the others hang on Multi-Attach). Use a ReadOnlyMany or ReadWriteMany claim (NFS, EFS, Filestore, Azure Files, or a ROX clone of the volume), or a `url` source" $m.name $m.source.claimName (join "," $modes)) }}
{{- end }}
{{- end }}
{{- if and $.Values.keda.enabled (eq (int $m.keda.minReplicaCount) 0) (gt (int $m.keda.activationListLength) 0) }}
{{- fail (printf "model %s: keda minReplicaCount 0 with activationListLength %d strands up to %d jobs with no worker until they expire; use activationListLength 0 (scale up on the first job) or minReplicaCount >= 1" $m.name (int $m.keda.activationListLength) (int $m.keda.activationListLength)) }}
{{- end }}
{{- if and $.Values.keda.enabled (gt (int $m.keda.minReplicaCount) (int $m.keda.maxReplicaCount)) }}
{{- fail (printf "model %s: keda minReplicaCount (%d) must not exceed maxReplicaCount (%d)" $m.name (int $m.keda.minReplicaCount) (int $m.keda.maxReplicaCount)) }}
{{- end }}
{{- end }}
{{- if and $c.defaultModel (not (has $c.defaultModel $names)) }}
{{- fail (printf "config.defaultModel %q is not one of the models (%s)" $c.defaultModel (join ", " $names)) }}
{{- end }}
{{- $_ := include "asyncinfer.redisMaxmemory" . }}
{{- include "asyncinfer.validateRedisTopology" . }}
{{- end }}

{{/*
Return nothing, or fail with one clear message when the Redis topology values (redis.architecture,
redis.replication, redis.external) contradict each other.
*/}}
{{- define "asyncinfer.validateRedisTopology" -}}
{{- $rep := .Values.redis.replication }}
{{- $ext := .Values.redis.external }}
{{- if and (gt (int .Values.config.queueShards) 1) (not (include "asyncinfer.redisCluster" .)) }}
{{- fail (printf "config.queueShards (%d) above 1 needs a Redis Cluster (redis.architecture=cluster or redis.external.cluster): shards spread a queue over its masters" (int .Values.config.queueShards)) }}
{{- end }}
{{- if and (include "asyncinfer.redisCluster" .) (regexMatch "[{}]" .Values.config.keyPrefix) }}
{{- fail "config.keyPrefix must not hold a hash tag ({...}) on a Redis Cluster: the models' tags follow it" }}
{{- end }}
{{- if $ext.enabled }}
{{- if ne .Values.redis.architecture "standalone" }}
{{- fail (printf "redis.external.enabled and redis.architecture=%s are mutually exclusive: with an external Redis the chart runs none (leave architecture standalone; redis.external.cluster for a Cluster)" .Values.redis.architecture) }}
{{- end }}
{{- if and $ext.cluster $ext.sentinels }}
{{- fail "redis.external.cluster and redis.external.sentinels are mutually exclusive: a Cluster fails over on its own" }}
{{- end }}
{{- if and $ext.cluster (not (has (trimPrefix "/" ((urlParse $ext.url).path | default "")) (list "" "0"))) }}
{{- fail "redis.external.cluster: redis.external.url must name db 0 (a Redis Cluster has no other)" }}
{{- end }}
{{- if not .Values.redis.auth.existingSecret }}
{{- fail "redis.external.enabled needs redis.auth.existingSecret: the external Redis's password (and redis.external.sentinelPasswordKey, the Sentinels') are read from that Secret, mounted as files" }}
{{- end }}
{{- if not $ext.url }}
{{- fail "redis.external.enabled needs redis.external.url (redis://host:port/db or rediss://...): it gives the db, the user and TLS, and the address when no Sentinels are listed" }}
{{- end }}
{{- if contains ":" ((urlParse $ext.url).userinfo | default "") }}
{{- fail "redis.external.url must not carry a password: it comes from redis.auth.existingSecret, as a file" }}
{{- end }}
{{- if and $ext.sentinelPasswordKey (not $ext.sentinels) }}
{{- fail "redis.external.sentinelPasswordKey is set but redis.external.sentinels is empty" }}
{{- end }}
{{- if and .Values.networkPolicy.enabled .Values.notifier.enabled .Values.notifier.egress.restrict (not $ext.egressCidrs) }}
{{- fail "notifier.egress.restrict with redis.external needs redis.external.egressCidrs: the ranges the external Redis (and its Sentinels) live in, or the notifier cannot reach them" }}
{{- end }}
{{- else if eq .Values.redis.architecture "replication" }}
{{- if gt (int $rep.quorum) (int $rep.replicas) }}
{{- fail (printf "redis.replication.quorum (%d) must not exceed redis.replication.replicas (%d): no failover could ever start" (int $rep.quorum) (int $rep.replicas)) }}
{{- end }}
{{- if ge (int $rep.minReplicasToWrite) (int $rep.replicas) }}
{{- fail (printf "redis.replication.minReplicasToWrite (%d) must be below redis.replication.replicas (%d): the primary would refuse every write" (int $rep.minReplicasToWrite) (int $rep.replicas)) }}
{{- end }}
{{- if ge (int $rep.minReplicasAck) (int $rep.replicas) }}
{{- fail (printf "redis.replication.minReplicasAck (%d) must be below redis.replication.replicas (%d): no submit could ever be acknowledged" (int $rep.minReplicasAck) (int $rep.replicas)) }}
{{- end }}
{{- if eq (int $rep.sentinelPort) (int .Values.redis.port) }}
{{- fail (printf "redis.replication.sentinelPort (%d) must differ from redis.port: both listen in the same pod" (int $rep.sentinelPort)) }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Return the name of one model's worker objects (Deployment, ScaledObject, PDB): `<fullname>-worker-<model>`,
at most 63 characters (KEDA puts the ScaledObject's name in a label of its HPA).
Call with (dict "ctx" $ "model" name).
*/}}
{{- define "asyncinfer.workerName" -}}
{{- include "asyncinfer.fitName" (dict "prefix" (include "asyncinfer.fullname" .ctx) "suffix" (printf "-worker-%s" .model) "max" 63) }}
{{- end }}

{{/*
Return the workers' termination grace period: worker.terminationGracePeriodSeconds, or (0) the drain
time plus 15 s for handing held jobs back and exiting.
*/}}
{{- define "asyncinfer.workerGracePeriod" -}}
{{- if .Values.worker.terminationGracePeriodSeconds }}
{{- .Values.worker.terminationGracePeriodSeconds }}
{{- else }}
{{- add (int (ceil .Values.config.drainTimeoutSeconds)) 15 }}
{{- end }}
{{- end }}

{{/*
Return the longest an API request may legitimately take, in seconds: the Open Inference Protocol wait
(config.oipWaitSeconds) or a long poll (`?wait=`, at most MAX_WAIT_S = 30 in api/routes/jobs.py).
*/}}
{{- define "asyncinfer.longestRequestSeconds" -}}
{{- max 30 (int (ceil .Values.config.oipWaitSeconds)) }}
{{- end }}

{{/*
Return the selector labels of one model's worker pods. Call with (dict "ctx" $ "model" name).
*/}}
{{- define "asyncinfer.workerSelectorLabels" -}}
{{ include "asyncinfer.selectorLabels" (dict "ctx" .ctx "component" "worker") }}
asyncinfer.io/model: {{ .model }}
{{- end }}

{{/*
Return shell lines that set $redis_password_quoted: the Redis password file's bytes without surrounding
ASCII whitespace (what the services' Settings.secret() reads; the chart's own Secrets hold no such
whitespace, so KEDA, which takes the Secret's bytes as they are, reads the same password), written as a
Redis config/redis-cli string of \xHH escapes: a quote, a backslash or a space reaches Redis unchanged.
*/}}
{{- define "asyncinfer.redisPasswordShell" -}}
hex=$(od -An -v -tx1 {{ include "asyncinfer.secretsDir" . }}/redis-password | tr -d ' \n')
while :; do case "$hex" in 09*|0a*|0b*|0c*|0d*|1c*|1d*|1e*|1f*|20*) hex=${hex#??} ;; *) break ;; esac; done
while :; do case "$hex" in *09|*0a|*0b|*0c|*0d|*1c|*1d|*1e|*1f|*20) hex=${hex%??} ;; *) break ;; esac; done
redis_password_quoted="\"$(printf '%s' "$hex" | sed 's/../\\x&/g')\""
{{- end }}

{{/*
Return the environment files/redis-replication.sh reads, the same for its redis and sentinel containers:
this pod's announced name (the downward API's pod name under the headless Service), the first pod's
(the primary of a brand-new set), every Sentinel, and Sentinel's failover settings.
*/}}
{{- define "asyncinfer.redisReplicationEnv" -}}
{{- $rep := .Values.redis.replication }}
{{- $hosts := splitList "," (include "asyncinfer.redisPodHosts" .) }}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: SELF_HOST
  value: {{ printf "$(POD_NAME).%s" (include "asyncinfer.redisHost" .) | quote }}
- name: PRIMARY_HOST
  value: {{ first $hosts | quote }}
- name: REDIS_PORT
  value: {{ .Values.redis.port | quote }}
- name: SENTINEL_PORT
  value: {{ $rep.sentinelPort | quote }}
- name: SENTINELS
  value: {{ include "asyncinfer.redisSentinels" . | replace "," " " | quote }}
- name: MASTER_SET
  value: {{ $rep.masterSet | quote }}
- name: PASSWORD_FILE
  value: {{ printf "%s/redis-password" (include "asyncinfer.secretsDir" .) | quote }}
- name: SENTINEL_CONF
  value: /data/sentinel.conf
- name: QUORUM
  value: {{ $rep.quorum | quote }}
- name: DOWN_AFTER_MS
  value: {{ $rep.downAfterMilliseconds | quote }}
- name: FAILOVER_TIMEOUT_MS
  value: {{ $rep.failoverTimeoutMilliseconds | quote }}
- name: DISCOVERY_WAIT_S
  value: {{ $rep.discoveryWaitSeconds | quote }}
{{- end }}

{{/*
Return one KEDA trigger reading the length of a key (LLEN of a list, ZCARD of a sorted set): `redis` at
the Redis address, or `redis-sentinel` asking the Sentinels for the primary first (replication, or an
external Redis behind Sentinels). Same db and TLS as REDIS_URL.
Call with (dict "ctx" $ "name" triggerName "key" redisKey "listLength" target).
*/}}
{{- define "asyncinfer.kedaRedisTrigger" -}}
{{- $url := urlParse (include "asyncinfer.redisUrl" .ctx) }}
{{- $sentinels := include "asyncinfer.redisSentinels" .ctx -}}
{{- $cluster := include "asyncinfer.redisCluster" .ctx -}}
- type: {{ if $cluster }}redis-cluster{{ else }}{{ ternary "redis-sentinel" "redis" (ne $sentinels "") }}{{ end }}
  name: {{ .name }}
  metadata:
    {{- if $cluster }}
    # Any node: KEDA reads the slot map from it and asks the node serving the key.
    addresses: {{ include "asyncinfer.redisAddress" .ctx | quote }}
    {{- else if $sentinels }}
    addresses: {{ $sentinels | quote }}
    sentinelMaster: {{ include "asyncinfer.redisSentinelMaster" .ctx | quote }}
    {{- else }}
    address: {{ include "asyncinfer.redisAddress" .ctx | quote }}
    {{- end }}
    {{- with $url.userinfo }}
    username: {{ . | quote }}
    {{- end }}
    listName: {{ .key | quote }}
    listLength: {{ .listLength | quote }}
    {{- if not $cluster }}
    databaseIndex: {{ trimPrefix "/" $url.path | default "0" | quote }}
    {{- end }}
    {{- if eq $url.scheme "rediss" }}
    enableTLS: "true"
    {{- end }}
  authenticationRef:
    name: {{ include "asyncinfer.componentName" (dict "ctx" .ctx "component" "worker") }}
{{- end }}

{{/*
Egress rules every restricted pod needs (a list of NetworkPolicyEgressRule): DNS, and this release's
Redis (with its Sentinels under replication) or the external one in redis.external.egressCidrs.
*/}}
{{- define "asyncinfer.egressDnsAndRedis" -}}
# DNS to any address: kube-dns pods, NodeLocal DNSCache's link-local address (169.254.20.10) and
# GKE's node-local resolvers all answer on port 53, and no selector names all of them.
- ports:
    - port: 53
      protocol: UDP
    - port: 53
      protocol: TCP
{{- if .Values.redis.external.enabled }}
# The external Redis and its Sentinels, in the ranges redis.external.egressCidrs names.
- to:
    {{- range .Values.redis.external.egressCidrs }}
    - ipBlock:
        cidr: {{ . }}
    {{- end }}
  ports:
    {{- $ports := list (int (regexFind "[0-9]+$" (include "asyncinfer.redisAddress" .))) }}
    {{- range .Values.redis.external.sentinels }}
    {{- $ports = append $ports (int (regexFind "[0-9]+$" .)) }}
    {{- end }}
    {{- range $ports | uniq }}
    - port: {{ . }}
      protocol: TCP
    {{- end }}
{{- else }}
- to:
    - podSelector:
        matchLabels:
          {{- include "asyncinfer.selectorLabels" (dict "ctx" . "component" "redis") | nindent 10 }}
  ports:
    - port: {{ .Values.redis.port }}
      protocol: TCP
    {{- if include "asyncinfer.redisReplication" . }}
    - port: {{ .Values.redis.replication.sentinelPort }}
      protocol: TCP
    {{- end }}
{{- end }}
{{- end }}

{{/*
The object store's port: the one objectStore.endpoint names, else its scheme's (AWS S3: 443).
*/}}
{{- define "asyncinfer.objectStorePort" -}}
{{- $endpoint := .Values.objectStore.endpoint | default "https://s3.amazonaws.com" }}
{{- $host := (urlParse $endpoint).host }}
{{- if regexMatch ":[0-9]+$" $host }}{{ regexFind "[0-9]+$" $host }}{{ else }}{{ ternary "80" "443" (hasPrefix "http://" $endpoint) }}{{ end }}
{{- end }}

{{/*
The API's or the workers' egress under networkPolicy.egress.restrict (a list of NetworkPolicyEgressRule):
DNS, Redis, the object store when objectStore.url is set, the Kubernetes API for workers that keep their
pod-deletion-cost (scaleIn.idleFirst), the tracing collector, and networkPolicy.egress.extra. Nothing else:
not the cluster, not the internet. `component`: "api" or "worker".
*/}}
{{- define "asyncinfer.restrictedEgress" -}}
{{- $ := .ctx }}
{{- $egress := $.Values.networkPolicy.egress }}
{{- include "asyncinfer.egressDnsAndRedis" $ }}
{{- if $.Values.objectStore.url }}
{{- if not $.Values.objectStore.egressCidrs }}
{{- fail "networkPolicy.egress.restrict with objectStore.url needs objectStore.egressCidrs: the ranges the object store's endpoint resolves to (for AWS S3, the region's S3 prefixes from ip-ranges.json, or a VPC endpoint's)" }}
{{- end }}
# The object store (objectStore.egressCidrs), on objectStore.endpoint's port.
- to:
    {{- range $.Values.objectStore.egressCidrs }}
    - ipBlock:
        cidr: {{ . }}
    {{- end }}
  ports:
    - port: {{ include "asyncinfer.objectStorePort" $ }}
      protocol: TCP
{{- end }}
{{- if and (eq .component "worker") $.Values.scaleIn.idleFirst }}
{{- if not $egress.kubernetesApiCidrs }}
{{- fail "networkPolicy.egress.restrict with scaleIn.idleFirst needs networkPolicy.egress.kubernetesApiCidrs: workers patch their pod's deletion cost through the Kubernetes API (kubectl get endpoints kubernetes -n default)" }}
{{- end }}
# The Kubernetes API, for the worker's own pod-deletion-cost (scaleIn.idleFirst): its endpoints' addresses
# and ports, since policies apply after the `kubernetes` Service's address is translated.
- to:
    {{- range $egress.kubernetesApiCidrs }}
    - ipBlock:
        cidr: {{ . }}
    {{- end }}
  ports:
    {{- range $egress.kubernetesApiPorts }}
    - port: {{ . }}
      protocol: TCP
    {{- end }}
{{- end }}
{{- include "asyncinfer.collectorEgress" $ }}
{{- range $m := include "asyncinfer.models" $ | fromJsonArray }}
{{- if and (eq $m.source.type "url") (not $egress.extra) }}
{{- fail (printf "networkPolicy.egress.restrict: model %s is downloaded from %s by an init container of the API and worker pods; allow that host in networkPolicy.egress.extra" $m.name $m.source.url) }}
{{- end }}
{{- end }}
{{- with $egress.extra }}
{{ toYaml . }}
{{- end }}
{{- end }}
