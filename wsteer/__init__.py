"""wsteer: steer language models with contrastive weight arithmetic (Fierro & Roger, ICLR 2026)."""

__version__ = "0.1.0"
