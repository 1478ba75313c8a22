"""gemini_ray: distil a large teacher LM into a small student with KD + contrastive learning, on Ray."""

from gemini_ray.ray_compat.env import set_env_defaults

# Ray settings that exist only as environment variables, set before Ray reads them (ray_compat/env.py)
set_env_defaults()

__version__ = "0.1.0"
