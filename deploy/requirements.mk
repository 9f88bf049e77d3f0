# Every install comes from a lock: pinned, hashed requirements (requirements/*.txt); included by the Makefile.
#
#   make lock             bring every lock in line with its inputs, keeping the pins that still fit
#   make lock UPGRADE=1   the same, but take the newest releases (then run `make test`)
#
#   dev.txt      `make venv` / `make test`: pyproject's api, worker, model, dev and tracing extras, the client with
#                its progress extra, requirements/dev.in (pip, setuptools, pip-tools)
#   run.txt      `make run`: the service, the example model's build and the client; nothing for tests
#   bench.txt    `make bench`: pyproject's bench extra (granian, py-spy) over the venv
#   api.txt, worker.txt, model.txt, build.txt: the images (pyproject's core + the image's extra and tracing +
#                requirements/<image>-extra.in; the model builder stage; the setuptools they build with)
#   checkov.txt  the checkov scanner's own venv (deploy/security/install-scanners.sh)
#
# dev.txt is resolved first; every other lock starts from a copy of its pins (pip-compile keeps the pins
# of an existing output file when they fit), so a package has one version everywhere.
# The Dockerfiles install with `pip install --require-hashes --no-deps`; tests/unit/test_locks.py reads
# each lock's own pip-compile command from its header and fails when a lock no longer satisfies its
# inputs (`make lock` then). Resolved for CPython 3.11 on Linux (the machines' and the images' Python).

PIP_COMPILE_FLAGS := --quiet --generate-hashes --allow-unsafe --strip-extras --no-emit-index-url --no-emit-find-links
PIP_COMPILE := $(VENV)/bin/pip-compile $(PIP_COMPILE_FLAGS)
# Start a derived lock from dev.txt's pins.
seed_lock = cp requirements/dev.txt $(1)

.PHONY: lock
lock: $(STAMP) ## re-resolve every lock (requirements/*.txt, hashed) from its inputs; UPGRADE=1 takes new releases
	$(PIP_COMPILE) $(if $(UPGRADE),--upgrade) --extra api --extra worker --extra model --extra dev --extra tracing --extra progress --output-file requirements/dev.txt \
		pyproject.toml client/pyproject.toml requirements/dev.in requirements/api-extra.in requirements/worker-extra.in
	$(call seed_lock,requirements/run.txt)
	$(PIP_COMPILE) --extra api --extra worker --extra model --extra progress --output-file requirements/run.txt \
		pyproject.toml client/pyproject.toml requirements/run.in requirements/api-extra.in requirements/worker-extra.in
	$(call seed_lock,requirements/bench.txt)
	$(PIP_COMPILE) --extra bench --output-file requirements/bench.txt pyproject.toml
	$(call seed_lock,requirements/api.txt)
	$(PIP_COMPILE) --extra api --extra tracing --output-file requirements/api.txt pyproject.toml requirements/api-extra.in
	$(call seed_lock,requirements/worker.txt)
	$(PIP_COMPILE) --extra worker --extra tracing --output-file requirements/worker.txt pyproject.toml requirements/worker-extra.in
	$(call seed_lock,requirements/model.txt)
	$(PIP_COMPILE) --extra model --output-file requirements/model.txt pyproject.toml requirements/model-extra.in
	$(call seed_lock,requirements/build.txt)
	$(PIP_COMPILE) --output-file requirements/build.txt requirements/build.in
	$(PIP_COMPILE) $(if $(UPGRADE),--upgrade) --output-file requirements/checkov.txt requirements/checkov.in
