"""Benchmark targets on device agents (``agent:NAME``) for the pipeline (``pipeline.benchmark.RemoteTargets``): send
the exported models and the evaluation data to the agent, and bring back latency rows and the accuracy the agent measured.

    with AgentTargets(spec.benchmark, result, input_shape) as agents:
        got = agents.run("agent:edge0", {"compressed": Path("model.onnx"), "original": Path("original.onnx")})
        got.rows, got.accuracy, got.error

The agent addresses come from ``BenchmarkSpec.agents`` (the server fills them in at submit time from its
``--agent`` list). The evaluation data sent is the first ``agent_eval_images`` images of the evaluation split,
preprocessed (float32 NCHW) and capped at ``MAX_DATA_BYTES``. A failing agent gives an error for its target
only; what it measured before failing is kept.
"""
from __future__ import annotations

import logging
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

from pipeline.benchmark import RemoteRun
from service.core.errors import ServiceError

log = logging.getLogger(__name__)

MAX_DATA_BYTES = 60 << 20            # under the agent's default 64 MiB limit, with room for the .npz framing
CALIBRATION_IMAGES = 512             # int8 on TensorRT agents


class AgentTargets:
    """The agent targets of one job; prepares the data files once, in a temporary folder removed on exit."""

    def __init__(self, bench, result, input_shape: tuple[int, ...],
                 token_for: Callable[[str], str | None] | None = None) -> None:
        """``token_for(name)``: an agent's token from elsewhere than its token file (a worker on a Ray node asks
        the server, which holds the file); None: read the file (or ``$INTERPRUNE_AGENT_TOKEN``)."""
        self.bench, self.result, self.input_shape = bench, result, tuple(input_shape)
        self.token_for = token_for
        self._tmp = Path(tempfile.mkdtemp(prefix="interprune-agent-data-"))
        self._data: dict[str, Path | None] = {}

    def __enter__(self) -> "AgentTargets":
        return self

    def __exit__(self, *exc) -> None:
        shutil.rmtree(self._tmp, ignore_errors=True)

    def run(self, target: str, models: dict[str, Path]) -> RemoteRun:
        """Benchmark ``models`` (model label -> ONNX path, "compressed" first) on the agent ``target`` names."""
        from service.agent.client import AgentClient, AgentEndpoint, AgentError

        name = target.split(":", 1)[1]
        address = (getattr(self.bench, "agents", None) or {}).get(name)
        out = RemoteRun()
        if not address:
            out.error = (f"agent {name} is not known here: agent targets run through a server that knows the agent "
                         f"(interprune serve --agent {name}=HOST:PORT, then interprune submit)")
            return out
        token_file = (getattr(self.bench, "agent_token_files", None) or {}).get(name)
        try:
            if token_file and self.token_for is not None:
                token = self.token_for(name)
            else:
                token = AgentEndpoint(name, address, token_file).token()
            evaluation, calibration = self._evaluation(), self._calibration()
        except (OSError, ValueError, ServiceError) as exc:
            out.error = f"agent {name}: cannot prepare the benchmark: {exc}"
            return out
        accuracy: dict[str, Any] = {}
        with AgentClient(address, token, name) as agent:
            for model, path in models.items():
                try:
                    reply = agent.benchmark(path, input_shape=self.input_shape, batch_sizes=self.bench.batch_sizes,
                                            precision=self.bench.precision, warmup_seconds=0.5,
                                            seconds_per_batch=self.bench.seconds_per_batch, evaluation=evaluation,
                                            calibration=calibration, label=f"{model} model")
                except AgentError as exc:
                    out.error = f"benchmarking the {model} model failed: {exc.message}"
                    log.warning("%s: %s", target, out.error)
                    break
                out.latency[model] = [_latency_result(row) for row in reply.latency]
                out.rows += [dict(r.to_dict(), target=target, model=model) for r in out.latency[model]]
                accuracy = _accuracy_entry(accuracy, reply, model)
        if accuracy:
            out.accuracy = accuracy
        return out

    def _evaluation(self) -> Path | None:
        if "evaluation" not in self._data:
            limit = getattr(self.bench, "agent_eval_images", 2000)
            self._data["evaluation"] = _write_images(self.result, self.result.splits.evaluation, limit,
                                                     self._tmp / "evaluation.npz", self.input_shape)
        return self._data["evaluation"]

    def _calibration(self) -> Path | None:
        if getattr(self.bench, "precision", "fp32") != "int8":
            return None
        if "calibration" not in self._data:
            self._data["calibration"] = _write_images(self.result, self.result.splits.calibration,
                                                      CALIBRATION_IMAGES, self._tmp / "calibration.npz",
                                                      self.input_shape)
        return self._data["calibration"]


def _write_images(result, split, limit: int, path: Path, input_shape: tuple[int, ...]) -> Path | None:
    """The first ``limit`` images of ``split`` (fewer when over ``MAX_DATA_BYTES``), preprocessed, as an .npz."""
    from pruning import data as data_mod

    per_image = 4 * math.prod(input_shape)
    n = min(int(limit), len(split), MAX_DATA_BYTES // per_image)
    if n <= 0:
        return None
    if n < limit and n < len(split):
        log.info("sending %d images to agents (the %d asked for would exceed %d MiB)", n, limit, MAX_DATA_BYTES >> 20)
    images, labels, have = [], [], 0
    for batch_images, batch_labels in data_mod.batches(split, result.preprocess, 500):
        images.append(batch_images.numpy()[: n - have])
        labels.append(batch_labels.numpy()[: n - have])
        have += len(images[-1])
        if have >= n:
            break
    np.savez(path, images=np.concatenate(images).astype(np.float32), labels=np.concatenate(labels).astype(np.int64))
    return path


def _latency_result(row):
    from exporters import LatencyResult

    nan = math.nan
    ok = row.runs > 0
    return LatencyResult(backend=row.backend, batch_size=row.batch_size, runs=row.runs, warmup_runs=0,
                         p50_ms=row.p50_ms if ok else nan, p90_ms=row.p90_ms if ok else nan,
                         p99_ms=row.p99_ms if ok else nan, mean_ms=row.mean_ms if ok else nan, std_ms=nan,
                         min_ms=nan, throughput_ips=row.throughput_ips if ok else nan, threads=row.threads,
                         precision=row.precision, device=row.device, error=row.error or None,
                         stable=row.stable if row.HasField("stable") else None)


def _accuracy_entry(entry: dict, reply, model: str) -> dict:
    from service.agent.client import info_to_dict
    from service.agent.device_info import DeviceInfo

    info = info_to_dict(reply.device)
    entry = {"original": None, "compressed": None, **entry, "backend": reply.backend, "precision": reply.precision,
             "device": DeviceInfo(**info).summary(), "device_info": info}
    if reply.HasField("accuracy"):
        a = reply.accuracy
        entry[model] = {"top1": a.top1, "top5": a.top5, "num_images": a.num_images}
    entry.setdefault("build_seconds", {})[model] = reply.build_seconds
    entry.setdefault("notes", [])
    entry["notes"] = entry["notes"] + [f"{model}: {note}" for note in reply.notes]
    return entry
