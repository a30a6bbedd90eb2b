"""Device datasheets: the named devices `memjax plan --device NAME` plans for, and which
bench records are theirs."""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Device:
    """A device's datasheet: dense matmul FLOP/s by compute precision, memory bytes/s, and
    `matches`: substrings of jax's device_kind that name it in bench records."""

    name: str
    peak: dict
    bandwidth: float
    source: str
    matches: tuple[str, ...] = ()


# float32 is JAX's default matmul precision: TF32 tensor cores on NVIDIA GPUs, one bf16
# pass on TPUs. Sparse figures in datasheets are halved to dense.
DEVICES = {
    "h100": Device("NVIDIA H100 SXM5 80GB", {"float32": 494.7e12, "bfloat16": 989.4e12},
                   3.35e12, "NVIDIA H100 Tensor Core GPU datasheet (SXM5: TF32 989 and BF16 "
                   "1979 TFLOPS with sparsity; 3.35 TB/s HBM3)", ("H100",)),
    "h200": Device("NVIDIA H200 SXM 141GB", {"float32": 494.7e12, "bfloat16": 989.4e12},
                   4.8e12, "NVIDIA H200 Tensor Core GPU datasheet (SXM: TF32 989 and BF16 "
                   "1979 TFLOPS with sparsity; 4.8 TB/s HBM3e)", ("H200",)),
    "a100": Device("NVIDIA A100 SXM 80GB", {"float32": 156e12, "bfloat16": 312e12},
                   2.039e12, "NVIDIA A100 Tensor Core GPU datasheet (SXM 80GB: TF32 156, "
                   "BF16 312 TFLOPS dense; 2,039 GB/s HBM2e)", ("A100",)),
    "tpu-v5e": Device("Google Cloud TPU v5e (one chip)", {"float32": 197e12,
                                                          "bfloat16": 197e12},
                      819e9, "cloud.google.com/tpu/docs/v5e (197 TFLOP/s bf16, 819 GB/s HBM "
                      "per chip)", ("v5 lite", "v5e")),
    "tpu-v4": Device("Google Cloud TPU v4 (one chip)", {"float32": 275e12, "bfloat16": 275e12},
                     1.2e12, "cloud.google.com/tpu/docs/v4 (275 TFLOP/s bf16, 1,200 GB/s HBM "
                     "per chip)", ("TPU v4",)),
}


def device_name(device_kind: str) -> str | None:
    """The DEVICES name of a jax device_kind ("NVIDIA H200" -> "h200"), None if unnamed."""
    return next((name for name, d in DEVICES.items()
                 if any(m.lower() in device_kind.lower() for m in d.matches)), None)
