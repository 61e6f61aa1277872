# genecis-ray: `make test` bootstraps everything from a fresh clone (idempotent) and runs the suite
# against a real S3 server (Ceph radosgw) and a local Ray head that it starts and stops itself.
PY      ?= python3
VENV    := .venv
STAMP   := $(VENV)/.installed
PYTEST_ARGS ?=

SEED    ?= 0
QUICK   ?=

.PHONY: test test-multinode demo deps deps-system bench clean-venv

test: deps deps-system
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash cluster/local/with_services.sh $(VENV)/bin/python -m pytest $(PYTEST_ARGS)

# The two-node cluster and node-kill tests (tests/test_multinode.py, ~10.5 min; also part of `make test`), alone.
test-multinode: deps deps-system
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash cluster/local/with_services.sh \
	  $(VENV)/bin/python -m pytest tests/test_multinode.py $(PYTEST_ARGS)

# The whole chain on local Ray and local disk (cluster/configs/demo.yaml); its last line is results.json's path.
demo: deps
	@RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0 HF_HUB_OFFLINE=1 $(VENV)/bin/python -m cluster pipeline \
	  --config cluster/configs/demo.yaml --seed $(SEED) $(if $(QUICK),--quick)

deps: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PY) -m venv $(VENV)
	$(VENV)/bin/pip install -q -U pip
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $(STAMP)

# Ceph's radosgw is the S3 server the tests use (Debian packages; needs root, as on CI).
deps-system:
	@command -v radosgw >/dev/null && command -v ceph-osd >/dev/null || { \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
	    radosgw ceph-mon ceph-osd curl procps; }

bench: deps
	$(VENV)/bin/python bench/parse_throughput.py
	$(VENV)/bin/python bench/mine_scale.py
	$(VENV)/bin/python bench/mine_end_to_end.py
	$(VENV)/bin/python bench/synthetic_throughput.py
	$(VENV)/bin/python bench/train_throughput.py
	$(VENV)/bin/python bench/eval_encodes.py

clean-venv:
	rm -rf $(VENV)
