{{/*
The pod template shared by the api, worker and embedded Deployments.
Call with (dict "root" $ "component" "api" "role" .Values.api "command" "api"
               "healthPort" "http" "readyPath" "/readyz").
*/}}
{{- define "bridge.podTemplate" -}}
{{- $root := .root -}}
metadata:
  labels:
    {{- include "bridge.componentLabels" (dict "root" $root "component" .component) | nindent 4 }}
  annotations:
    {{- include "bridge.podAnnotations" $root | nindent 4 }}
spec:
  serviceAccountName: {{ include "bridge.serviceAccountName" $root }}
  automountServiceAccountToken: false
  enableServiceLinks: false
  {{- with $root.Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  terminationGracePeriodSeconds: {{ .role.terminationGracePeriodSeconds }}
  securityContext:
    {{- include "bridge.podSecurityContext" (dict) | nindent 4 }}
  containers:
    - name: {{ .component }}
      image: {{ include "bridge.image" $root | quote }}
      imagePullPolicy: {{ $root.Values.image.pullPolicy }}
      args: [{{ .command | quote }}]
      securityContext:
        {{- include "bridge.containerSecurityContext" $root | nindent 8 }}
      ports:
        {{- if ne .component "worker" }}
        - name: http
          containerPort: 8080
          protocol: TCP
        {{- else }}
        - name: metrics
          containerPort: 9108
          protocol: TCP
        {{- end }}
      envFrom:
        - configMapRef:
            name: {{ include "bridge.fullname" $root }}
      env:
        {{- if eq .component "worker" }}
        # Each worker announces itself under its pod name (stable for the pod's life).
        - name: BRIDGE_WORKER_ID
          valueFrom:
            fieldRef:
              fieldPath: metadata.name
        {{- end }}
        {{- include "bridge.secretEnv" $root | trim | nindent 8 }}
      livenessProbe:
        {{- include "bridge.httpProbe" (dict "port" .healthPort "path" "/healthz" "probe" $root.Values.probes.liveness) | nindent 8 }}
      readinessProbe:
        {{- include "bridge.httpProbe" (dict "port" .healthPort "path" .readyPath "probe" $root.Values.probes.readiness) | nindent 8 }}
      resources:
        {{- toYaml .role.resources | nindent 8 }}
      volumeMounts:
        {{- include "bridge.volumeMounts" $root | nindent 8 }}
        {{- if eq .component "embedded" }}
        - name: data
          mountPath: /data
        {{- end }}
  volumes:
    {{- include "bridge.volumes" $root | nindent 4 }}
    {{- if eq .component "embedded" }}
    - name: data
      {{- if $root.Values.embedded.persistence.enabled }}
      persistentVolumeClaim:
        claimName: {{ include "bridge.fullname" $root }}-data
      {{- else }}
      emptyDir: {}
      {{- end }}
    {{- end }}
  {{- with .role.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .role.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .role.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
