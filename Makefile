# storyreel: `make demo` and `make test` do all the set-up on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
DEMO   ?= demo-out
STAMP  := $(VENV)/.installed-stamp

.PHONY: install lint test demo toy-world clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

lint: install
	$(BIN)/ruff check .

test: lint
	$(BIN)/python -m pytest -q

demo: install
	$(BIN)/storyreel-doctor --offline
	$(BIN)/python data/make_sample_clips.py --out data/sample_clips
	$(BIN)/build-index data/sample_clips --out $(DEMO)/index --models tiny
	$(BIN)/search-clips $(DEMO)/index "a person running" -k 5 --per-clip 1 --contact-sheet $(DEMO)/top.png
	$(BIN)/search-clips $(DEMO)/index "a person running" -k 1 --json > $(DEMO)/top.json
	set -- $$($(BIN)/python -c "import json; r = json.load(open('$(DEMO)/top.json'))[0]; print(r['path'], r['start'], r['end'])") && \
	  $(BIN)/extract-depth "$$1" --start "$$2" --end "$$3" --frames 16 --size 256x256 --models tiny \
	    --cache-dir $(DEMO)/depth-cache --out $(DEMO)/depth.npz --preview $(DEMO)/depth.gif --strip $(DEMO)/depth.png
	$(BIN)/python data/make_reference_images.py --out data/reference_images/hare
	$(BIN)/train-character --images data/reference_images/hare --name hare --token "<hare>" --class-word rabbit \
	  --out $(DEMO)/characters/hare.safetensors --models tiny --resolution 128 --frames 16 --steps 50 --quiet
	$(BIN)/render-story data/examples/fable.json --index $(DEMO)/index --out $(DEMO)/story --models tiny \
	  --character hare=$(DEMO)/characters/hare.safetensors
	$(BIN)/render-story data/examples/fable-identity.json --index $(DEMO)/index --out $(DEMO)/story-identity \
	  --models tiny --no-progress
	$(BIN)/plan-story data/examples/fox-and-grapes.txt --out $(DEMO)/fox/story.json --llm rules \
	  --style "watercolour storybook illustration" --width 256 --height 256 --frames 16 --steps 10
	$(BIN)/fetch-models tiny --out $(DEMO)/models --quiet
	$(BIN)/render-story $(DEMO)/fox/story.json --index $(DEMO)/index --out $(DEMO)/fox/render \
	  --model-config $(DEMO)/models/models.toml
	$(BIN)/python data/make_toy_world.py --out $(DEMO)/toy-world --seed 1 --clips 48 --split heldout --quiet \
	  --character-references $(DEMO)/zuri-references
	$(BIN)/build-index --manifest $(DEMO)/toy-world/captions.jsonl --out $(DEMO)/toy-index --models toy --workers 2
	$(BIN)/search-clips $(DEMO)/toy-index "a figure jumping" -k 5 --per-clip 1 --contact-sheet $(DEMO)/toy-top.png
	$(BIN)/render-story data/examples/toy-fable.json --index $(DEMO)/toy-index --out $(DEMO)/toy-story --models toy \
	  --keyframes-only --no-progress
	$(BIN)/render-story data/examples/toy-fable.json --index $(DEMO)/toy-index --out $(DEMO)/toy-story --models toy
	$(BIN)/evaluate-story $(DEMO)/toy-story --references zuri=$(DEMO)/zuri-references --quiet
	$(BIN)/render-story data/examples/toy-fable-consistent.json --index $(DEMO)/toy-index \
	  --out $(DEMO)/toy-consistent --models toy --no-progress
	$(BIN)/evaluate-story $(DEMO)/toy-consistent --against $(DEMO)/toy-story \
	  --references zuri=$(DEMO)/zuri-references --quiet
	$(BIN)/render-story data/examples/toy-fable.json --index $(DEMO)/toy-index --out $(DEMO)/toy-tau --models toy \
	  --sweep tau=0,0.5,1.0 --no-progress
	$(BIN)/evaluate-story $(DEMO)/toy-tau/sweep/* --references zuri=$(DEMO)/zuri-references --quiet
	@echo "demo outputs are in $(DEMO)/: index/, top.png (search), depth.npz, depth.gif, depth.png (structure),"
	@echo "  characters/hare.safetensors (a tiny TimeInv + LoRA character trained on data/reference_images/hare),"
	@echo "  story/ (story.mp4, storyboard.png, report.json, shots/*.mp4|gif: the example storyboard with the hare),"
	@echo "  story-identity/ (the same story with IP-Adapter pictures and consistent self-attention, its last shot"
	@echo "  animated from keyframes/finish.png and a transition generated into it, transitions/, through SparseCtrl:"
	@echo "  the code paths with random weights; report.json says which shot recorded the bank, which attended to it,"
	@echo "  which picture the last shot started from and how each shot goes into the next),"
	@echo "  fox/ (story.json + story.plan.json planned from a passage by the rules planner, render/ its video,"
	@echo "  rendered offline from models/: the tiny preset's components as fetch-models writes them),"
	@echo "  toy-world/, toy-index/, toy-top.png, toy-story/ (the toy world searched and rendered with --models toy:"
	@echo "  toy-story/keyframes.png first, a picture per shot from --keyframes-only, then the videos;"
	@echo "  models trained here on CPU, the hare the toy character zuri; see docs/TOY_WORLD.md), toy-story/eval/"
	@echo "  (evaluate-story: metrics.json and report.html), toy-tau/sweep/tau=*/ (the toy fable at three tau values;"
	@echo "  toy-tau/sweep/tau=0/eval/report.html charts every metric against tau; see docs/EVALUATION.md),"
	@echo "  toy-consistent/ (the toy fable with consistent self-attention; eval/report.html beside toy-story)"

# Draw the toy world and train every toy model on it, then the toy character, IP-Adapter and SparseCtrl (51 minutes on 2 idle CPU cores; rerun
# to resume after an interruption). Writes storyreel/models/toy_weights/ (committed) and keeps the world and checkpoints in toy-world/.
toy-world: install
	$(BIN)/python -m toy_world --work toy-world --threads 2

clean:
	rm -rf $(DEMO) data/sample_clips data/reference_images
