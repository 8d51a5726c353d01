{{- define "streamops.name" -}}streamops-operator{{- end -}}

{{- define "streamops.fullname" -}}
{{- if contains "streamops" .Release.Name -}}
{{- printf "%s-operator" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-streamops-operator" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "streamops.labels" -}}
app.kubernetes.io/name: {{ include "streamops.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "streamops.selectorLabels" -}}
app.kubernetes.io/name: {{ include "streamops.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "streamops.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "streamops.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "streamops.watchNamespace" -}}
{{- if eq .Values.installMode "namespaced" -}}
{{- default .Release.Namespace .Values.watchNamespace -}}
{{- end -}}
{{- end -}}

{{- /* A map of labels as the operator's flags take them: key=value,key=value. */ -}}
{{- define "streamops.matchLabels" -}}
{{- $pairs := list -}}
{{- range $k, $v := . -}}
{{- $pairs = append $pairs (printf "%s=%s" $k $v) -}}
{{- end -}}
{{- join "," $pairs -}}
{{- end -}}

{{- /* namespace -> [prefix] as --topic-name-prefixes takes it: ns=p,p;ns=p (namespaces sorted). */ -}}
{{- define "streamops.prefixMap" -}}
{{- $entries := list -}}
{{- range $ns, $prefixes := . -}}
{{- $entries = append $entries (printf "%s=%s" $ns (join "," $prefixes)) -}}
{{- end -}}
{{- join ";" $entries -}}
{{- end -}}
