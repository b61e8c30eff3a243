"""What the GPU benchmark will run on: Python, the packages it imports (and from where), the device.

    python benchmarks/gpu_env.py      # benchmarks/gpu_device_run.sh prints this first

Exits 2 naming what is missing, so a device call with a wrong wheel set ends in seconds.
"""
from __future__ import annotations

import importlib
import platform
import sys

NEEDED = ("torch", "transformers", "peft", "deepspeed", "safetensors", "tokenizers", "yaml", "numpy", "tqdm")
OPTIONAL = ("liger_kernel", "triton", "flash_attn")


def version_of(name: str) -> str:
    module = importlib.import_module(name)
    return f"{getattr(module, '__version__', '?')} ({getattr(module, '__file__', '?')})"


def main() -> int:
    print(f"python {platform.python_version()} ({sys.executable})")
    missing = []
    for name in NEEDED + OPTIONAL:
        try:
            print(f"{name:>14}: {version_of(name)}")
        except Exception as e:  # noqa: BLE001 - any import failure is worth one line, not a traceback
            print(f"{name:>14}: not importable ({type(e).__name__}: {e})")
            if name in NEEDED:
                missing.append(name)
    import torch

    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        print(f"device: {props.name}, {props.total_memory / 2**30:.0f} GiB, {props.multi_processor_count} SMs, "
              f"capability {props.major}.{props.minor}; {torch.cuda.device_count()} visible")
    else:
        print("device: no CUDA device (CPU dry run)")
    if missing:
        print(f"missing: {', '.join(missing)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
