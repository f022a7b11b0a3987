# Every target creates .venv on first use. torch/torchvision are pinned (see requirements.txt).
PY      := .venv/bin/python
STAMP   := .venv/.installed
WS      ?= workspaces/demo
SITES   ?= 10

.PHONY: setup test test-slow demo clean

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || python3 -m venv .venv
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

clean:
	rm -rf workspaces .cache/fedrsclip-features
