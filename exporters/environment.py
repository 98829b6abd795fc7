"""Where a measurement ran: library versions, CPU, threads, platform, and GPU details when present."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch


def environment() -> dict[str, Any]:
    """Where numbers were measured: versions, CPU, threads, platform, and GPU details when present.

    Never raises: what cannot be read is left out (or None).
    """
    import onnx
    import onnxruntime as ort

    env: dict[str, Any] = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": ort.__version__,
        "onnxruntime_providers": list(ort.get_available_providers()),
        "tensorrt": _tensorrt_version(),
        "cpu": cpu_name(),
        "logical_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "cuda_available": torch.cuda.is_available(),
    }
    if env["cuda_available"]:
        env.update(_torch_cuda_info())
    gpus = nvidia_smi()
    if gpus:
        env["nvidia_smi"] = gpus
    return env


def _tensorrt_version() -> str | None:
    try:
        import tensorrt  # noqa: F401 - optional extra

        return str(tensorrt.__version__)
    except Exception:  # noqa: BLE001 - absent or broken install: not available
        return None


def cpu_name() -> str:
    """CPU model name from /proc/cpuinfo, else `platform.processor()`, else ''."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or ""


def cuda_device_name(dev: torch.device | None = None) -> str:
    try:
        return torch.cuda.get_device_name(dev) if torch.cuda.is_available() else ""
    except Exception:  # noqa: BLE001
        return ""


def _torch_cuda_info() -> dict[str, Any]:
    try:
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        return {
            "cuda_device": props.name,
            "cuda_device_count": torch.cuda.device_count(),
            "cuda_capability": f"{props.major}.{props.minor}",
            "cuda_memory_gib": round(props.total_memory / 2**30, 2),
            "cuda_runtime": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
        }
    except Exception as exc:  # noqa: BLE001
        return {"cuda_error": str(exc)}


_SMI_FIELDS = ("name", "driver_version", "clocks.sm", "clocks.max.sm", "clocks.mem", "power.draw",
               "power.limit", "pstate", "temperature.gpu")


def nvidia_smi() -> list[dict[str, str]] | None:
    """One dict per GPU from `nvidia-smi --query-gpu` (clocks MHz, power W, temperature C), or None."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, f"--query-gpu={','.join(_SMI_FIELDS)}", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    rows = [[v.strip() for v in line.split(",")] for line in out.strip().splitlines() if line.strip()]
    return [dict(zip(_SMI_FIELDS, row)) for row in rows if len(row) == len(_SMI_FIELDS)] or None
