# The two commands of the README. Both install what they need first (idempotent, fast once done).
PYTHON ?= python

.PHONY: install demo test smoke-test gpu-check

install: .make/installed

.make/installed: setup.cfg pyproject.toml bench/scripts/install_ffcv.sh
	$(PYTHON) -m pip install -e ".[dev]"
	@# FFCV is optional: the script installs it where it can and names what is missing where it cannot.
	-PYTHON=$(PYTHON) bash bench/scripts/install_ffcv.sh
	@mkdir -p .make && touch $@

# The main job on the embedded default: the main table's grid at tiny scale (digits), run by
# the local executor, then its table. Its records go to results/demo/ so that the committed
# reference results (results/main_table/) are neither reused nor overwritten.
# DEMO_SEEDS (e.g. 0-2) runs only those seeds' groups: a quicker look, with wider intervals.
DEMO_RESULTS ?= results/demo
DEMO_SEEDS ?=
demo: install
	$(PYTHON) -m bench.sweep --grid main_table --scale tiny --cluster local --wait --results-root $(DEMO_RESULTS) $(if $(DEMO_SEEDS),--seeds $(DEMO_SEEDS))
	$(PYTHON) -m bench.report --grid main_table --results-root $(DEMO_RESULTS)

test: install
	$(PYTHON) -m pytest

# The paper-scale smokes on the CPU through SLURM (needs one: bench/scripts/slurm_local.sh start): the paper's-regime
# main table's ResNet-50 at 224 px (batches capped at 16) and the scratch main table's VGG-11 at 32 px; CI runs them after the suite.
smoke-test: install
	$(PYTHON) -m pytest -m slow

# On one CUDA GPU, under 8 minutes: the paper-shape meta-training step (ResNet-50, ViT-B/32, N = 4,
# bf16, with and without checkpointing), a ResNet-50 teacher epoch's images/s, vmap vs looped
# teachers and FFCV on synthetic JPEGs, as JSON. `--device cpu --tiny` checks the script itself.
GPU_CHECK_OUT ?= results/gpu_check.json
gpu-check: install
	$(PYTHON) -m bench.perf.gpu_check --out $(GPU_CHECK_OUT)
