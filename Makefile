# Run as root on Debian bookworm: `sudo make demo`, `sudo make test`.
# `sudo make install`: the service (user, /opt/satupintu, /etc/satupintu, systemd unit); see docs/operator-guide.md.
# Every target that needs the machine runs scripts/setup.sh first (idempotent, seconds when done).
VENV := .venv
PY := $(VENV)/bin/python
LINT_PATHS := controller tests benchmarks

.PHONY: setup test demo lint install

setup:
	bash scripts/setup.sh

test: setup
	$(PY) -m pytest -q
	$(VENV)/bin/ruff check $(LINT_PATHS)

demo: setup
	$(VENV)/bin/satupintu demo

lint:
	@test -x $(VENV)/bin/ruff || { echo "no $(VENV): run 'sudo make setup' first" >&2; exit 1; }
	$(VENV)/bin/ruff check $(LINT_PATHS)

# DESTDIR=/tmp/root lays it out under /tmp/root instead (tests, inspection).
install:
	bash scripts/install.sh

# Every benchmark of issue 7 (~20-25 min, needs the machine to itself as far as possible); writes benchmarks/RESULTS.md.
.PHONY: bench
bench: setup
	$(PY) benchmarks/run_all.py
