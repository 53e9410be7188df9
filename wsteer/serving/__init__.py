"""An OpenAI-compatible server for steered models (`python serve.py`, issue 18).

- `schema.py`: parses and checks request bodies; every bad request becomes one OpenAI-style 400 error.
- `vectors.py`: resolves a request's steering (`sycophancy@-2`, `{"steer": {...}}`) against the vector library.
- `engine.py`: the backend interface and the `hf` backend; one worker thread owns the model and runs batches of
  requests that share a steering inside the steerer's reversible `apply(model, k)`.
- `app.py`: the FastAPI app (`/v1/models`, `/v1/chat/completions`, `/v1/completions`, `/health`, and the page at `/`).
"""
