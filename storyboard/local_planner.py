"""The local planner: a transformers chat model from a folder on disk writes the shot plans.

The folder is a ``save_pretrained`` folder of a causal language model with a chat template (config,
tokenizer files and **safetensors** weights: pickled ``.bin`` weights are never loaded, and no remote
code runs). Nothing is downloaded. The messages are those of the endpoint planner
(:mod:`storyboard.llm_prompt`), rendered with the tokenizer's chat template; the first attempt decodes
greedily, retries sample with a fixed seed, so a plan is reproducible. The answer is validated like an
endpoint's (:func:`storyboard.shot_plan.validate_plan`); when no attempt gives a usable plan the caller
falls back to the rules planner.
"""

from __future__ import annotations

from pathlib import Path

from storyboard.llm_prompt import build_messages, retry_message
from storyboard.openai_planner import MAX_ANSWER_ECHO, PlannerSetupError
from storyboard.shot_plan import PlanOutcome, PlanRejected, ShotRequest, validate_plan


def check_model_folder(path: str | Path) -> Path:
    """``path`` as a model folder (config.json and .safetensors weights); :class:`PlannerSetupError` if not."""
    folder = Path(path).expanduser()
    if not folder.exists():
        raise PlannerSetupError(f"model folder not found: {folder}")
    if not folder.is_dir():
        raise PlannerSetupError(f"not a folder: {folder} (give the save_pretrained folder of a chat model)")
    if not (folder / "config.json").is_file():
        raise PlannerSetupError(f"no config.json in {folder}")
    if not list(folder.glob("*.safetensors")):
        raise PlannerSetupError(f"no .safetensors weights in {folder} (only safetensors are loaded)")
    return folder


class LocalPlanner:
    """Plans shots with a local transformers chat model (see the module's description)."""

    name = "local"

    def __init__(self, model_path: str | Path, *, retries: int = 1, max_new_tokens: int = 400,
                 device: str | None = None, seed: int = 0):
        self.folder = check_model_folder(model_path)
        if retries < 0:
            raise PlannerSetupError(f"retries must be 0 or more, got {retries!r}")
        self.retries = retries
        self.max_new_tokens = max_new_tokens
        self.device = device
        self.seed = seed
        self._model = None
        self._tokenizer = None
        self._load_error: str | None = None
        self.generations = 0

    def describe(self) -> dict:
        return {"backend": self.name, "model_path": str(self.folder), "retries": self.retries,
                "max_new_tokens": self.max_new_tokens}

    def _load(self) -> None:
        if self._model is not None or self._load_error is not None:
            return
        try:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(self.folder, local_files_only=True, trust_remote_code=False)
            if not getattr(tokenizer, "chat_template", None):
                raise ValueError("the tokenizer has no chat template")
            model = AutoModelForCausalLM.from_pretrained(self.folder, local_files_only=True, use_safetensors=True,
                                                         trust_remote_code=False)
            device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
            self._model = model.to(device).eval()
            self._tokenizer = tokenizer
        except (OSError, ValueError, RuntimeError, ImportError, KeyError) as exc:
            self._load_error = " ".join(str(exc).split())[:200] or type(exc).__name__

    def _generate(self, messages: list[dict], sample: bool, attempt: int) -> str:
        import torch

        tokenizer, model = self._tokenizer, self._model
        inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                               return_dict=True)
        inputs = {name: value.to(model.device) for name, value in inputs.items()}
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        options = {"max_new_tokens": self.max_new_tokens, "pad_token_id": pad, "do_sample": sample}
        if sample:
            torch.manual_seed(self.seed + attempt)
            options.update(temperature=0.7, top_p=0.95)
        with torch.no_grad():
            output = model.generate(**inputs, **options)
        self.generations += 1
        new_tokens = output[0, inputs["input_ids"].shape[1]:]
        return tokenizer.decode(new_tokens, skip_special_tokens=True)

    def plan(self, request: ShotRequest) -> PlanOutcome:
        self._load()
        if self._load_error is not None:
            return PlanOutcome(plan=None, error=f"cannot load the model: {self._load_error}")
        messages = build_messages(request)
        transcript = list(messages)
        problems: list[str] = []
        for attempt in range(self.retries + 1):
            answer = self._generate(transcript, sample=attempt > 0, attempt=attempt)
            try:
                plan = validate_plan(answer, request)
            except PlanRejected as exc:
                problems.append(str(exc))
                transcript = list(messages) + [{"role": "assistant", "content": answer[:MAX_ANSWER_ECHO]},
                                               retry_message(str(exc))]
                continue
            return PlanOutcome(plan=plan, attempts=attempt + 1, problems=problems)
        return PlanOutcome(plan=None, attempts=self.retries + 1, problems=problems, error=problems[-1])
