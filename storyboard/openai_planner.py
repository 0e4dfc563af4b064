"""The endpoint planner: any OpenAI-compatible chat-completions endpoint writes the shot plans.

One request per shot (:func:`storyboard.llm_prompt.build_messages`), with JSON-schema structured output
(:func:`storyboard.shot_plan.shot_plan_json_schema`). The answer is untrusted: it is validated
(:func:`storyboard.shot_plan.validate_plan`), and a malformed, invalid or off-topic answer is asked
again with the reason, as are timeouts, connection failures, HTTP 429 and 5xx; the waits grow
exponentially (``backoff``, ``2 * backoff``, ... at most ``max_backoff``; a ``Retry-After`` header is
honoured up to that bound). The ``openai`` client's own retries are off, so every request is counted
here. When every attempt fails the shot has no plan (:class:`PlanOutcome` says why) and the caller falls
back to the rules planner. After ``give_up_after`` shots in a row that got no answer at all (the endpoint
is down), or one authentication error, the endpoint is not asked again in this run.

Accepted answers are cached on disk under ``cache_dir`` (default ``~/.cache/storyreel/llm``), keyed by
the SHA-256 of the request (model, messages, response format, temperature), so planning the same passage
again makes no request and gives the same storyboard. Cache files are written atomically and validated
again when read; a damaged one is ignored.

The API key is never written to the cache, the report or any message.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit

from storyboard.llm_prompt import PROMPT_VERSION, build_messages, retry_message
from storyboard.shot_plan import PlanOutcome, PlanRejected, ShotRequest, shot_plan_json_schema, validate_plan
from storyreel.atomic_files import write_json
from storyreel.errors import StoryreelError

MAX_ANSWER_ECHO = 2000
"""A refused answer is sent back to the model (so it can fix it) cut to this many characters."""
_LOOPBACK = ("127.0.0.1", "localhost", "::1")


class PlannerSetupError(StoryreelError, ValueError):
    """A planner that cannot be set up from the options given (missing model, bad URL, no weights)."""


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "storyreel" / "llm"


@dataclass
class EndpointConfig:
    """Where and how to ask. ``api_key`` is kept out of ``repr``."""

    base_url: str
    model: str
    api_key: str | None = field(default=None, repr=False)
    timeout: float = 60.0
    """Seconds per request."""
    retries: int = 3
    """Attempts after the first, for one shot."""
    backoff: float = 1.0
    """Seconds before the first retry; doubled for each next one."""
    max_backoff: float = 30.0
    temperature: float = 0.0
    cache_dir: Path | None = field(default_factory=default_cache_dir)
    """Answer cache; None: no cache."""
    give_up_after: int = 2
    """Stop asking after this many shots in a row got no answer at all."""

    def __post_init__(self):
        parts = urlsplit(self.base_url or "")
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise PlannerSetupError(f"base URL must be an http:// or https:// URL, got {self.base_url!r}")
        if not self.model or not self.model.strip():
            raise PlannerSetupError("no model name (give --llm-model or set STORYREEL_LLM_MODEL)")
        if not self.timeout > 0:
            raise PlannerSetupError(f"timeout must be more than 0 seconds, got {self.timeout!r}")
        if self.retries < 0:
            raise PlannerSetupError(f"retries must be 0 or more, got {self.retries!r}")
        if self.backoff < 0 or self.max_backoff < 0:
            raise PlannerSetupError("backoff must be 0 or more seconds")
        if self.cache_dir is not None:
            self.cache_dir = Path(self.cache_dir).expanduser()

    def describe(self) -> dict:
        """The settings for a report: everything but the key."""
        return {"base_url": self.base_url, "model": self.model, "timeout_s": self.timeout, "retries": self.retries,
                "temperature": self.temperature, "cache_dir": str(self.cache_dir) if self.cache_dir else None,
                "api_key": "set" if self.api_key else "none"}


def response_format() -> dict:
    return {"type": "json_schema", "json_schema": {"name": "shot_plan", "strict": True,
                                                   "schema": shot_plan_json_schema()}}


def request_key(body: dict) -> str:
    """SHA-256 (hex) of a request body, canonical JSON."""
    text = json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class OpenAIPlanner:
    """Plans shots with an OpenAI-compatible endpoint (see the module's description)."""

    name = "openai"

    def __init__(self, config: EndpointConfig, *, sleep: Callable[[float], None] = time.sleep):
        from openai import DefaultHttpxClient, OpenAI

        self.config = config
        self._sleep = sleep
        http_client = None
        if urlsplit(config.base_url).hostname in _LOOPBACK:
            http_client = DefaultHttpxClient(trust_env=False)  # an environment proxy must not take loopback
        self._client = OpenAI(base_url=config.base_url, api_key=config.api_key or "unused",
                              timeout=config.timeout, max_retries=0, http_client=http_client)
        self.requests = 0
        """Requests sent so far (all shots)."""
        self._silent_shots = 0
        self._stopped: str | None = None

    def describe(self) -> dict:
        return {"backend": self.name, **self.config.describe()}

    # -- cache ---------------------------------------------------------------------------------------

    def _cache_file(self, key: str) -> Path | None:
        if self.config.cache_dir is None:
            return None
        return self.config.cache_dir / key[:2] / f"{key}.json"

    def _cached_answer(self, key: str) -> str | None:
        path = self._cache_file(key)
        if path is None or not path.is_file():
            return None
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(entry, dict) or entry.get("key") != key or not isinstance(entry.get("answer"), str):
            return None
        return entry["answer"]

    def _store(self, key: str, answer: str) -> None:
        path = self._cache_file(key)
        if path is None:
            return
        try:
            write_json(path, {"key": key, "model": self.config.model, "prompt_version": PROMPT_VERSION,
                              "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "answer": answer})
        except OSError:
            pass                                     # a read-only cache costs requests, not the plan

    # -- asking --------------------------------------------------------------------------------------

    def _delay(self, retry: int, retry_after: float | None) -> float:
        delay = min(self.config.max_backoff, self.config.backoff * 2 ** (retry - 1))
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.config.max_backoff))
        return delay

    def plan(self, request: ShotRequest) -> PlanOutcome:
        messages = build_messages(request)
        body = {"model": self.config.model, "messages": messages, "response_format": response_format(),
                "temperature": self.config.temperature}
        key = request_key(body)
        cached = self._cached_answer(key)
        if cached is not None:
            try:
                return PlanOutcome(plan=validate_plan(cached, request), cached=True)
            except PlanRejected:
                pass                                 # a damaged or foreign entry: ask again
        if self._stopped is not None:
            return PlanOutcome(plan=None, error=f"endpoint not asked: {self._stopped}")
        import openai

        problems: list[str] = []
        transcript = list(messages)
        answered = False
        retry_after: float | None = None
        attempts = 0
        for attempt in range(self.config.retries + 1):
            if attempt:
                self._sleep(self._delay(attempt, retry_after))
            retry_after = None
            attempts += 1
            self.requests += 1
            try:
                response = self._client.chat.completions.create(
                    model=self.config.model, messages=transcript, response_format=body["response_format"],
                    temperature=self.config.temperature)
            except openai.APITimeoutError:
                problems.append(f"timed out after {self.config.timeout:g} s")
                continue
            except openai.APIConnectionError as exc:
                problems.append(f"connection failed: {_short(exc)}")
                continue
            except openai.APIStatusError as exc:
                status = exc.status_code
                problems.append(f"HTTP {status}: {_short(exc)}")
                if status == 429 or status >= 500 or status in (408, 409):
                    retry_after = _retry_after(exc)
                    continue
                answered = True
                if status in (401, 403):
                    self._stopped = f"HTTP {status} (check the API key)"
                break                                # 400, 404, 422: asking again will not help
            except (openai.OpenAIError, ValueError) as exc:
                answered = True
                problems.append(f"malformed response: {_short(exc)}")
                continue
            answered = True
            content = _content(response)
            try:
                plan = validate_plan(content, request)
            except PlanRejected as exc:
                problems.append(str(exc))
                echo = content if isinstance(content, str) else ""
                transcript = list(messages) + [{"role": "assistant", "content": echo[:MAX_ANSWER_ECHO]},
                                               retry_message(str(exc))]
                continue
            self._silent_shots = 0
            self._store(key, content)
            return PlanOutcome(plan=plan, attempts=attempts, problems=problems)
        if answered:
            self._silent_shots = 0
        else:
            self._silent_shots += 1
            if self._silent_shots >= self.config.give_up_after and self._stopped is None:
                self._stopped = f"no answer for {self._silent_shots} shots in a row ({problems[-1]})"
        return PlanOutcome(plan=None, attempts=attempts, problems=problems,
                           error=problems[-1] if problems else "no answer")


def _content(response) -> str | None:
    try:
        message = response.choices[0].message
    except (AttributeError, IndexError, TypeError):
        return None
    content = getattr(message, "content", None)
    if content is None and getattr(message, "refusal", None):
        return f"refusal: {message.refusal}"
    return content


def _retry_after(exc) -> float | None:
    try:
        value = exc.response.headers.get("retry-after")
        return max(0.0, float(value)) if value is not None else None
    except (AttributeError, TypeError, ValueError):
        return None


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."
