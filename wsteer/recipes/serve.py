"""serve.py: an OpenAI-compatible server that steers each request with θ + k·w from the vector library (issue 18).

One model is loaded; every request names its steering (`model="sycophancy@-2"` or `extra_body={"steer": {...}}`).
With `backend=hf` requests with identical steering are batched and the single worker applies each batch's
steering with the reversible in-place `apply(model, k)`; `backend=llamacpp` serves the base GGUF with each vector
as a GGUF LoRA at scale k, `backend=vllm` each (vector, k) as a vLLM LoRA. See wsteer/serving/ for the parts and
README "Serving" for the commands.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
from pathlib import Path

from omegaconf import DictConfig

from wsteer.errors import WsteerError
from wsteer.serving.activation import served_positions
from wsteer.serving.backends import check_backend_settings

CONF = Path(__file__).resolve().parents[2] / "conf"
CONF_BEHAVIORS = CONF / "behavior"


def check_settings(cfg: DictConfig) -> None:
    """Every server setting, before the model loads (a typo costs a second)."""
    check_backend_settings(cfg)  # a missing llama-cpp-python / vLLM or base GGUF fails here, in a second
    served_positions(cfg.backend, cfg.activation.positions)
    layer = cfg.activation.layer
    if layer is not None and (isinstance(layer, bool) or not isinstance(layer, int) or layer < 1):
        raise WsteerError(f"activation.layer must be a layer number ≥ 1 or null (each behavior's own), got {layer!r}")
    for key, lo, hi in (("port", 0, 65535), ("max_batch_rows", 1, 4096), ("default_max_tokens", 1, 1 << 20),
                        ("max_n", 1, 4096)):
        v = cfg[key]
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise WsteerError(f"{key} must be an integer from {lo} to {hi}, got {v!r}")
    if cfg.max_n > cfg.max_batch_rows:
        raise WsteerError(f"max_n ({cfg.max_n}) must not exceed max_batch_rows ({cfg.max_batch_rows}): a request's "
                          "choices are generated in one batch")
    for key in ("batch_wait_ms", "library_refresh_s"):
        v = cfg[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
            raise WsteerError(f"{key} must be a number ≥ 0, got {v!r}")
    t = cfg.default_temperature
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 <= t <= 2:
        raise WsteerError(f"default_temperature must be between 0 and 2, got {t!r}")
    if not isinstance(cfg.host, str) or not cfg.host:
        raise WsteerError(f"host must be an address such as 127.0.0.1, got {cfg.host!r}")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound here so that `port=0` can report the port it got and a busy port is one line."""
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
    except OSError as e:
        raise WsteerError(f"cannot listen on {host}:{port} ({e.strerror or e}); pass another port=... "
                          "(port=0 picks a free one) or host=...") from e
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def run(cfg: DictConfig) -> dict:
    check_settings(cfg)
    import uvicorn

    from wsteer.recipes._common import prepare
    from wsteer.serving.app import Settings, build_app
    from wsteer.serving.backends import make_engine
    from wsteer.serving.vectors import ServedLibrary

    api_key = os.environ.get(cfg.api_key_env) or None
    if not is_loopback(cfg.host) and api_key is None:
        print(f"wsteer: warning: serving on {cfg.host} without an API key; anyone who reaches this address can use "
              f"the model (set {cfg.api_key_env} to require a bearer token)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    ctx = prepare(cfg)
    library = ServedLibrary(cfg.paths.cache_dir, ctx.model, ctx.fingerprint, cfg.model.name,
                            known_behaviors=[p.stem for p in CONF_BEHAVIORS.glob("*.yaml")],
                            refresh_s=float(cfg.library_refresh_s), activation_layer=cfg.activation.layer,
                            activation_positions=served_positions(cfg.backend, cfg.activation.positions),
                            behavior_model_dir=CONF / "behavior_model")
    engine = make_engine(cfg, ctx.model, ctx.tokenizer, library)
    settings = Settings(model_id=str(cfg.served_model_name), fingerprint=ctx.fingerprint,
                        aliases=frozenset({str(cfg.model.name), str(cfg.model.path)}), api_key=api_key,
                        default_max_tokens=cfg.default_max_tokens, max_n=cfg.max_n, max_rows=cfg.max_batch_rows,
                        default_temperature=float(cfg.default_temperature))
    app = build_app(engine, library, settings)
    sock = bind(cfg.host, cfg.port)
    host, port = sock.getsockname()[:2]
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
    usable, _ = library.listing()
    engine.start()
    print(f"wsteer: serving {settings.model_id} (fingerprint {ctx.fingerprint[:12]}, backend {engine.name}) on "
          f"{url}/v1 with {len(usable)} steerable behavior(s): {', '.join(v['behavior'] for v in usable) or 'none'}"
          f"{'; API key required' if api_key else ''}; page at {url}/", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=5))
    try:
        server.run(sockets=[sock])
    finally:
        engine.stop()
        sock.close()
    return {}
