"""What machine is this: the description a device agent returns from ``Describe``.

    info = describe_device("jetson0")          # a DeviceInfo; what cannot be read stays "" / 0
    info.kind, info.l4t, info.jetpack, info.power_mode, info.clocks

On a Jetson the facts come from ``jetson-stats`` (``jtop``) when it is installed and its service runs, else from
``/etc/nv_tegra_release``, ``/proc/device-tree/model``, sysfs (``/sys/class/devfreq``, cpufreq) and
``nvpmodel -q``. Elsewhere they come from ``exporters.environment.environment()`` (CPU, ONNX Runtime, TensorRT,
CUDA, ``nvidia-smi``). The parsers are pure functions of text (or of a root folder standing for ``/``) so they
can be tested on recorded samples. Nothing here raises: a fact that cannot be read is left empty.
"""
from __future__ import annotations

import functools
import logging
import os
import platform
import re
import shutil
import socket
import subprocess
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

log = logging.getLogger(__name__)

# L4T release -> JetPack release (NVIDIA's JetPack archive). Only exact releases; others stay unknown.
_JETPACK = {"36.4.4": "6.2.1", "36.4.3": "6.2", "36.4.0": "6.1", "36.3.0": "6.0", "36.2.0": "6.0 DP",
            "35.6.0": "5.1.4", "35.5.0": "5.1.3", "35.4.1": "5.1.2", "35.3.1": "5.1.1", "35.2.1": "5.1",
            "35.1.0": "5.0.2", "32.7.6": "4.6.6", "32.7.5": "4.6.5", "32.7.4": "4.6.4", "32.7.3": "4.6.3",
            "32.7.2": "4.6.2", "32.7.1": "4.6.1", "32.6.1": "4.6"}
# devfreq devices of Jetson GPUs: gpu.0 (older kernels), gm20b/gp10b/gv11b/ga10b (Nano, TX2, Xavier, Orin).
_GPU_DEVFREQ = re.compile(r"(gpu|g[mpva]\d+b)", re.IGNORECASE)


@dataclass
class DeviceInfo:
    """The fields of ``interprune.v1.DeviceInfo`` (see proto/interprune/v1/device.proto)."""

    name: str = ""
    hostname: str = ""
    kind: str = "cpu"                       # "jetson" | "gpu" | "cpu"
    model: str = ""
    cpu: str = ""
    cpu_cores: int = 0
    memory_bytes: int = 0
    gpu: str = ""
    driver_version: str = ""
    cuda_version: str = ""
    tensorrt_version: str = ""
    onnxruntime_version: str = ""
    jetpack: str = ""
    l4t: str = ""
    power_mode: str = ""
    clocks: dict[str, str] = field(default_factory=dict)
    backends: list[str] = field(default_factory=list)
    platform: str = ""
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """One line for reports, e.g. "NVIDIA Jetson AGX Orin (JetPack 6.1, MAXN)"."""
        what = self.model or self.gpu or self.cpu or self.kind
        extra = [f"JetPack {self.jetpack}" if self.jetpack else (f"L4T {self.l4t}" if self.l4t else ""),
                 self.power_mode, self.gpu if self.kind == "gpu" and self.gpu != what else ""]
        extra = [e for e in extra if e]
        return f"{what} ({', '.join(extra)})" if extra else what


# --- parsers (pure) -------------------------------------------------------------------------------------

def parse_nv_tegra_release(text: str) -> dict[str, str]:
    """``# R36 (release), REVISION: 4.0, GCID: ..., BOARD: generic, EABI: aarch64, DATE: ...`` ->
    ``{"l4t": "36.4.0", "board": "generic", "eabi": "aarch64", "gcid": ..., "date": ...}``; {} if unrecognised."""
    line = next((l for l in text.splitlines() if l.strip()), "")
    match = re.match(r"\s*#?\s*R(\d+)\s*\(release\)\s*,\s*REVISION:\s*([\d.]+)", line)
    if not match:
        return {}
    revision = match.group(2).strip(".").split(".")
    revision += ["0"] * (2 - len(revision))
    out = {"l4t": ".".join([match.group(1), *revision[:2]])}
    for key, value in re.findall(r"\b(GCID|BOARD|EABI|DATE):\s*([^,]+)", line):
        out[key.lower()] = value.strip()
    return out


def jetpack_for_l4t(l4t: str) -> str:
    """The JetPack release of an L4T release ("36.4.0" -> "6.1"); "" when not in the table."""
    parts = (l4t.strip().split(".") + ["0", "0"])[:3]
    return _JETPACK.get(".".join(parts), "")


def parse_nvpmodel(text: str) -> str:
    """The mode name from ``nvpmodel -q`` output (``NV Power Mode: MAXN`` then the mode id); "" if absent."""
    match = re.search(r"NV Power Mode:\s*(\S.*?)\s*$", text, re.MULTILINE)
    return match.group(1) if match else ""


def parse_meminfo(text: str) -> int:
    """Total RAM in bytes from ``/proc/meminfo`` (``MemTotal: 16384000 kB``); 0 if absent."""
    match = re.search(r"^MemTotal:\s*(\d+)\s*kB", text, re.MULTILINE)
    return int(match.group(1)) * 1024 if match else 0


def device_tree_model(root: Path = Path("/")) -> str:
    """``/proc/device-tree/model`` (NUL-terminated), e.g. "NVIDIA Jetson AGX Orin Developer Kit"; "" if absent."""
    return _read(root / "proc/device-tree/model").replace("\x00", "").strip()


def read_clocks(root: Path = Path("/")) -> dict[str, str]:
    """GPU clocks from devfreq (Hz -> MHz) and CPU0's clock from cpufreq (kHz -> MHz), as strings."""
    clocks: dict[str, str] = {}
    devfreq = root / "sys/class/devfreq"
    for device in sorted(devfreq.iterdir()) if devfreq.is_dir() else ():
        if not _GPU_DEVFREQ.search(device.name):
            continue
        for key, name in (("gpu_mhz", "cur_freq"), ("gpu_max_mhz", "max_freq")):
            value = _read(device / name).strip()
            if value.isdigit():
                clocks[key] = _mhz(int(value) / 1e6)
        if clocks:
            break
    cpufreq = root / "sys/devices/system/cpu/cpu0/cpufreq"
    for key, name in (("cpu_mhz", "scaling_cur_freq"), ("cpu_max_mhz", "cpuinfo_max_freq")):
        value = _read(cpufreq / name).strip()
        if value.isdigit():
            clocks[key] = _mhz(int(value) / 1e3)
    return clocks


def facts_from_jtop(board: Mapping[str, Any], nvpmodel: Any = None, jetson_clocks: Any = None,
                    gpu: Mapping[str, Any] | None = None, memory: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """DeviceInfo fields from jetson-stats' ``jtop`` attributes (``board``, ``nvpmodel``, ``jetson_clocks``,
    ``gpu``, ``memory``), as far as they are present; keys as in DeviceInfo."""
    hardware = dict(board.get("hardware") or {})
    libraries = dict(board.get("libraries") or {})
    out: dict[str, Any] = {"source": "jtop"}
    for key, names in (("model", ("Model", "Module")), ("l4t", ("L4T",)), ("jetpack", ("Jetpack", "JetPack"))):
        value = next((str(hardware[n]) for n in names if hardware.get(n)), "")
        if value and "missing" not in value.lower():
            out[key] = value
    for key, name in (("cuda_version", "CUDA"), ("tensorrt_version", "TensorRT")):
        value = str(libraries.get(name) or "")
        if value and "missing" not in value.lower():
            out[key] = value
    if nvpmodel is not None:
        out["power_mode"] = str(getattr(nvpmodel, "name", nvpmodel))
    clocks: dict[str, str] = {}
    if jetson_clocks is not None:
        clocks["jetson_clocks"] = "on" if bool(jetson_clocks) else "off"
    for name, entry in (gpu or {}).items():
        freq = (entry or {}).get("freq") or {}
        if freq.get("cur"):
            clocks["gpu_mhz"] = _mhz(float(freq["cur"]) / 1e3)            # jtop reports kHz
        if freq.get("max"):
            clocks["gpu_max_mhz"] = _mhz(float(freq["max"]) / 1e3)
        out.setdefault("gpu", str(name))
        break
    if clocks:
        out["clocks"] = clocks
    total_kb = ((memory or {}).get("RAM") or {}).get("tot")
    if total_kb:
        out["memory_bytes"] = int(total_kb) * 1024
    return out


# --- gathering ------------------------------------------------------------------------------------------

def is_jetson(root: Path = Path("/")) -> bool:
    return (root / "etc/nv_tegra_release").is_file() or "jetson" in device_tree_model(root).lower()


def describe_device(name: str, root: Path = Path("/")) -> DeviceInfo:
    """This machine as a DeviceInfo: the static facts (cached), then the clocks and power mode read now."""
    info = replace(_static_facts(name, str(root)))
    info.clocks = dict(info.clocks)
    if info.kind == "jetson":                  # fresh values over the cached ones (DVFS moves clocks)
        info.clocks.update(read_clocks(root))
        info.power_mode = _nvpmodel() or info.power_mode
    else:
        info.clocks.update({k: v for k, v in read_clocks(root).items() if k.startswith("cpu")})
        info.clocks.update(_smi_clocks())
    return info


@functools.lru_cache(maxsize=4)
def _static_facts(name: str, root_text: str) -> DeviceInfo:
    root = Path(root_text)
    info = DeviceInfo(name=name, hostname=socket.gethostname(), platform=platform.platform(),
                      cpu_cores=os.cpu_count() or 0, memory_bytes=parse_meminfo(_read(root / "proc/meminfo")))
    _from_environment(info)
    if is_jetson(root):
        info.kind = "jetson"
        info.model = device_tree_model(root)
        release = parse_nv_tegra_release(_read(root / "etc/nv_tegra_release"))
        info.l4t = release.get("l4t", "")
        info.source = "sysfs"
        for key, value in _jtop_facts().items():
            setattr(info, key, value)
        info.jetpack = info.jetpack or jetpack_for_l4t(info.l4t)
    elif info.gpu:
        info.kind = "gpu"
    return info


def _from_environment(info: DeviceInfo) -> None:
    try:
        from exporters.environment import environment
        from exporters.tensorrt import tensorrt_available

        env = environment()
        trt_ok, _ = tensorrt_available()
    except Exception as exc:  # noqa: BLE001 - a description must not fail for a broken optional library
        log.warning("cannot read the environment: %s", exc)
        return
    info.cpu = env.get("cpu") or ""
    info.onnxruntime_version = env.get("onnxruntime") or ""
    info.tensorrt_version = env.get("tensorrt") or ""
    info.cuda_version = str(env.get("cuda_runtime") or "")
    smi = (env.get("nvidia_smi") or [{}])[0]
    info.gpu = env.get("cuda_device") or smi.get("name", "")
    info.driver_version = smi.get("driver_version", "")
    providers = env.get("onnxruntime_providers") or []
    info.backends = (["tensorrt"] if trt_ok else []) + \
        (["onnxruntime:cuda"] if "CUDAExecutionProvider" in providers else []) + ["onnxruntime:cpu"]


def _jtop_facts() -> dict[str, Any]:
    try:
        from jtop import jtop  # jetson-stats, optional
    except Exception:  # noqa: BLE001 - not installed: sysfs instead
        return {}
    try:
        with jtop() as jetson:
            if not jetson.ok():
                return {}
            return facts_from_jtop(jetson.board, jetson.nvpmodel, jetson.jetson_clocks, jetson.gpu, jetson.memory)
    except Exception as exc:  # noqa: BLE001 - e.g. the jtop service is not running
        log.info("jtop unavailable (%s); reading sysfs instead", exc)
        return {}


def _nvpmodel() -> str:
    exe = shutil.which("nvpmodel")
    if exe is None:
        return ""
    try:
        out = subprocess.run([exe, "-q"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return ""
    return parse_nvpmodel(out.stdout + out.stderr)


def _smi_clocks() -> dict[str, str]:
    try:
        from exporters.environment import nvidia_smi

        smi = (nvidia_smi() or [{}])[0]
    except Exception:  # noqa: BLE001
        return {}
    names = {"clocks.sm": "gpu_mhz", "clocks.max.sm": "gpu_max_mhz", "clocks.mem": "mem_mhz", "pstate": "pstate"}
    return {names[k]: v for k, v in smi.items() if k in names and v and "N/A" not in v}


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _mhz(value: float) -> str:
    return f"{value:.0f}"
