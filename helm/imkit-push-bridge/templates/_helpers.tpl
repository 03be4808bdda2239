{{/* Names ------------------------------------------------------------------------------ */}}

{{- define "bridge.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "bridge.fullname" -}}
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

{{- define "bridge.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "bridge.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "bridge.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Secret holding every credential; the chart never creates it. */}}
{{- define "bridge.secretName" -}}
{{- default (include "bridge.fullname" .) .Values.secrets.existingSecret }}
{{- end }}

{{- define "bridge.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* Labels ------------------------------------------------------------------------------ */}}

{{- define "bridge.selectorLabels" -}}
app.kubernetes.io/name: {{ include "bridge.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "bridge.labels" -}}
helm.sh/chart: {{ include "bridge.chart" . }}
{{ include "bridge.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: imkit-push-bridge
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Call with (dict "root" $ "component" "api"). */}}
{{- define "bridge.componentSelectorLabels" -}}
{{ include "bridge.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "bridge.componentLabels" -}}
{{ include "bridge.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Store ------------------------------------------------------------------------------- */}}

{{- define "bridge.redisHost" -}}
{{- printf "%s-redis" (include "bridge.fullname" .) }}
{{- end }}

{{/* BRIDGE_STORE when it is not taken from the Secret. */}}
{{- define "bridge.storeUrl" -}}
{{- if eq .Values.mode "embedded" }}
{{- "sqlite:////data/bridge.db" }}
{{- else if .Values.redis.enabled }}
{{- printf "redis://%s:6379/0" (include "bridge.redisHost" .) }}
{{- else }}
{{- .Values.externalRedis.url }}
{{- end }}
{{- end }}

{{- define "bridge.storeFromSecret" -}}
{{- if and (ne .Values.mode "embedded") .Values.secrets.keys.storeUrl }}true{{ end }}
{{- end }}

{{/* Secret files ------------------------------------------------------------------------ */}}

{{- define "bridge.secretsDir" -}}
/etc/imkit-push-bridge/secrets
{{- end }}

{{- define "bridge.apnsKeyMounted" -}}
{{- if and .Values.apns.enabled (eq .Values.apns.auth "token") }}true{{ end }}
{{- end }}

{{- define "bridge.apnsCertMounted" -}}
{{- if and .Values.apns.enabled (eq .Values.apns.auth "certificate") }}true{{ end }}
{{- end }}

{{- define "bridge.secretFiles" -}}
{{- if or (include "bridge.apnsKeyMounted" .) (include "bridge.apnsCertMounted" .) .Values.fcm.enabled }}true{{ end }}
{{- end }}

{{/* Pod pieces --------------------------------------------------------------------------- */}}

{{/* Restricted Pod Security Standard: non-root fixed uid, RuntimeDefault seccomp. */}}
{{- define "bridge.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .uid | default 10001 }}
runAsGroup: {{ .uid | default 10001 }}
fsGroup: {{ .uid | default 10001 }}
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "bridge.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
privileged: false
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Secrets as env: only secretKeyRef into the existing Secret, never values. */}}
{{- define "bridge.secretEnv" -}}
{{- $secret := include "bridge.secretName" . }}
{{- $keys := .Values.secrets.keys }}
{{- if $keys.secretKey }}
- name: BRIDGE_SECRET_KEY
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ $keys.secretKey }}
{{- end }}
{{- if $keys.imkitClientKey }}
- name: BRIDGE_IMKIT_CLIENT_KEY
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ $keys.imkitClientKey }}
      optional: true
{{- end }}
{{- if $keys.adminToken }}
- name: BRIDGE_ADMIN_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ $keys.adminToken }}
      optional: true
{{- end }}
{{- if include "bridge.storeFromSecret" . }}
- name: BRIDGE_STORE
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ $keys.storeUrl }}
{{- end }}
{{- end }}

{{/* Volumes every bridge container gets: a writable /tmp and the secret files. */}}
{{- define "bridge.volumes" -}}
- name: tmp
  emptyDir:
    medium: Memory
    sizeLimit: 64Mi
{{- if include "bridge.secretFiles" . }}
- name: secret-files
  secret:
    secretName: {{ include "bridge.secretName" . }}
    defaultMode: 0440
    items:
      {{- if include "bridge.apnsKeyMounted" . }}
      - key: {{ .Values.secrets.keys.apnsKey }}
        path: apns-key.p8
      {{- end }}
      {{- if include "bridge.apnsCertMounted" . }}
      - key: {{ .Values.secrets.keys.apnsCert }}
        path: apns-cert.pem
      {{- end }}
      {{- if .Values.fcm.enabled }}
      - key: {{ .Values.secrets.keys.fcmCredentials }}
        path: fcm-credentials.json
      {{- end }}
{{- end }}
{{- end }}

{{- define "bridge.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
{{- if include "bridge.secretFiles" . }}
- name: secret-files
  mountPath: {{ include "bridge.secretsDir" . }}
  readOnly: true
{{- end }}
{{- end }}

{{- define "bridge.podAnnotations" -}}
checksum/config: {{ include (print .Template.BasePath "/configmap.yaml") . | sha256sum }}
{{- with .Values.podAnnotations }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Call with (dict "root" $ "port" "http" "path" "/readyz"). */}}
{{- define "bridge.httpProbe" -}}
httpGet:
  path: {{ .path }}
  port: {{ .port }}
initialDelaySeconds: {{ .probe.initialDelaySeconds }}
periodSeconds: {{ .probe.periodSeconds }}
timeoutSeconds: {{ .probe.timeoutSeconds }}
failureThreshold: {{ .probe.failureThreshold }}
{{- end }}

{{/* Checks the schema cannot express; fail early with a message saying what to change. */}}
{{- define "bridge.validate" -}}
{{- $drain := float64 .Values.config.drainTimeout }}
{{- $graces := dict "embedded" .Values.embedded.terminationGracePeriodSeconds }}
{{- if eq .Values.mode "distributed" }}
{{- $graces = dict "api" .Values.api.terminationGracePeriodSeconds "worker" .Values.worker.terminationGracePeriodSeconds }}
{{- end }}
{{- range $role, $grace := $graces }}
{{- if le (float64 $grace) $drain }}
{{- fail (printf "%s.terminationGracePeriodSeconds (%v) must exceed config.drainTimeout (%v) so queued pushes can drain" $role $grace $drain) }}
{{- end }}
{{- end }}
{{- if and (eq .Values.mode "distributed") (not .Values.redis.enabled) (not .Values.secrets.keys.storeUrl) (not .Values.externalRedis.url) }}
{{- fail "distributed mode needs Redis: set externalRedis.url, secrets.keys.storeUrl or redis.enabled" }}
{{- end }}
{{- if and (eq .Values.mode "distributed") (not .Values.redis.enabled) (not .Values.secrets.keys.storeUrl) (not (regexMatch "^rediss?://" .Values.externalRedis.url)) }}
{{- fail "externalRedis.url must be a redis:// or rediss:// URL" }}
{{- end }}
{{- if and (eq .Values.mode "distributed") .Values.redis.enabled .Values.secrets.keys.storeUrl }}
{{- fail "set either redis.enabled or secrets.keys.storeUrl, not both" }}
{{- end }}
{{- if not .Values.secrets.keys.secretKey }}
{{- fail "secrets.keys.secretKey is required: the bridge encrypts stored push tokens with it" }}
{{- end }}
{{- if .Values.apns.enabled }}
{{- if not .Values.apns.topic }}
{{- fail "apns.topic (the app bundle id) is required when apns.enabled" }}
{{- end }}
{{- if and (eq .Values.apns.auth "token") (or (not .Values.apns.keyId) (not .Values.apns.teamId)) }}
{{- fail "apns.keyId and apns.teamId are required with apns.auth=token" }}
{{- end }}
{{- end }}
{{- if and .Values.api.autoscaling.enabled (lt (int .Values.api.autoscaling.maxReplicas) (int .Values.api.autoscaling.minReplicas)) }}
{{- fail "api.autoscaling.maxReplicas must be >= minReplicas" }}
{{- end }}
{{- end }}
