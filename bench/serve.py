"""Serving throughput: the OpenAI-compatible server under 1, 8 and 32 concurrent clients against offline batched
`generate` of the same prompts, and the cost of mixed-k traffic against single-k traffic.

Everything runs in one process on one loaded model: the server (uvicorn on a loopback port, the `hf` engine, a
vector library holding one sycophancy vector for this model) and the clients (the real `openai` client, one
thread each, closed loop: each client sends its next request when its answer arrives). The prompts are the
held-out questions of two behaviors, answered greedily at k = -2 with `--max-new-tokens` tokens.

- `offline_generate_bs<B>`: `wsteer.generation.generate` under `WeightSteerer.apply` with batch size B (= the
  server's `max_batch_rows`): the baseline; the goal is ≥ 0.8× at 32 clients. With `--backend llamacpp` the
  baseline is `offline_llama_cpp_one_at_a_time` (llama-cpp-python alone with the exported GGUF LoRA at scale k).
- `server_c<C>`: C concurrent clients; `agree` is the share of answers identical to the offline ones (greedy: 1.0).
- `server_c<C>_mixed_k`: the same, with k cycling over `--mixed-ks` (requests batch only with their own k), next to
  `server_c<C>` (every request at k = -2); the ratio between them is the cost of mixed-k traffic.

tokens/s counts new tokens including end-of-turn, as `generate` counts them (`usage.completion_tokens`).

    python bench/serve.py                                   # CPU, SmolLM2-135M (the embedded default)
    python bench/serve.py --arch tiny --max-new-tokens 16   # seconds
    python bench/serve.py --backend llamacpp --clients 1,8 --requests 16   # llama-cpp-python on the GGUF
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bench.common import load, parser, questions, report, setup  # noqa: E402
from bench.generation import steering_vector  # noqa: E402
from wsteer.generation import generate  # noqa: E402
from wsteer.models import fingerprint  # noqa: E402
from wsteer.steering.weight import WeightSteerer  # noqa: E402


def library_with(vector, model, arch: str, fp: str) -> Path:
    """A temporary vector library holding `vector` as this model's sycophancy vector."""
    cache = Path(tempfile.mkdtemp(prefix="wsteer-bench-serve-"))
    folder = cache / "vectors" / f"{arch}-{fp[:12]}" / "sycophancy" / "lora" / "000000000000-00000000"
    folder.mkdir(parents=True)
    vector.manifest.update(base_fingerprint=fp, behavior="sycophancy", base_model=arch)
    vector.manifest.setdefault("method", "weight")
    vector.save(folder / "contrastive.safetensors")
    (folder / "COMPLETE").write_text("{}")
    return cache


def start_server(model, tok, cache: Path, arch: str, fp: str, max_batch_rows: int, batch_wait_ms: float,
                 backend: str = "hf", base_gguf: Path | None = None, threads: int | None = None):
    import uvicorn

    from wsteer.recipes.serve import bind
    from wsteer.serving.app import Settings, build_app
    from wsteer.serving.vectors import ServedLibrary

    if backend == "llamacpp":
        from wsteer.serving.llamacpp import LlamaCppEngine

        engine = LlamaCppEngine(base_gguf, tok, cache / "serving" / "llamacpp", model=model, n_ctx=2048,
                                n_threads=threads, max_batch_rows=max_batch_rows, batch_wait_s=batch_wait_ms / 1000)
    else:
        from wsteer.serving.hf import HFEngine

        engine = HFEngine(model, tok, max_batch_rows=max_batch_rows, batch_wait_s=batch_wait_ms / 1000)
    app = build_app(engine, ServedLibrary(cache, model, fp, arch), Settings(model_id=arch, fingerprint=fp, max_rows=max_batch_rows))
    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    engine.start()
    threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return server, engine, f"http://127.0.0.1:{sock.getsockname()[1]}/v1"


def drive(url: str, base: str, prompts: list[str], ks: list[float], clients: int, max_new_tokens: int):
    """Closed-loop clients: (answers in prompt order, completion tokens, seconds)."""
    import openai

    client = openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=600)
    answers: list[str | None] = [None] * len(prompts)
    tokens = [0] * len(prompts)
    next_i = iter(range(len(prompts)))
    lock = threading.Lock()

    def worker():
        while True:
            with lock:
                i = next(next_i, None)
            if i is None:
                return
            model = f"sycophancy@{ks[i]:g}" if ks[i] else base  # k = 0 is the base model
            r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompts[i]}],
                                               temperature=0, max_tokens=max_new_tokens)
            answers[i], tokens[i] = r.choices[0].message.content, r.usage.completion_tokens

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return answers, sum(tokens), time.perf_counter() - t0


def offline(model, tok, steerer, prompts: list[str], ks: list[float], batch_size: int, max_new_tokens: int):
    """`generate` per k (one steering per pass, as the server batches): (answers, tokens, seconds)."""
    answers: list[str | None] = [None] * len(prompts)
    tokens = 0
    t0 = time.perf_counter()
    for k in dict.fromkeys(ks):
        idx = [i for i, v in enumerate(ks) if v == k]
        with steerer.apply(model, k):
            outs = generate(model, tok, [[{"role": "user", "content": prompts[i]}] for i in idx],
                            max_new_tokens=max_new_tokens, batch_size=batch_size, progress=False)
        for i, o in zip(idx, outs, strict=True):
            answers[i] = o["text"]
            tokens += o["new_tokens"]
    return answers, tokens, time.perf_counter() - t0


def offline_llamacpp(tok, base_gguf: Path, lora: Path, prompts: list[str], ks: list[float], max_new_tokens: int,
                     threads: int | None):
    """llama-cpp-python alone, one prompt at a time (it decodes one sequence): `Llama(lora_path, lora_scale=k)` per
    k and its greedy `create_completion` on the prompt ids the server renders. Tokens: `usage.completion_tokens`
    (llama-cpp-python does not count the end-of-turn token, so this baseline is slightly flattered)."""
    from llama_cpp import Llama

    from wsteer.generation import render_prompt

    answers: list[str | None] = [None] * len(prompts)
    tokens, secs = 0, 0.0
    for k in dict.fromkeys(ks):
        llm = Llama(model_path=str(base_gguf), lora_path=str(lora) if k else None, lora_scale=k, n_ctx=2048,
                    n_threads=threads, seed=0, verbose=False)
        t0 = time.perf_counter()  # generation only: loading the model per k is not counted
        for i in (i for i, v in enumerate(ks) if v == k):
            llm.reset()
            r = llm.create_completion(prompt=render_prompt(tok, [{"role": "user", "content": prompts[i]}]),
                                      temperature=0, max_tokens=max_new_tokens)
            answers[i] = r["choices"][0]["text"].strip()
            tokens += r["usage"]["completion_tokens"]
        secs += time.perf_counter() - t0
        llm.close()
    return answers, tokens, secs


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=64, help="prompts per pass (held-out questions, repeated)")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--clients", default="1,8,32", help="concurrency levels")
    p.add_argument("--single-client-requests", type=int, default=16,
                   help="prompts for the 1-client pass (it is serial: tokens/s needs fewer)")
    p.add_argument("--max-batch-rows", type=int, default=32)
    p.add_argument("--batch-wait-ms", type=float, default=10)
    p.add_argument("--k", type=float, default=-2.0)
    p.add_argument("--mixed-ks", default="-2,0,2,4")
    p.add_argument("--backend", default="hf", choices=("hf", "llamacpp"),
                   help="llamacpp: the embedded model's GGUF in llama-cpp-python, the vector as a GGUF LoRA; the "
                   "offline baseline is then llama-cpp-python alone, one prompt at a time")
    args = p.parse_args()
    setup(args)
    model, tok = load(args.arch, args.device)
    fp = fingerprint(model)
    vector = steering_vector(model, args.arch)
    steerer = WeightSteerer(vector)
    cache = library_with(vector, model, args.arch, fp)
    qs = questions()
    prompts = [qs[i % len(qs)] for i in range(args.requests)]
    single = [args.k] * len(prompts)
    mixed_set = [float(x) for x in args.mixed_ks.split(",")]
    mixed = [mixed_set[i % len(mixed_set)] for i in range(len(prompts))]
    levels = [int(c) for c in args.clients.split(",")]

    base_gguf = lora = None
    if args.backend == "llamacpp":
        from omegaconf import OmegaConf

        from wsteer.export_gguf import export_gguf_lora
        from wsteer.models import gguf_path

        if args.arch != "smollm2_135m":
            p.error("--backend llamacpp needs --arch smollm2_135m (the embedded model's GGUF)")
        base_gguf = gguf_path(OmegaConf.load(Path(__file__).resolve().parents[1] / "conf/model/smollm2_135m.yaml"))
        lora = export_gguf_lora(vector, cache / "bench_vector.gguf", base_gguf)

        def baseline(ks):
            return offline_llamacpp(tok, base_gguf, lora, prompts, ks, args.max_new_tokens, args.threads)
        name = "offline_llama_cpp_one_at_a_time"
    else:
        def baseline(ks):
            return offline(model, tok, steerer, prompts, ks, args.max_batch_rows, args.max_new_tokens)
        name = f"offline_generate_bs{args.max_batch_rows}"
    server, engine, url = start_server(model, tok, cache, args.arch, fp, args.max_batch_rows, args.batch_wait_ms,
                                       args.backend, base_gguf, args.threads)
    try:
        drive(url, args.arch, prompts[:2], single[:2], 2, 4)  # warm-up: first requests pay for imports and allocations
        rows = []
        want, tokens, secs = baseline(single)
        rows.append({"system": name, "tok_per_s": tokens / secs, "requests": len(prompts), "seconds": secs})
        for c in levels:
            n = args.single_client_requests if c == 1 else len(prompts)
            before = engine.stats()
            got, tokens, secs = drive(url, args.arch, prompts[:n], single[:n], c, args.max_new_tokens)
            after = engine.stats()
            rows.append({"system": f"server_c{c}", "tok_per_s": tokens / secs, "requests": n, "seconds": secs,
                         "agree": sum(a == b for a, b in zip(got, want[:n], strict=True)) / n,
                         "mean_batch_rows": (after["rows"] - before["rows"]) / max(1, after["batches"] - before["batches"])})
        c = max(levels)
        want_mixed, _, _ = baseline(mixed)
        before = engine.stats()
        got, tokens, secs = drive(url, args.arch, prompts, mixed, c, args.max_new_tokens)
        after = engine.stats()
        rows.append({"system": f"server_c{c}_mixed_k", "tok_per_s": tokens / secs, "requests": len(prompts),
                     "seconds": secs, "agree": sum(a == b for a, b in zip(got, want_mixed, strict=True)) / len(prompts),
                     "mean_batch_rows": (after["rows"] - before["rows"]) / max(1, after["batches"] - before["batches"]),
                     "ks": args.mixed_ks})
    finally:
        server.should_exit = True
        engine.stop()
        shutil.rmtree(cache, ignore_errors=True)
    report(f"Serving throughput ({args.arch}, backend {args.backend}, {args.device}, greedy, ≤ {args.max_new_tokens} new tokens, "
           f"torch threads {torch.get_num_threads()})", rows, rows[0]["system"], "tok_per_s", args=args,
           also_vs=f"server_c{c}")


if __name__ == "__main__":
    main()
