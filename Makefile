# Every target creates .venv on first use. torch/torchvision are pinned (see requirements.txt).
# The pins are tested with Python 3.11: .venv is made with python3.11 (`make PYTHON=python3.X ...` tries another;
# pyproject.toml allows 3.10 and later, untested here).
PYTHON  ?= python3.11
PY      := .venv/bin/python
STAMP   := .venv/.installed
WS      ?= workspaces/demo
SITES   ?= 10

.PHONY: setup test test-slow demo demo-he demo-mm poc provision bench bench-quick bench-paper-10 bench-paper-40 \
	bench-gpu format lint clean

$(STAMP): requirements.txt pyproject.toml
	@test -x $(PY) || command -v $(PYTHON) >/dev/null || { echo "make: $(PYTHON) not found: install Python 3.11, or \
	give another interpreter with PYTHON=python3.X (untested)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv .venv
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

setup: $(STAMP)

# The default suite: offline, 2 CPU cores, well under 15 minutes.
test: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -m "not slow" -q

test-slow: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -m slow -q

# The main job, offline: synthetic scenes, a small RANDOM-weight CLIP, 10 sites.
demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m fedrsclip.cli demo --workspace $(WS) --sites $(SITES)

# The same job with CKKS-encrypted shared-prompt updates (contexts made in the workspace's startup/).
demo-he: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m fedrsclip.cli demo --he --workspace $(WS)-he --sites $(SITES)

# A multi-modal federation, offline: synthetic multi-label S2/S1 scenes, RANDOM-weight CLIP; site-1 holds s2,
# site-2 s1, site-3 both (README: Multi-modal federations). Prints the per-site micro F1 table.
MM_SITES   ?= 3
MODALITIES ?= s2,s1,s2+s1
demo-mm: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m fedrsclip.cli demo --modalities $(MODALITIES) --workspace $(WS)-mm --sites $(MM_SITES)

# Speed, payload and memory against the targets (README: Performance); the last line is JSON.
bench: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m fedrsclip.cli bench

bench-quick: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m fedrsclip.cli bench --quick

# The paper's UC Merced federation (Table I) with ViT-B/16 (random weights from a local file) in the simulator:
# wall time per round, memory, FLARE's share (README: Performance). Needs the UC Merced images (--images).
bench-paper-10: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m fedrsclip.cli bench --paper-scale 10

bench-paper-40: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m fedrsclip.cli bench --paper-scale 40

# On a machine with an NVIDIA GPU: the bench on CUDA and the 10-site job with -gpu 0, the text encoder in bf16
# (workspaces/bench-gpu/bench-gpu.json). Stops with a message where there is no GPU.
bench-gpu: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m fedrsclip.tools.bench.gpu --out workspaces/bench-gpu

# A local POC deployment: a real server and $(POC_SITES) sites on localhost, the job submitted and its results fetched.
POC_SITES ?= 2
poc: $(STAMP)
	poc/prepare.sh $(POC_SITES) --rounds 2 && poc/start.sh && poc/submit.sh cli; rc=$$?; poc/stop.sh; exit $$rc

# Certificates, keys and HE contexts for a multi-institution deployment (provisioning/project.yml).
PROVISION_WS ?= workspaces/provision
provision: $(STAMP)
	provisioning/provision.sh $(PROVISION_WS)

# One formatter (ruff format, line width 120, configured in pyproject.toml) and its linter, for the whole tree.
format: $(STAMP)
	$(PY) -m ruff format custom tests jobs/job.py poc/submit_api.py

lint: $(STAMP)
	$(PY) -m ruff format --check custom tests jobs/job.py poc/submit_api.py
	$(PY) -m ruff check custom tests jobs/job.py poc/submit_api.py

# Only what these targets made: the demo workspaces and the feature cache; workspaces/ keeps everything else.
clean:
	rm -rf $(WS) $(WS)-he $(WS).log $(WS)-he.log $(WS)-mm $(WS)-mm.log .cache/fedrsclip-features
