"""gemini_ray: distil a large teacher LM into a small student with KD + contrastive learning, on Ray."""

__version__ = "0.1.0"
