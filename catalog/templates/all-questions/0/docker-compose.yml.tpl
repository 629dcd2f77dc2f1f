version: '2'
services:
  app:
    image: local/app:{{ .Values.TAG | default "latest" }}
    environment:
      GREETING: "{{ .Values.GREETING }}"
      WORKERS: "{{ .Values.WORKERS }}"
      SECRET: ${SECRET}
      NOTES: ${NOTES}
      UPSTREAM: {{ .Values.UPSTREAM }}
      CERT: {{ .Values.CERT }}
      MODE: {{ .Values.MODE }}
{{- if eq .Values.DEBUG "true" }}
      DEBUG: "1"
{{- end }}
{{- if .Values.EXTRA_HOSTS }}
    extra_hosts:
{{- range $h := splitList "," .Values.EXTRA_HOSTS }}
      - "{{ $h }}"
{{- end }}
{{- end }}
    external_links:
      - {{ .Values.UPSTREAM }}:upstream
