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
Return the name of one component's objects: `<fullname>-<component>`.
*/}}
{{- define "asyncinfer.componentName" -}}
{{- printf "%s-%s" (include "asyncinfer.fullname" .ctx) .component }}
{{- end }}

{{/*
Return the image reference of a component; the tag defaults to the chart appVersion.
Call with (dict "ctx" $ "image" .Values.api.image).
*/}}
{{- define "asyncinfer.image" -}}
{{- printf "%s:%s" .image.repository (default .ctx.Chart.AppVersion .image.tag) }}
{{- end }}

{{/*
Return the queue name: the one value the ConfigMap (QUEUE_NAME) and the ScaledObject (listName) both use.
*/}}
{{- define "asyncinfer.queueName" -}}
{{- .Values.config.queueName }}
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
{{- printf "%s:%d" (include "asyncinfer.redisHost" .) (int .Values.redis.port) }}
{{- end }}

{{/*
Return REDIS_URL without a password: the services read it from REDIS_PASSWORD (the Secret) instead.
*/}}
{{- define "asyncinfer.redisUrl" -}}
{{- printf "redis://%s/0" (include "asyncinfer.redisAddress" .) }}
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
Return the REDIS_PASSWORD env entry every Redis client container gets from the Secret.
*/}}
{{- define "asyncinfer.redisPasswordEnv" -}}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "asyncinfer.redisSecretName" . }}
      key: {{ include "asyncinfer.redisSecretKey" . }}
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
Return the container-level security context shared by every container of the chart.
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
Return the in-flight sorted set KEDA's second trigger counts (ZCARD), as the workers name it.
*/}}
{{- define "asyncinfer.inflightKey" -}}
{{- printf "%s:inflight" (include "asyncinfer.queueName" .) }}
{{- end }}

{{/*
Return nothing, or fail with one clear message when values contradict each other.
*/}}
{{- define "asyncinfer.validateValues" -}}
{{- $c := .Values.config }}
{{- if le (float64 .Values.worker.terminationGracePeriodSeconds) (float64 $c.drainTimeoutSeconds) }}
{{- fail (printf "worker.terminationGracePeriodSeconds (%v) must be greater than config.drainTimeoutSeconds (%v), or Kubernetes kills workers mid-drain" .Values.worker.terminationGracePeriodSeconds $c.drainTimeoutSeconds) }}
{{- end }}
{{- if le (float64 .Values.api.terminationGracePeriodSeconds) (float64 $c.shutdownDelaySeconds) }}
{{- fail (printf "api.terminationGracePeriodSeconds (%v) must be greater than config.shutdownDelaySeconds (%v), or the API is killed before it stops taking traffic" .Values.api.terminationGracePeriodSeconds $c.shutdownDelaySeconds) }}
{{- end }}
{{- if gt (int $c.requestTtlSeconds) (int $c.jobTtlSeconds) }}
{{- fail (printf "config.requestTtlSeconds (%d) must not exceed config.jobTtlSeconds (%d): a pending job's record must outlive its start deadline" (int $c.requestTtlSeconds) (int $c.jobTtlSeconds)) }}
{{- end }}
{{- if and .Values.keda.enabled (gt (int .Values.keda.minReplicaCount) (int .Values.keda.maxReplicaCount)) }}
{{- fail (printf "keda.minReplicaCount (%d) must not exceed keda.maxReplicaCount (%d)" (int .Values.keda.minReplicaCount) (int .Values.keda.maxReplicaCount)) }}
{{- end }}
{{- if and .Values.redis.auth.existingSecret .Values.redis.auth.password }}
{{- fail "redis.auth.password and redis.auth.existingSecret are mutually exclusive: the password comes from the existing Secret" }}
{{- end }}
{{- end }}
