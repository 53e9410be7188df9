"""Weight monitoring (paper §5; design/paper.md §4): cosine similarity between weight deltas.

- `wsteer.monitoring.similarity`: inner products, cosines, per-layer/per-module breakdowns and cosine
  matrices of any two deltas (contrastive vectors w, task vectors τ, checkpoint updates θ_t − θ_pre, PEFT
  adapters, full fine-tunes), in factored form for low-rank deltas and streamed one module at a time for
  dense ones.
- `wsteer.monitoring.deltas`: the delta types (`LowRank` entries; `MemoryDelta`, `SafetensorsDelta`).
- `wsteer.monitoring.loading`: `as_delta`/`load_delta`, from vectors, dicts, safetensors files or PEFT adapter
  folders (whose layout `wsteer.lora_layout` reads).
- `wsteer.monitoring.similarity_report`: markdown tables and the cosine heatmap.
- `wsteer.monitoring.callback`: `CosineMonitor`, a Lightning callback logging the cosine of a LoRA fine-tune's
  update so far to a library of reference vectors every N steps.
- `wsteer.monitoring.compare`: compare saved deltas; writes a markdown table and a heatmap.
"""
