"""Number formats: the teacher's dtype, the student's mixed precision, TF32. Plain torch, no Ray.

* `teacher_dtype("auto", device)`: bf16 on a CUDA GPU that supports it, else fp32 (CPU bf16 matmuls are
  emulated on most CPUs and slower than fp32).
* `Precision`: the student's step under `train.precision` — torch.autocast around the forward and the
  loss (the weights and AdamW's state stay fp32: autocast casts copies per op), and for fp16 a gradient
  scaler, whose state a checkpoint keeps.
* `allow_tf32()`: TF32 matmuls for the fp32 work on CUDA (Ampere and later; a no-op elsewhere).
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch

__all__ = ["DTYPES", "teacher_dtype", "allow_tf32", "enable_activation_checkpointing", "Precision"]

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def teacher_dtype(name: str, device: str | torch.device) -> torch.dtype:
    """The torch dtype for teacher.dtype on `device`: 'auto' is bf16 on a CUDA GPU with bf16 support, else fp32."""
    if name != "auto":
        return DTYPES[name]
    if torch.device(device).type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def allow_tf32() -> None:
    """TF32 for fp32 matmuls and convolutions on CUDA (10-bit mantissa products, fp32 accumulation)."""
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def enable_activation_checkpointing(model: torch.nn.Module) -> None:
    """Recompute each layer's activations in the backward pass (Hugging Face gradient checkpointing, the
    non-reentrant form that DDP and autocast support); active while the model is in train mode."""
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise ValueError(f"{type(model).__name__} does not support gradient checkpointing; "
                         "set train.activation_checkpointing=false")
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x; the older name warns there
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    model.config.use_cache = False


class Precision:
    """The student step under train.precision: 'fp32', 'bf16-mixed' or 'fp16-mixed'.

    `with precision.autocast():` around the forward; `precision.backward(loss)` once per micro-batch, then
    `precision.step(...)` (fp16: the loss is scaled, the gradients unscaled before clipping, a step with
    inf/NaN gradients skipped and the scale lowered). `state_dict()`/`load_state_dict()` carry the scale
    across a resume."""

    def __init__(self, name: str, device: torch.device) -> None:
        self.name, self.device = name, torch.device(device)
        self.dtype = {"bf16-mixed": torch.bfloat16, "fp16-mixed": torch.float16}.get(name)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=name == "fp16-mixed")

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        if self.dtype is None:
            yield
            return
        with torch.autocast(device_type=self.device.type, dtype=self.dtype):
            yield

    def backward(self, loss: torch.Tensor) -> None:
        """Gradients of `loss` added to .grad (scaled under fp16); DDP all-reduces them unless in no_sync()."""
        self.scaler.scale(loss).backward()

    def step(self, parameters: Any, optimizer: torch.optim.Optimizer, grad_clip: float) -> None:
        """Clip the global gradient norm (0: no clipping) and step."""
        if grad_clip > 0:
            self.scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
            torch.nn.utils.clip_grad_norm_(parameters, grad_clip)
        self.scaler.step(optimizer)  # fp16: skipped when a gradient is inf/NaN; otherwise optimizer.step()
        self.scaler.update()

    def state_dict(self) -> dict[str, Any]:
        return self.scaler.state_dict() if self.scaler.is_enabled() else {}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if state and self.scaler.is_enabled():
            self.scaler.load_state_dict(state)
