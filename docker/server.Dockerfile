# interprune server (x86-64, NVIDIA GPU): CUDA + cuDNN runtime, Python 3.11, TensorRT and onnxruntime-gpu from
# the `gpu` extra. Build from the repository root:
#   docker build -f docker/server.Dockerfile -t interprune-server .
#   docker build -f docker/server.Dockerfile --build-arg EXTRAS=gpu,ray -t interprune-ray .   # Ray head / nodes
# Not built on the project's CI machines (no Docker engine there); linted by tests/test_docker.py.
FROM nvidia/cuda:12.6.3-cudnn-runtime-ubuntu22.04

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

# Extras to install: gpu (TensorRT, onnxruntime-gpu); add ray for `serve --executor ray` and Ray nodes.
ARG EXTRAS=gpu
RUN python3.11 -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir ".[${EXTRAS}]"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1

USER 10001
VOLUME ["/var/lib/interprune"]
EXPOSE 50051
HEALTHCHECK --interval=30s --timeout=5s CMD ["python", "-c", "import grpc, sys; from grpc_health.v1 import health_pb2, health_pb2_grpc; ch = grpc.insecure_channel('127.0.0.1:50051'); r = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=3); sys.exit(0 if r.status == 1 else 1)"]
ENTRYPOINT ["interprune"]
CMD ["serve", "--listen", "0.0.0.0:50051", "--state-dir", "/var/lib/interprune"]
