# Operations: alerts, dashboard, metrics and the admin console. Included by the Makefile
# (`-include deploy/ops.mk`).

.PHONY: ops-tools
ops-tools: ## install Prometheus (server + promtool) and Chromium from Debian when missing
	bash deploy/ops-tools.sh

.PHONY: test-ops
test-ops: ops-tools $(MODEL) ## alerts (promtool), admin reads, a real Prometheus scraping a local stack, the console in Chromium
	$(PYTEST) tests/ops
