# Pinned, hashed requirements the images install from (requirements/*.txt); included by the Makefile.
#
#   make lock     re-resolve requirements/{api,worker,model,build}.txt (pip-tools, --generate-hashes)
#
# api/worker = pyproject.toml's core dependencies + the image's extra + requirements/<image>-extra.in;
# model = the example model's builder stage; build = the setuptools the builders build the project with.
# The Dockerfiles install them with `pip install --require-hashes --no-deps`, then the project itself
# with `--no-deps`: every byte that reaches an image is pinned here. Resolved for CPython 3.11 on Linux
# (the images' base); tests/unit/test_dockerfiles.py checks each lock covers what pyproject names.

PIP_COMPILE_FLAGS := --quiet --generate-hashes --allow-unsafe --strip-extras --no-emit-index-url --no-emit-find-links

.PHONY: lock
lock: $(STAMP) ## re-resolve the images' pinned, hashed requirements (requirements/*.txt)
	$(PY) -m pip install -q 'pip-tools>=7.4'
	$(VENV)/bin/pip-compile $(PIP_COMPILE_FLAGS) --extra api --output-file requirements/api.txt pyproject.toml requirements/api-extra.in
	$(VENV)/bin/pip-compile $(PIP_COMPILE_FLAGS) --extra worker --output-file requirements/worker.txt pyproject.toml requirements/worker-extra.in
	$(VENV)/bin/pip-compile $(PIP_COMPILE_FLAGS) --extra model --output-file requirements/model.txt pyproject.toml requirements/model-extra.in
	$(VENV)/bin/pip-compile $(PIP_COMPILE_FLAGS) --output-file requirements/build.txt requirements/build.in
