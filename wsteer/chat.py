"""The prompt every generation engine sees: a conversation rendered by the model's own chat template.

One function, in its own module, so the HF path (`generation.py`), the vLLM path (`generation_vllm.py`) and the
server give a model exactly the same token ids for the same conversation.
"""

from __future__ import annotations


def render_prompt(tokenizer, conversation: list[dict[str, str]]) -> list[int]:
    """Token ids of `conversation` with the assistant turn opened, as the chat template writes it."""
    text = tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False).input_ids
