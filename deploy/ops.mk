# Operations: alerts, dashboard, metrics and the admin console. Included by the Makefile
# (`-include deploy/ops.mk`).

.PHONY: ops-tools
ops-tools: ## install Prometheus (server + promtool) and Chromium from Debian when missing
	bash deploy/ops-tools.sh

.PHONY: test-ops
test-ops: ops-tools $(STAMP) $(MODEL) ## alerts (promtool), admin reads, a real Prometheus scraping a local stack, the console in Chromium
	$(PYTEST) tests/ops

.PHONY: prometheus-local
prometheus-local: ops-tools ## Prometheus on :9090 scraping `METRICS_PORT=9100 WORKER_HEALTH_PORT=9200 make run`, alerts loaded
	mkdir -p .data/prometheus
	prometheus --config.file=deploy/prometheus/prometheus.yml --storage.tsdb.path=.data/prometheus --web.listen-address=127.0.0.1:9090
