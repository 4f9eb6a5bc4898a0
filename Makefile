# The two commands of the README. Both install what they need first (idempotent, fast once done).
PYTHON ?= python
DEMO_MEMBERS ?= 4

.PHONY: install demo test clean-demo

install: .make/installed

.make/installed: setup.cfg pyproject.toml bench/scripts/install_ffcv.sh
	$(PYTHON) -m pip install -e ".[dev]"
	@# FFCV is optional: the script installs it where it can and names what is missing where it cannot.
	-PYTHON=$(PYTHON) bash bench/scripts/install_ffcv.sh
	@mkdir -p .make && touch $@

# The main job on the embedded default: tiny teacher pools of every architecture on digits.
demo: install
	$(PYTHON) -m bench.pool --arch all --dataset digits --scale tiny --members $(DEMO_MEMBERS) --grid demo

test: install
	$(PYTHON) -m pytest
