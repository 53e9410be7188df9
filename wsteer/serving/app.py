"""The FastAPI app: OpenAI's `/v1/models`, `/v1/chat/completions`, `/v1/completions`, plus `/health` and a page at `/`.

FastAPI on uvicorn: a small, well-kept ASGI stack that streams (server-sent events) without extra parts, and is
what llama-cpp-python's own OpenAI server uses, so the test tools already carry it. Handlers parse and resolve a
request in a thread (vector loading and tokenizing never block the event loop), hand it to the engine's queue,
and await its events; the engine's worker is the only code that touches the model.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from wsteer.serving.engine import Engine, Job, Row
from wsteer.serving.schema import APIError, parse_chat, parse_completion
from wsteer.serving.schema import Request as GenRequest
from wsteer.serving.vectors import ServedLibrary

log = logging.getLogger("wsteer.serve")
PAGE = Path(__file__).parent / "static" / "index.html"
DISCONNECT_POLL_S = 0.5  # how often a request waiting for its answer checks that its client is still there


@dataclass
class Settings:
    model_id: str  # the base model's id in /v1/models and responses
    fingerprint: str
    aliases: frozenset[str] = frozenset()  # other names accepted for the base (config name, path)
    api_key: str | None = None  # from the environment; compared, never logged or echoed
    default_max_tokens: int = 256
    max_n: int = 16
    max_rows: int = 32  # answers per request (prompts × n): one request is one batch, never split
    default_temperature: float = 1.0  # OpenAI's default; send temperature=0 for greedy answers


def build_app(engine: Engine, library: ServedLibrary, settings: Settings) -> FastAPI:
    app = FastAPI(title="wsteer", docs_url=None, redoc_url=None, openapi_url=None)
    base_names = {settings.model_id, *settings.aliases}
    started = int(time.time())

    @app.exception_handler(APIError)
    async def _api_error(request: Request, e: APIError):
        log.info("%s %s %d %s: %s", request.method, request.url.path, e.status, e.code, e.message)
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException):
        err = APIError(f"{request.method} {request.url.path}: {e.detail}", status=e.status_code,
                       code="not_found" if e.status_code == 404 else None)
        return await _api_error(request, err)

    @app.exception_handler(Exception)
    async def _crash(request: Request, e: Exception):
        log.exception("unexpected error in %s %s", request.method, request.url.path)
        return JSONResponse(APIError(f"internal error ({type(e).__name__}); the server keeps serving", status=500,
                                     type="server_error").body(), status_code=500)

    def authorize(request: Request) -> None:
        if settings.api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), settings.api_key.encode()):
            raise APIError("missing or wrong API key: send `Authorization: Bearer <key>` with the key the server "
                           "was started with", status=401, code="invalid_api_key")

    async def body_of(request: Request):
        raw = await request.body()
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise APIError(f"the request body is not valid JSON ({e})", code="invalid_json") from None

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": settings.model_id, "fingerprint": settings.fingerprint, **engine.stats()}

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return HTMLResponse(PAGE.read_text(encoding="utf-8"))

    @app.get("/v1/models")
    async def models(request: Request):
        authorize(request)
        usable, other = await run_in_threadpool(library.listing)
        base = {"id": settings.model_id, "object": "model", "created": started, "owned_by": "wsteer",
                "wsteer": {"kind": "base", "fingerprint": settings.fingerprint, "backend": engine.name,
                           "aliases": sorted(settings.aliases - {settings.model_id})}}
        vectors = [{"id": v["behavior"], "object": "model", "created": started, "owned_by": "wsteer", "wsteer": v}
                   for v in usable]
        return {"object": "list", "data": [base, *vectors], "other_base_vectors": other}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        authorize(request)
        req = parse_chat(await body_of(request), base_names, settings.max_n, settings.default_temperature)
        return await serve(req, request)

    @app.post("/v1/completions")
    async def completions(request: Request):
        authorize(request)
        req = parse_completion(await body_of(request), base_names, settings.max_n, settings.default_temperature)
        return await serve(req, request)

    def prepare_rows(req: GenRequest) -> list[Row]:
        """Tokenize every prompt and size each row (runs in a thread: tokenizing is CPU work)."""
        if len(req.prompts) * req.n > settings.max_rows:
            raise APIError(f"{len(req.prompts)} prompt(s) × n={req.n} is {len(req.prompts) * req.n} answers; one "
                           f"request may ask for at most {settings.max_rows} (send several requests)",
                           param="prompt", code="invalid_value")
        encode = engine.encode_chat if req.kind == "chat" else engine.encode_text
        ctx, rows = engine.context_length, []
        for prompt in req.prompts:
            ids = encode(prompt)
            if not ids:
                raise APIError("the prompt is empty after tokenization", param="prompt", code="invalid_value")
            max_tokens = req.max_tokens or settings.default_max_tokens
            if ctx is not None and len(ids) + max_tokens > ctx:
                if req.max_tokens is not None or len(ids) >= ctx:
                    raise APIError(f"the prompt ({len(ids)} tokens) plus max_tokens ({max_tokens}) exceeds the "
                                   f"model's context length ({ctx})", param="max_tokens",
                                   code="context_length_exceeded")
                max_tokens = ctx - len(ids)  # no limit asked for: answer as long as the context allows
            rows += [Row(ids, max_tokens, req.stop, strip=req.kind == "chat", stream=req.stream)
                     for _ in range(req.n)]
        return rows

    async def serve(req: GenRequest, request: Request):
        t0 = time.perf_counter()
        # one hop to a thread for the CPU and disk work: load/compose the vectors, tokenize
        # (the backend's plan may export an adapter the first time a vector is used: seconds, never in the worker)
        (steerer, k, plan), rows = await run_in_threadpool(
            lambda: (engine.plan(library, req.steering), prepare_rows(req)))
        loop, events = asyncio.get_running_loop(), asyncio.Queue()
        job = Job(req.steering, steerer, k, req.sampling, rows,
                  sink=lambda ev: loop.call_soon_threadsafe(events.put_nowait, ev), plan=plan)
        engine.submit(job)
        rid = ("chatcmpl-" if req.kind == "chat" else "cmpl-") + uuid.uuid4().hex[:24]
        meta = {"id": rid, "created": int(time.time()), "model": req.model}
        extra = {"system_fingerprint": f"wsteer-{settings.fingerprint[:12]}",
                 "wsteer": {"steering": req.steering.label(), **req.steering.as_dict(),
                            "base_fingerprint": settings.fingerprint}}

        def done_log(results):
            log.info("%s %s 200 steer=%s rows=%d tokens=%d %.2fs", request.method, request.url.path,
                     req.steering.label(), len(rows), sum(r["completion_tokens"] for r in results),
                     time.perf_counter() - t0)

        if req.stream:
            return StreamingResponse(stream(req, job, events, meta, extra, done_log, request),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        try:
            while True:
                ev = await next_event(events, request, job)
                if ev is None:  # the client left: nobody to answer
                    return JSONResponse({}, status_code=499)
                if ev[0] == "error":
                    raise ev[1]
                if ev[0] == "done":
                    break
        except asyncio.CancelledError:
            job.cancelled = True
            raise
        results = ev[1]
        done_log(results)
        return {**meta, "object": "chat.completion" if req.kind == "chat" else "text_completion",
                "choices": [choice(req, i, r) for i, r in enumerate(results)], "usage": usage(results, req.n), **extra}

    async def next_event(events: asyncio.Queue, request: Request, job: Job):
        """The job's next event, or None once its client has gone (then its rows stop at the next step).

        A departed client is otherwise noticed only when a send fails, and an answer with nothing to send yet
        (a non-streamed one, or text still held back) would run to max_tokens for nobody.
        """
        while True:
            try:
                return await asyncio.wait_for(events.get(), timeout=DISCONNECT_POLL_S)
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    job.cancelled = True
                    return None

    async def stream(req: GenRequest, job: Job, events: asyncio.Queue, meta: dict, extra: dict, done_log,
                     request: Request):
        obj = "chat.completion.chunk" if req.kind == "chat" else "text_completion"

        def chunk(choices: list[dict], **more) -> str:
            return f"data: {json.dumps({**meta, 'object': obj, 'choices': choices, **extra, **more})}\n\n"

        def delta(i: int, text: str | None, finish: str | None = None) -> dict:
            if req.kind == "chat":
                d = {} if text is None else {"content": text}
                return {"index": i, "delta": d, "finish_reason": finish, "logprobs": None}
            return {"index": i, "text": text or "", "finish_reason": finish, "logprobs": None}

        finished = False
        try:
            if req.kind == "chat":
                yield chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None,
                              "logprobs": None} for i in range(len(job.rows))])
            while True:
                ev = await next_event(events, request, job)
                if ev is None:
                    return
                if ev[0] == "delta":
                    yield chunk([delta(ev[1], ev[2])])
                elif ev[0] == "done":
                    yield chunk([delta(i, None, r["finish_reason"]) for i, r in enumerate(ev[1])])
                    if req.include_usage:
                        yield chunk([], usage=usage(ev[1], req.n))
                    done_log(ev[1])
                    break
                else:  # an error after the stream began: OpenAI clients raise on an `error` payload
                    yield f"data: {json.dumps(ev[1].body())}\n\n"
                    break
            finished = True
            yield "data: [DONE]\n\n"
        finally:
            if not finished:  # the client went away: its rows stop at the next step
                job.cancelled = True

    def choice(req: GenRequest, i: int, r: dict) -> dict:
        if req.kind == "chat":
            return {"index": i, "message": {"role": "assistant", "content": r["text"]},
                    "finish_reason": r["finish_reason"], "logprobs": None}
        return {"index": i, "text": r["text"], "finish_reason": r["finish_reason"], "logprobs": None}

    def usage(results: list[dict], n: int) -> dict:
        prompt = sum(r["prompt_tokens"] for r in results[::n])  # a prompt shared by n choices counts once
        completion = sum(r["completion_tokens"] for r in results)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    return app
