{{/* The name of every object: the release's, with the chart's when they differ. */}}
{{- define "server.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "server.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "server.labels" -}}
{{ include "server.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* By digest unless a tag is asked for explicitly: a digest cannot move. */}}
{{- define "server.image" -}}
{{- $image := .Values.image -}}
{{- if $image.tag -}}
{{- printf "%s:%s" $image.repository $image.tag -}}
{{- else if $image.digest -}}
{{- printf "%s@%s" $image.repository $image.digest -}}
{{- else -}}
{{- fail "image.digest is empty: install the chart published with a release (it carries the digest), or set image.digest=sha256:… (image.tag only as an explicit override)" -}}
{{- end -}}
{{- end -}}

{{/* The same hardening for the server and the bootstrap job. */}}
{{- define "server.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "server.securityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
privileged: false
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "server.env" -}}
- name: SERVER_ADDR
  value: "0.0.0.0:8080"
- name: SERVER_LOG
  value: {{ .Values.server.log | quote }}
- name: SERVER_LOG_FORMAT
  value: {{ .Values.server.logFormat | quote }}
- name: SERVER_HEADER_TIMEOUT
  value: {{ .Values.server.headerTimeout | quote }}
- name: SERVER_BODY_TIMEOUT
  value: {{ .Values.server.bodyTimeout | quote }}
- name: SERVER_DRAIN_DELAY
  value: {{ printf "%ds" (int .Values.server.drainDelaySeconds) | quote }}
- name: SERVER_SHUTDOWN_TIMEOUT
  value: {{ printf "%ds" (int .Values.server.shutdownTimeoutSeconds) | quote }}
{{- if not (kindIs "invalid" .Values.server.maxConnections) }}
- name: SERVER_MAX_CONNECTIONS
  value: {{ .Values.server.maxConnections | int | toString | quote }}
{{- end }}
{{- if .Values.database.existingSecret }}
- name: SERVER_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.database.existingSecret }}
      key: {{ .Values.database.secretKey }}
{{- end }}
{{- end -}}
