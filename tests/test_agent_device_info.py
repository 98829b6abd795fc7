"""The device description: parsers of Jetson files and tools on recorded samples, a fake Jetson root, and this
machine's own description."""
from __future__ import annotations

from pathlib import Path

import pytest

from service.agent.device_info import (describe_device, facts_from_jtop, jetpack_for_l4t, parse_meminfo,
                                 parse_nv_tegra_release, parse_nvpmodel, read_clocks)

ORIN_RELEASE = ("# R36 (release), REVISION: 4.0, GCID: 37537400, BOARD: generic, EABI: aarch64, "
                "DATE: Fri Sep 13 04:36:44 UTC 2024\n# KERNEL_VARIANT: oot\nTARGET_USERSPACE_LIB_DIR=nvidia\n")


@pytest.mark.parametrize("text,l4t,jetpack", [
    (ORIN_RELEASE, "36.4.0", "6.1"),
    ("# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, DATE: Wed Jan  8 01:49:37 UTC "
     "2025", "36.4.3", "6.2"),
    ("# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64, DATE: Tue Aug  1 19:57:35 UTC "
     "2023", "35.4.1", "5.1.2"),
    ("# R32 (release), REVISION: 7.1, GCID: 29818004, BOARD: t210ref, EABI: aarch64, DATE: Sat Feb 19 17:05:08 UTC "
     "2022", "32.7.1", "4.6.1"),
    ("# R99 (release), REVISION: 1, BOARD: future", "99.1.0", ""),
])
def test_nv_tegra_release_gives_l4t_and_jetpack(text, l4t, jetpack):
    parsed = parse_nv_tegra_release(text)
    assert parsed["l4t"] == l4t and jetpack_for_l4t(parsed["l4t"]) == jetpack


def test_nv_tegra_release_fields_and_garbage():
    parsed = parse_nv_tegra_release(ORIN_RELEASE)
    assert parsed == {"l4t": "36.4.0", "gcid": "37537400", "board": "generic", "eabi": "aarch64",
                      "date": "Fri Sep 13 04:36:44 UTC 2024"}
    assert parse_nv_tegra_release("") == {} and parse_nv_tegra_release("Ubuntu 22.04") == {}
    assert jetpack_for_l4t("36.4") == "6.1" and jetpack_for_l4t("") == ""


def test_nvpmodel_and_meminfo():
    assert parse_nvpmodel("NV Power Mode: MAXN\n0\n") == "MAXN"
    assert parse_nvpmodel("NVPM WARN: fan mode is not set!\nNV Power Mode: 15W\n1\n") == "15W"
    assert parse_nvpmodel("nvpmodel: command not found") == ""
    assert parse_meminfo("MemTotal:       31937800 kB\nMemFree:         1000 kB\n") == 31937800 * 1024
    assert parse_meminfo("") == 0


def fake_jetson(root: Path) -> Path:
    files = {"etc/nv_tegra_release": ORIN_RELEASE,
             "proc/device-tree/model": "NVIDIA Jetson AGX Orin Developer Kit\x00",
             "proc/meminfo": "MemTotal:       31937800 kB\n",
             "sys/class/devfreq/17000000.ga10b/cur_freq": "1300500000\n",
             "sys/class/devfreq/17000000.ga10b/max_freq": "1300500000\n",
             "sys/class/devfreq/15340000.vic/cur_freq": "115200000\n",          # not the GPU: ignored
             "sys/devices/system/cpu/cpu0/cpufreq/scaling_cur_freq": "2201600\n",
             "sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq": "2201600\n"}
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_clocks_from_sysfs(tmp_path):
    assert read_clocks(fake_jetson(tmp_path)) == {"gpu_mhz": "1300", "gpu_max_mhz": "1300", "cpu_mhz": "2202",
                                                  "cpu_max_mhz": "2202"}
    assert read_clocks(tmp_path / "nothing") == {}


def test_facts_from_a_recorded_jtop_sample():
    board = {"platform": {"Machine": "aarch64"},
             "hardware": {"Model": "NVIDIA Jetson Orin Nano Developer Kit", "L4T": "36.4.0", "Jetpack": "6.1"},
             "libraries": {"CUDA": "12.6.68", "TensorRT": "10.3.0.30", "cuDNN": "9.3.0.75"}}
    gpu = {"gpu": {"type": "integrated", "freq": {"governor": "nvhost_podgov", "cur": 306000, "max": 1020000}}}
    facts = facts_from_jtop(board, "15W", True, gpu, {"RAM": {"tot": 7802000}})
    assert facts == {"source": "jtop", "model": "NVIDIA Jetson Orin Nano Developer Kit", "l4t": "36.4.0",
                     "jetpack": "6.1", "cuda_version": "12.6.68", "tensorrt_version": "10.3.0.30",
                     "power_mode": "15W", "gpu": "gpu", "memory_bytes": 7802000 * 1024,
                     "clocks": {"jetson_clocks": "on", "gpu_mhz": "306", "gpu_max_mhz": "1020"}}
    assert facts_from_jtop({"hardware": {"Jetpack": "MISSING"}}) == {"source": "jtop"}


def test_a_fake_jetson_root_is_described_as_a_jetson(tmp_path):
    info = describe_device("orin0", fake_jetson(tmp_path))
    assert (info.kind, info.l4t, info.jetpack, info.source) == ("jetson", "36.4.0", "6.1", "sysfs")
    assert info.model == "NVIDIA Jetson AGX Orin Developer Kit" and info.memory_bytes == 31937800 * 1024
    assert info.clocks["gpu_mhz"] == "1300"
    assert info.summary().startswith("NVIDIA Jetson AGX Orin Developer Kit (JetPack 6.1")


def test_this_machine_is_described_sanely():
    import onnxruntime

    info = describe_device("here")
    assert info.name == "here" and info.hostname and info.kind in ("cpu", "gpu", "jetson")
    assert info.cpu_cores >= 1 and info.memory_bytes > 0 and info.onnxruntime_version == onnxruntime.__version__
    assert "onnxruntime:cpu" in info.backends
