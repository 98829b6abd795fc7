# interprune device agent for NVIDIA Jetson (aarch64, JetPack 6 / L4T r36): benchmarks ONNX models with the
# device's own TensorRT, or ONNX Runtime where TensorRT is absent. Build on the Jetson (or with buildx for arm64):
#   docker build -f docker/agent.Dockerfile -t interprune-agent .
#   docker run --runtime nvidia --network host interprune-agent --listen 0.0.0.0:50052 --name jetson0
# Not built on the project's CI machines (no Docker engine, no Jetson); linted by tests/test_docker.py.
FROM nvcr.io/nvidia/l4t-jetpack:r36.4.0

ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends software-properties-common=0.99.* gpg-agent=2.2.* \
 && add-apt-repository -y ppa:deadsnakes/ppa \
 && apt-get update \
 && apt-get install -y --no-install-recommends python3.11=3.11.* python3.11-venv=3.11.* \
 && rm -rf /var/lib/apt/lists/*

RUN useradd --create-home --uid 10001 interprune
WORKDIR /opt/interprune
COPY --chown=interprune:interprune pyproject.toml README.md ./
COPY --chown=interprune:interprune pruning ./pruning
COPY --chown=interprune:interprune exporters ./exporters
COPY --chown=interprune:interprune service ./service
COPY --chown=interprune:interprune proto ./proto

# JetPack's TensorRT Python bindings are built for the system Python; the venv sees them through
# --system-site-packages when they match, and the agent falls back to ONNX Runtime when they do not.
RUN python3.11 -m venv --system-site-packages /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir .
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1

USER 10001
EXPOSE 50052
ENTRYPOINT ["interprune", "agent"]
CMD ["--listen", "0.0.0.0:50052", "--name", "jetson0"]
