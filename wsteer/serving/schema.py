"""Request bodies of the OpenAI API, parsed and checked by hand, and the OpenAI-style error every bad one gets.

Parsed by hand rather than by pydantic models so that each refusal is one sentence naming the field and the fix
(`"steering": unknown field; did you mean "steer"?`), in the `{"error": {message, type, param, code}}` shape that
OpenAI clients raise as `BadRequestError`. Unknown fields are refused, not ignored: a misspelled `steer` that
silently served the unsteered model would be the worst failure a steering server can have.
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass, field

# the methods a request may choose: the weight-arithmetic ones, and single-layer activation steering
METHODS = ("weight", "task_vector_pos", "task_vector_neg", "activation")
BEHAVIOR_NAME = re.compile(r"[A-Za-z0-9_.-]+")

# Standard OpenAI fields that change nothing here, accepted so that clients which always send them work.
IGNORED = ("user", "metadata", "store", "service_tier", "parallel_tool_calls")
# Standard fields this server does not implement: accepted only at their no-op value, otherwise refused by name.
UNSUPPORTED_UNLESS = {
    "presence_penalty": (0, 0.0),
    "frequency_penalty": (0, 0.0),
    "logit_bias": ({},),
    "logprobs": (False, 0),
    "top_logprobs": (0,),
    "tools": ([],),
    "functions": ([],),
    "tool_choice": ("none", "auto"),
    "function_call": ("none", "auto"),
    "response_format": ({"type": "text"},),
    "echo": (False,),
    "best_of": (1,),
    "suffix": ("",),
    "modalities": (["text"],),
}
COMMON = ("model", "max_tokens", "temperature", "top_p", "n", "seed", "stop", "stream", "stream_options",
          "steer", "method", *IGNORED, *UNSUPPORTED_UNLESS)
CHAT_FIELDS = (*COMMON, "messages", "max_completion_tokens")
COMPLETION_FIELDS = (*COMMON, "prompt")
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


class APIError(Exception):
    """A refused request: HTTP `status` with OpenAI's error object. The server answers it and keeps serving."""

    def __init__(self, message: str, *, status: int = 400, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message, self.status, self.type, self.param, self.code = message, status, type, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class Steering:
    """What a request steers with: behaviors and their k under one method; no parts is the base model.

    Parts are kept sorted and parts at k = 0 dropped, so requests that steer the same way share a batch.
    """

    method: str = "weight"
    parts: tuple[tuple[str, float], ...] = ()

    @property
    def is_base(self) -> bool:
        return not self.parts

    def label(self) -> str:
        if not self.parts:
            return "base"
        text = "+".join(f"{name}@{k:g}" for name, k in self.parts)
        return text if self.method == "weight" else f"{text} ({self.method})"

    def as_dict(self) -> dict:
        return {"method": self.method, "steer": dict(self.parts)}


@dataclass(frozen=True)
class Sampling:
    temperature: float
    top_p: float = 1.0
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def key(self) -> tuple:
        """Requests batch together only when they decode the same way (one `generate` call serves them)."""
        return ("greedy",) if self.greedy else (self.temperature, self.top_p, self.seed)


@dataclass
class Request:
    kind: str  # "chat" | "completion"
    model: str  # as the client named it; echoed in the response
    steering: Steering
    prompts: list = field(default_factory=list)  # chat: one message list; completions: one string per prompt
    n: int = 1
    max_tokens: int | None = None
    sampling: Sampling = field(default_factory=lambda: Sampling(1.0))
    stop: tuple[str, ...] = ()
    stream: bool = False
    include_usage: bool = False


def _suggest(name: str, known) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    return f'; did you mean "{close[0]}"?' if close else ""


def _number(body: dict, key: str, lo: float, hi: float, default, integer: bool = False):
    v = body.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (integer and not float(v).is_integer()):
        raise APIError(f'"{key}" must be {"an integer" if integer else "a number"}, got {v!r}', param=key,
                       code="invalid_value")
    if not math.isfinite(v) or not lo <= v <= hi:
        raise APIError(f'"{key}" must be between {lo:g} and {hi:g}, got {v!r}', param=key, code="invalid_value")
    return int(v) if integer else float(v)


def parse_k(raw, where: str, param: str) -> float:
    """A steering strength: a finite number (a JSON number in `steer`, the text after `@` in a model alias)."""
    k = raw
    if isinstance(raw, str) and param == "model":
        try:
            k = float(raw)
        except ValueError:
            raise APIError(f"{where}: k must be a number, got {raw!r} (e.g. sycophancy@-2)", param=param,
                           code="invalid_k") from None
    if isinstance(k, bool) or not isinstance(k, (int, float)):
        raise APIError(f"{where}: k must be a number, got {raw!r}", param=param, code="invalid_k")
    if not math.isfinite(k):
        raise APIError(f"{where}: k must be a finite number, got {raw!r}", param=param, code="invalid_k")
    return float(k)


def _behavior_name(name, param: str) -> str:
    if not isinstance(name, str) or not BEHAVIOR_NAME.fullmatch(name):
        raise APIError(f"{name!r} is not a behavior name (letters, digits, _ . -)", param=param,
                       code="unknown_behavior")
    return name


def parse_steering(body: dict, base_names: set[str]) -> Steering:
    """`model` as the base or an alias (`sycophancy@-2`, `sycophancy@-2+evil@-1`), or `steer` + `method`."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise APIError('"model" is required: the served base model or a steered alias such as "sycophancy@-2" '
                       "(GET /v1/models lists them)", param="model", code="invalid_value")
    parts: dict[str, float] = {}
    if model not in base_names:
        for piece in model.split("+"):
            name, at, k = piece.partition("@")
            if not at:
                raise APIError(f"unknown model {model!r}: name the base model ({' or '.join(sorted(base_names))}) "
                               'or a steered alias "<behavior>@<k>" such as "sycophancy@-2" (GET /v1/models lists '
                               "the behaviors)", param="model", code="model_not_found")
            name = _behavior_name(name, "model")
            if name in parts:
                raise APIError(f"model {model!r} names {name!r} twice", param="model", code="invalid_value")
            parts[name] = parse_k(k, f"model {model!r}", "model")
    steer = body.get("steer")
    if steer is not None:
        if parts:
            raise APIError(f'steering given twice: model {model!r} is already a steered alias; use the base model '
                           'name with "steer", or the alias alone', param="steer", code="invalid_value")
        if not isinstance(steer, dict):
            raise APIError('"steer" must be an object {behavior: k}, e.g. {"sycophancy": -2, "evil": -1}',
                           param="steer", code="invalid_value")
        for name, k in steer.items():
            parts[_behavior_name(name, "steer")] = parse_k(k, f'"steer" {name!r}', "steer")
    method = body.get("method")
    if method is None:
        method = "weight"
    if method not in METHODS:
        raise APIError(f'"method" must be one of {", ".join(METHODS)}; got {method!r} (the bias, all-layer '
                       "activation and prompt methods are not served)", param="method", code="invalid_value")
    return Steering(method, tuple(sorted((n, k) for n, k in parts.items() if k != 0)))


def _check_fields(body, known: tuple[str, ...]) -> dict:
    if not isinstance(body, dict):
        raise APIError(f"the request body must be a JSON object, got {type(body).__name__}", code="invalid_body")
    for key, value in body.items():
        if key not in known:
            raise APIError(f'"{key}": unknown field{_suggest(key, known)}', param=key, code="unknown_field")
        if key in UNSUPPORTED_UNLESS and value is not None and value not in UNSUPPORTED_UNLESS[key]:
            raise APIError(f'"{key}" is not supported by this server (got {value!r}); leave it out', param=key,
                           code="unsupported_field")
    return body


def _common(body: dict, kind: str, base_names: set[str], max_n: int, default_temperature: float,
            prompts: list) -> Request:
    stop = body.get("stop")
    if stop is None:
        stop = ()
    elif isinstance(stop, str):
        stop = (stop,)
    if not isinstance(stop, (list, tuple)) or len(stop) > 4 or not all(isinstance(s, str) and s for s in stop):
        raise APIError('"stop" must be a non-empty string or a list of at most 4 of them', param="stop",
                       code="invalid_value")
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise APIError(f'"stream" must be true or false, got {stream!r}', param="stream", code="invalid_value")
    opts = body.get("stream_options") or {}
    if not isinstance(opts, dict) or set(opts) - {"include_usage"}:
        raise APIError('"stream_options" may only hold include_usage', param="stream_options", code="invalid_value")
    max_key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    return Request(
        kind=kind, model=body["model"] if isinstance(body.get("model"), str) else "",
        steering=parse_steering(body, base_names), prompts=prompts,
        n=_number(body, "n", 1, max_n, 1, integer=True),
        max_tokens=_number(body, max_key, 1, 1 << 30, None, integer=True),
        sampling=Sampling(_number(body, "temperature", 0, 2, default_temperature), _number(body, "top_p", 1e-9, 1, 1.0),
                          _number(body, "seed", -(1 << 63), (1 << 63) - 1, None, integer=True)),
        stop=tuple(stop), stream=stream, include_usage=bool(opts.get("include_usage")))


def _text_content(content, i: int) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) for p in content):
        kinds = {p.get("type") for p in content}
        if kinds <= {"text"} and all(isinstance(p.get("text"), str) for p in content):
            return "".join(p["text"] for p in content)
        raise APIError(f"messages[{i}].content: only text parts are supported, got {sorted(map(str, kinds))}",
                       param=f"messages[{i}].content", code="invalid_value")
    raise APIError(f"messages[{i}].content must be a string or a list of text parts", param=f"messages[{i}].content",
                   code="invalid_value")


def parse_chat(body, base_names: set[str], max_n: int = 16, default_temperature: float = 1.0) -> Request:
    body = _check_fields(body, CHAT_FIELDS)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise APIError('"messages" must be a non-empty list of {"role", "content"} objects', param="messages",
                       code="invalid_value")
    conv = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise APIError(f"messages[{i}] must be an object", param=f"messages[{i}]", code="invalid_value")
        role = m.get("role")
        if role not in ROLES:
            raise APIError(f"messages[{i}].role must be one of {', '.join(ROLES)}; got {role!r}",
                           param=f"messages[{i}].role", code="invalid_value")
        conv.append({"role": ROLES[role], "content": _text_content(m.get("content"), i)})
    return _common(body, "chat", base_names, max_n, default_temperature, [conv])


def parse_completion(body, base_names: set[str], max_n: int = 16, default_temperature: float = 1.0) -> Request:
    body = _check_fields(body, COMPLETION_FIELDS)
    prompt = body.get("prompt")
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) and p for p in prompts):
        raise APIError('"prompt" must be a non-empty string or a list of them (token-id prompts are not supported)',
                       param="prompt", code="invalid_value")
    return _common(body, "completion", base_names, max_n, default_temperature, prompts)
