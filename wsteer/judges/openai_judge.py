"""An LLM judge over any OpenAI-compatible chat endpoint (OpenAI itself, vLLM, llama.cpp's server, ...).

Each answer gets two questions, how strongly it shows the trait and how coherent it is, each answered with a
number from 0 to 100. As in the persona-vectors judge the paper (§1) builds on, the score is read from the
judge's next-token distribution: one token is generated with ``top_logprobs=20`` and the score is the
probability-weighted mean of the top tokens that are integers 0–100. Endpoints that return no logprobs get a
second, short request whose text is parsed instead. Verdicts are cached on disk (`VerdictCache`), so a rerun or
a resumed run never pays twice.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import asdict
from pathlib import Path
from urllib.parse import urlparse

from tqdm import tqdm

from wsteer.errors import WsteerError
from wsteer.judges.base import Judge, JudgeItem, Verdict, VerdictCache, resolve_thresholds
from wsteer.judges.prompt_files import load_prompts
from wsteer.judges.responses import (
    MIN_NUMERIC_MASS,
    reply_text,
    score_from_text,
    score_from_top_logprobs,
    top_logprobs,
)

PLACEHOLDER_KEY = "sk-no-key"  # local OpenAI-compatible servers ignore the key, but the client insists on one


class _Aborted(Exception):
    """Raised in worker threads once another request has failed for good."""


class _DeadlineExceeded(Exception):
    """A request (connect, send, and the whole reply) took longer than `judge.timeout` in total.

    The HTTP client's own timeout bounds each read only, so a server that trickles its reply a byte at a time
    would keep a request alive for ever; this bound is on the whole request.
    """


def usable(verdict: Verdict | None) -> bool:
    """A verdict with both scores. Anything less is never served from the cache (it is asked again)."""
    return verdict is not None and verdict.trait is not None and verdict.coherence is not None


def _is_openai_host(base_url: str) -> bool:
    host = (urlparse(base_url).hostname or "").lower()
    return host == "api.openai.com" or host.endswith(".openai.com")


def default_cache_dir() -> Path:
    return Path(os.environ.get("WSTEER_CACHE", "~/.cache/wsteer")).expanduser() / "verdicts"


class OpenAIJudge(Judge):
    """Trait and coherence scores from an OpenAI-compatible chat-completions endpoint.

    Args:
        base_url: Endpoint root, e.g. ``https://api.openai.com/v1`` or ``http://127.0.0.1:8000/v1``.
        model: Judge model id sent with each request (and part of every cache key).
        api_key_env: Environment variable holding the API key. The key is read once, handed to the client and
            never stored in anything this object prints or records. When unset, api.openai.com is refused and
            other endpoints get a placeholder (local servers ignore it).
        prompts: Prompt YAML: a path, a packaged name (``trait_coherence``), or ``None`` for the packaged default.
        max_concurrency: Requests in flight at once.
        timeout: Seconds per HTTP request, for the whole request (a reply that trickles in slowly counts too).
        max_retries: Retries per request after a connection error, timeout, HTTP 429 or 5xx, with exponential
            backoff; when they are used up the judge raises `WsteerError`.
        cache_dir: Folder for the verdict cache (default ``$WSTEER_CACHE/verdicts``).
        name: Config name (recorded in data keys).
        thresholds: Filtering thresholds (``{trait: 50, coherence: 50}``), kept for the filtering step.
        logprobs: Ask for top logprobs (the default); ``False`` parses short text replies only, for endpoints
            that reject logprob requests.
        retry_backoff: Seconds before the first retry; doubled after each one (capped at 30 s).
        progress: Show a tqdm progress bar over the items.

    Attributes:
        requests_made: Chat-completion calls actually sent (attempts, including failed ones); cache hits add none.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str = "OPENAI_API_KEY",
        prompts: str | os.PathLike | None = None,
        max_concurrency: int = 4,
        timeout: float = 30,
        max_retries: int = 3,
        cache_dir: str | os.PathLike | None = None,
        name: str = "openai",
        thresholds: dict | None = None,
        logprobs: bool = True,
        retry_backoff: float = 0.5,
        progress: bool = True,
        min_numeric_mass: float = MIN_NUMERIC_MASS,
    ):
        import openai

        if max_concurrency < 1 or max_retries < 0 or timeout <= 0 or retry_backoff < 0:
            raise WsteerError(
                "judge.max_concurrency must be ≥ 1, judge.max_retries ≥ 0 and judge.timeout > 0; got "
                f"{max_concurrency}, {max_retries}, {timeout}"
            )
        self.name = name
        self.model = model
        self.base_url = base_url
        self.api_key_env = api_key_env
        self.thresholds = resolve_thresholds(thresholds)
        self.max_concurrency = int(max_concurrency)
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.retry_backoff = float(retry_backoff)
        self.progress = progress
        self.min_numeric_mass = min_numeric_mass  # lower it only for tiny local judges that hedge in text
        self.prompts_path, self.version, self.templates = load_prompts(prompts)
        self.cache = VerdictCache(Path(cache_dir).expanduser() if cache_dir else default_cache_dir(), model,
                                  self.version)
        api_key = os.environ.get(api_key_env)
        if not api_key:
            if _is_openai_host(base_url):
                raise WsteerError(
                    f"judge=openai needs an API key for {base_url}: set the {api_key_env} environment variable "
                    "(or point judge.base_url / WSTEER_JUDGE_BASE_URL at a local OpenAI-compatible server)"
                )
            api_key = PLACEHOLDER_KEY
        # Our own retry loop below (so it can give up with a clear message and stop the other workers);
        # the client's built-in retries stay off so attempts are not multiplied.
        self._client = openai.OpenAI(base_url=base_url, api_key=api_key, timeout=self.timeout, max_retries=0)
        self._openai = openai
        self._use_logprobs = logprobs
        self._count_lock = threading.Lock()
        self._abort = threading.Event()
        self.requests_made = 0
        # The last reply that carried no score, so that an error about unusable verdicts can quote one.
        self.last_unparsed: str | None = None
        self.unusable = 0  # answers this judge could not score: never cached, asked again on the next run

    def __repr__(self) -> str:
        return (f"OpenAIJudge(name={self.name!r}, model={self.model!r}, base_url={self.base_url!r}, "
                f"version={self.version!r})")

    def cache_note(self) -> str:
        """What the verdict cache holds after unusable verdicts, for error messages."""
        return (f"{self.unusable} unusable verdict(s) were not cached, so rerunning the same command after fixing "
                f"the judge asks for them again; the cache {self.cache.path} holds {len(self.cache)} scored "
                "verdict(s), none unusable")

    def judge(self, items: list[JudgeItem]) -> list[Verdict]:
        # A cached verdict without both scores (written by an older wsteer) is a miss: it is asked again.
        verdicts: list[Verdict | None] = [v if usable(v := self.cache.get(it)) else None for it in items]
        todo: dict[JudgeItem, list[int]] = {}  # identical answers are scored once
        for i, (item, verdict) in enumerate(zip(items, verdicts, strict=True)):
            if verdict is None:
                todo.setdefault(item, []).append(i)
        if not todo:
            return verdicts  # type: ignore[return-value]
        self._abort.clear()
        pool = ThreadPoolExecutor(max_workers=self.max_concurrency, thread_name_prefix="wsteer-judge")
        bar = tqdm(total=len(items), initial=len(items) - sum(map(len, todo.values())),
                   desc=f"judge {self.model}", unit="answer", disable=not self.progress)
        try:
            futures = {pool.submit(self._score_and_store, item): item for item in todo}
            pending = set(futures)
            while pending:
                done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                for fut in done:
                    verdict = fut.result()  # re-raises a worker's WsteerError here, in the caller's thread
                    for i in todo[futures[fut]]:
                        verdicts[i] = verdict
                    bar.update(len(todo[futures[fut]]))
        except BaseException:
            self._abort.set()  # stop the other workers' retries; what they finished is already cached
            raise
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
            bar.close()
        return verdicts  # type: ignore[return-value]

    def _score_and_store(self, item: JudgeItem) -> Verdict:
        verdict = Verdict(trait=self._ask(item, "trait"), coherence=self._ask(item, "coherence"))
        if usable(verdict):
            self.cache.put(item, verdict)  # stored as soon as it exists, so a crash later loses nothing
        else:  # an endpoint answering empty or wordy replies must not poison the cache for when it is fixed
            with self._count_lock:
                self.unusable += 1
        return verdict

    def _ask(self, item: JudgeItem, which: str) -> float | None:
        messages = [{"role": "user", "content": self.templates[which].format(**asdict(item))}]
        if self._use_logprobs:
            try:
                response = self._create(messages, max_tokens=1, logprobs=True, top_logprobs=20)
            except self._openai.BadRequestError:
                response = None  # the endpoint rejects logprob requests: parse text from now on
            top = top_logprobs(response) if response is not None else None
            if top is not None:
                score = score_from_top_logprobs(top, self.min_numeric_mass)
                if score is None:
                    self.last_unparsed = f"top tokens {sorted(top, key=top.get, reverse=True)[:5]}"
                return score
            # No logprobs came back; the endpoint will not start sending them, so later questions skip this try.
            self._use_logprobs = False
        try:
            response = self._create(messages, max_tokens=5)
        except self._openai.BadRequestError as e:
            raise WsteerError(
                f"judge endpoint {self.base_url} rejected a request for model {self.model!r} "
                f"(HTTP 400: {e.message}); check judge.model and judge.prompts"
            ) from e
        text = reply_text(response, self.base_url)
        score = score_from_text(text)
        if score is None:
            self.last_unparsed = text[:80] if text.strip() else "(an empty reply)"
        return score

    def _within_deadline(self, call):
        """Run `call()` (one HTTP request) with `self.timeout` seconds for all of it; raise `_DeadlineExceeded`.

        The request runs in a helper thread that the caller stops waiting for at the deadline; that thread ends
        at the client's own per-read timeout or when the server stops sending, and holds no lock meanwhile.
        """
        box: dict[str, object] = {}
        finished = threading.Event()

        def run():
            try:
                box["result"] = call()
            except BaseException as e:  # noqa: BLE001 - handed to the caller's thread as is
                box["error"] = e
            finally:
                finished.set()

        threading.Thread(target=run, name="wsteer-judge-request", daemon=True).start()
        if not finished.wait(self.timeout):
            raise _DeadlineExceeded
        if "error" in box:
            raise box["error"]  # type: ignore[misc]
        return box["result"]

    def check_reachable(self) -> None:
        """One cheap request (``GET …/models``) before any work, so an unreachable endpoint fails at startup.

        Any HTTP answer counts as reachable (servers that do not list models answer 404): only a connection
        failure, a timeout or a rejected API key is an error here; the real requests report everything else.
        """
        openai = self._openai
        attempts = self.max_retries + 1
        for attempt in range(attempts):
            with self._count_lock:
                self.requests_made += 1
            try:
                self._within_deadline(lambda: self._client.models.list())
                return
            except openai.AuthenticationError as e:
                raise self._key_rejected() from e
            except (openai.APIConnectionError, _DeadlineExceeded) as e:
                error = e
            except Exception:  # noqa: BLE001 - an answer of any kind: the endpoint is there
                return
            if attempt + 1 < attempts:
                time.sleep(min(self.retry_backoff * 2**attempt, 30.0))
        raise self._gave_up(error, attempts) from error

    def _key_rejected(self) -> WsteerError:  # the client's message may quote part of the key: not shown
        return WsteerError(
            f"judge endpoint {self.base_url} rejected the API key (HTTP 401); check {self.api_key_env}")

    def _gave_up(self, error: BaseException, attempts: int) -> WsteerError:
        openai = self._openai
        if isinstance(error, (openai.APITimeoutError, _DeadlineExceeded)):
            return WsteerError(
                f"judge endpoint {self.base_url} did not answer within judge.timeout={self.timeout:g} s, "
                f"{attempts} attempts; raise judge.timeout or lower judge.max_concurrency if the server is busy")
        cause = f"{error.__class__.__name__}: {error}"
        if isinstance(error, openai.APIConnectionError):
            return WsteerError(
                f"judge endpoint {self.base_url} is unreachable after {attempts} attempts ({cause}); "
                "start the server or fix judge.base_url")
        return WsteerError(
            f"judge endpoint {self.base_url} kept failing after {attempts} attempts ({cause}); "
            "retry later or lower judge.max_concurrency")

    def _create(self, messages: list[dict], **params):
        """One chat completion at temperature 0, retried with exponential backoff on transient failures."""
        openai = self._openai
        attempts = self.max_retries + 1
        for attempt in range(attempts):
            if self._abort.is_set():
                raise _Aborted
            with self._count_lock:
                self.requests_made += 1
            try:
                response = self._within_deadline(lambda: self._client.chat.completions.create(
                    model=self.model, messages=messages, temperature=0, **params))
            except _DeadlineExceeded as e:
                error = e
            except (openai.APIResponseValidationError, ValueError) as e:  # ValueError: a body that is not JSON
                raise WsteerError(
                    f"judge endpoint {self.base_url} answered with something that is not a chat completion "
                    f"({e.__class__.__name__}); point judge.base_url at an OpenAI-compatible API root (…/v1)"
                ) from e
            except (openai.APIConnectionError, openai.RateLimitError, openai.InternalServerError) as e:
                error = e  # APITimeoutError is an APIConnectionError
            except openai.BadRequestError:
                raise
            except openai.AuthenticationError as e:
                raise self._key_rejected() from e
            except openai.NotFoundError as e:
                raise WsteerError(
                    f"judge endpoint {self.base_url} does not serve model {self.model!r} (HTTP 404); "
                    "set judge.model to a model it serves"
                ) from e
            except openai.APIStatusError as e:
                if e.status_code < 500:
                    raise WsteerError(
                        f"judge endpoint {self.base_url} refused the request (HTTP {e.status_code}: {e.message})"
                    ) from e
                error = e
            else:
                if not hasattr(response, "choices"):  # e.g. an HTML page from a proxy, returned as text
                    raise WsteerError(
                        f"judge endpoint {self.base_url} answered with something that is not a chat completion "
                        f"({str(response)[:60]!r}); point judge.base_url at an OpenAI-compatible API root (…/v1)"
                    )
                return response
            if attempt + 1 < attempts:
                self._abort.wait(min(self.retry_backoff * 2**attempt, 30.0))
        raise self._gave_up(error, attempts) from error
