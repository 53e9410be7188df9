"""An OpenAI-compatible server for steered models (`python serve.py`, issue 18).

- `schema.py`: parses and checks request bodies; every bad request becomes one OpenAI-style 400 error.
- `vectors.py`: resolves a request's steering (`sycophancy@-2`, `{"steer": {...}}`) against the vector library.
- `engine.py`: the backend interface and the queue-and-worker loop every backend shares (one worker thread owns
  the model); `backends.py` chooses and builds one (`backend=`), refusing one that cannot run here.
- `hf.py`: transformers; batches that share a steering run inside the steerer's reversible `apply(model, k)`.
- `llamacpp.py`: llama-cpp-python on the base GGUF; each vector a GGUF LoRA adapter at scale k per batch.
- `vllm.py`: vLLM (CUDA; not run here); each (vector, k) a PEFT LoRA folder sent as a `LoRARequest`.
- `app.py`: the FastAPI app (`/v1/models`, `/v1/chat/completions`, `/v1/completions`, `/health`, and the page at `/`).
"""
