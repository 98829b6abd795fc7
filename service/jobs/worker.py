"""The worker process: ``python -m service.jobs.worker JOB_ID ...`` runs one job to a terminal state.

Started by an executor (``service.jobs.executor``) in its own process group; reads the spec from the job store,
resolves artifact references, calls ``pipeline.run.run_pipeline``, stores the output files as artifacts and
records the result. A spare worker (``--standby``) imports the engine first and then reads its job id on stdin.
"""
from __future__ import annotations

import argparse
import functools
import logging
import os
import shutil
import signal
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path

from service.core.states import CRASHED, EXPORT_CHECK, INTERNAL, INVALID_INPUT
from service.jobs.artifacts import Artifacts
from service.jobs.backends import open_artifact_store, open_job_store
from service.jobs.scrub import replacements, scrub_json, scrub_report_files, scrub_text
from service.jobs.store import Failure, JobRecord, JobState, JobStore

log = logging.getLogger(__name__)

ARTIFACT_PREFIX = "artifact:"
OUTPUT_FILES = (("plan", "plan.json", "plan"), ("weights", "weights.pt", "weights"), ("onnx", "model.onnx", "onnx"),
                ("report_json", "report.json", "report_json"), ("report_html", "report.html", "report_html"))


def worker_main(job_id: str | None, job_store_url: str, artifact_store_url: str, work_root: str, threads: int,
                parent_pid: int, allowed_packages: tuple[str, ...] = ()) -> None:
    """Entry point of a worker process: run one job and record its outcome in the store. With ``job_id`` None
    (a spare), import the pipeline first, then wait for the job id on stdin (EOF = not needed; exit)."""
    if os.getpgrp() != os.getpid():
        os.setpgrp()
    _exit_with_parent(parent_pid)
    if job_id is None:
        import exporters  # noqa: F401 - the slow part of a worker's start: torch, the engine
        import pipeline.run  # noqa: F401

        job_id = sys.stdin.readline().strip()
        if not job_id:
            return
    logging.basicConfig(level=logging.INFO, format=f"%(levelname)s worker {job_id} %(name)s: %(message)s")
    store = open_job_store(job_store_url)
    artifacts = open_artifact_store(artifact_store_url)
    work = Path(work_root) / job_id
    try:
        run_job(store.get(job_id), store, artifacts, work, threads, allowed_packages)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        store.close()


class CancelFlag:
    """The engine's ``should_stop``: True once the job store records a cancel request (cooperative cancel; the
    executor kills the worker only if it does not stop within the grace period). Reads the store at most every
    ``interval_s``."""

    def __init__(self, store: JobStore, job_id: str, interval_s: float = 0.5) -> None:
        self.store, self.job_id, self.interval_s = store, job_id, interval_s
        self._next, self._set = 0.0, False

    def __call__(self) -> bool:
        now = time.monotonic()
        if not self._set and now >= self._next:
            self._next = now + self.interval_s
            self._set = self.store.get(self.job_id).cancel_requested
        return self._set


def _exit_with_parent(parent_pid: int) -> None:
    """Kill this worker's group when the server that started it is gone (e.g. after kill -9)."""
    def watch() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent_pid:
                os.killpg(0, signal.SIGKILL)
    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def run_job(job: JobRecord, store: JobStore, artifacts: Artifacts, work: Path, threads: int,
            allowed_packages: tuple[str, ...] = ()) -> None:
    """Run ``job`` (RUNNING) to a terminal state, recording it in ``store``. ``allowed_packages``: the packages
    a ``python:`` architecture may come from (the operator's ``--allow-model-package``; none by default).
    Messages and the report name the user's files by the names they uploaded them under, never by server paths
    (``service.jobs.scrub``)."""
    import torch

    from pipeline.run import ExportCheckFailed, run_pipeline
    from pipeline.spec import JobSpec
    from pruning.errors import Cancelled, InterpruneError

    torch.set_num_threads(max(1, threads))
    out = work / "out"
    inputs = Inputs()
    try:
        spec = JobSpec.from_dict(resolve_artifacts(job.spec, artifacts, work, inputs))
        (work / "scratch").mkdir(parents=True, exist_ok=True)
        report = run_pipeline(spec, out, progress=_Progress(store, job.id), should_stop=CancelFlag(store, job.id),
                              remote_targets=_agent_targets(store, job.id),
                              allowed_packages=frozenset(allowed_packages),
                              data_name=inputs.data_name, scratch_dir=work / "scratch")
        hidden = inputs.hidden(job.spec, work, artifacts, out)
        scrub_report_files(out, hidden)
        outputs = store_outputs(out, artifacts)
        result = scrub_json(summarize(report, outputs), hidden)
        store.transition(job.id, JobState.RUNNING, JobState.SUCCEEDED, message=_success_line(result),
                         result=result)
        return
    except Cancelled:
        store.transition(job.id, JobState.RUNNING, JobState.CANCELLED, message="cancelled by request")
        return
    except ExportCheckFailed as exc:
        failure = Failure(EXPORT_CHECK, str(exc), type(exc).__name__)
    except InterpruneError as exc:
        failure = Failure(INVALID_INPUT, str(exc), type(exc).__name__)
    except MemoryError:
        failure = Failure(CRASHED, "the job ran out of memory; give it less data or a smaller batch size",
                          "MemoryError")
    except Exception as exc:  # noqa: BLE001 - a bug: keep the traceback in the log, give the user an id
        failure = _unexpected(job.id, exc)
    hidden = inputs.hidden(job.spec, work, artifacts, out)
    _fail(store, job.id, replace(failure, message=scrub_text(failure.message, hidden)))


def _unexpected(job_id: str, exc: Exception) -> Failure:
    """An exporter's own error that escaped the pipeline is an export check; anything else is a bug, logged."""
    from exporters import ExportError

    if isinstance(exc, ExportError):
        return Failure(EXPORT_CHECK, f"{type(exc).__name__}: {exc}", type(exc).__name__)
    error_id = uuid.uuid4().hex[:12]
    log.exception("job %s: internal error %s", job_id, error_id)
    return Failure(INTERNAL, f"internal error (error id {error_id}, {type(exc).__name__}); the server log has the "
                             "traceback", type(exc).__name__)


def _agent_targets(store: JobStore, job_id: str):
    """The pipeline's agent targets; a worker on another node (``RemoteJobStore``) gets agent tokens from the
    server, which holds the token files."""
    from service.agent.targets import AgentTargets

    if not hasattr(store, "agent_token"):
        return AgentTargets
    return functools.partial(AgentTargets, token_for=lambda name: store.agent_token(job_id, name))


def _fail(store: JobStore, job_id: str, failure: Failure) -> None:
    store.transition(job_id, JobState.RUNNING, JobState.FAILED, message=failure.message, failure=failure)


class _Progress:
    """Writes pipeline progress into the store: every stage start and end, otherwise at most twice a second."""

    def __init__(self, store: JobStore, job_id: str, min_interval_s: float = 0.5) -> None:
        self.store, self.job_id, self.min_interval_s = store, job_id, min_interval_s
        self._last = 0.0

    def __call__(self, event) -> None:
        now = time.monotonic()
        if event.fraction not in (0.0, 1.0) and now - self._last < self.min_interval_s:
            return
        self._last = now
        self.store.add_progress(self.job_id, event.stage, event.fraction, event.message)


@dataclass
class Inputs:
    """What the worker materialised: the data file's name as uploaded, and local path -> artifact reference."""

    data_name: str | None = None
    paths: dict[str, str] = field(default_factory=dict)

    def hidden(self, spec: dict, work: Path, artifacts: Artifacts, out: Path) -> list[tuple[str, str]]:
        """Server paths and what to show instead, for ``service.jobs.scrub``."""
        tokens = ((spec.get("benchmark") or {}).get("agent_token_files") or {}).values()
        pairs = {**self.paths, **{str(t): "<agent token file>" for t in tokens}, f"{out}/": "", str(out): ".",
                 str(work): "<job folder>", str(getattr(artifacts, "root", "")): "<artifact store>"}
        state = Path(os.path.commonpath([work, getattr(artifacts, "root", work)]))
        if state not in (Path("/"), work):
            pairs[str(state)] = "<server state>"
        return replacements(pairs)


def local_name(name: str, suffix: str = "") -> str:
    """A file name for an input, from the name it was uploaded under: printable, no folders, not hidden, ending
    in ``suffix`` (the data loader tells formats apart by it)."""
    from service.jobs.artifacts import clean_name

    base = clean_name(name).lstrip(".") or "unnamed"
    return base if not suffix or base.lower().endswith(suffix) else base + suffix


def resolve_artifacts(spec: dict, artifacts: Artifacts, work: Path, inputs: Inputs | None = None) -> dict:
    """Replace ``artifact:<id>`` references by local files in ``work``, named as they were uploaded (so the engine's
    messages name the user's files): the weights, and the data with its format's suffix (from a whitelist)."""
    from pruning.errors import DataError, ModelError
    from service.core.errors import NotFound
    from service.jobs.artifacts import clean_name, data_suffix

    inputs = inputs if inputs is not None else Inputs()
    spec = {**spec, "compress": {**spec["compress"]}}
    model, data = dict(spec["compress"]["model"]), dict(spec["compress"].get("data", {}))
    try:
        for key in ("weights", "model_file"):           # under the name the user gave: messages and the report
            if str(model.get(key) or "").startswith(ARTIFACT_PREFIX):   # name the file as they know it
                reference = model[key]
                info = artifacts.get(reference[len(ARTIFACT_PREFIX):])
                model[key] = str(artifacts.materialize(info.id, work / key / local_name(info.name)))
                inputs.paths[model[key]] = reference
        if model.get("external_data"):
            model["external_data"] = _external_data_beside(model, artifacts, inputs)
    except NotFound as exc:
        raise ModelError(f"the model artifact is gone from the server: {exc}") from None
    try:
        if str(data.get("path") or "").startswith(ARTIFACT_PREFIX):
            reference = data["path"]
            info = artifacts.get(reference[len(ARTIFACT_PREFIX):])
            local = work / "data" / local_name(info.name, data_suffix(info.name))
            data["path"] = str(artifacts.materialize(info.id, local))
            inputs.paths[data["path"]], inputs.data_name = reference, info.name
    except NotFound as exc:
        raise DataError(f"the data artifact is gone from the server: {exc}") from None
    spec["compress"]["model"], spec["compress"]["data"] = model, data
    return spec


def _external_data_beside(model: dict, artifacts: Artifacts, inputs: Inputs) -> dict[str, str]:
    """An ONNX model's external data files, each placed in the materialised model's folder under the location the
    model names it by (the only files the engine will read for it); location -> local path."""
    from pruning.errors import ModelError

    if not model.get("model_file"):
        return dict(model["external_data"])                 # not an ONNX job: the engine's checks say so
    folder = Path(model["model_file"]).parent
    placed = {}
    for location, reference in model["external_data"].items():
        parts = Path(location).parts
        if Path(location).is_absolute() or not parts or any(p in (".", "..") for p in parts) \
                or location == Path(model["model_file"]).name:
            raise ModelError(f"external data location {location!r} is not a file inside the folder of the model "
                             f"{Path(model['model_file']).name}")
        info = artifacts.get(str(reference)[len(ARTIFACT_PREFIX):])
        placed[location] = str(_real_file(artifacts.materialize(info.id, folder / location)))
        inputs.paths[placed[location]] = reference
    return placed


def _real_file(path: Path) -> Path:
    """``path`` as a file of its own, not a link to a blob: a copy (ONNX Runtime refuses external data that a
    symbolic link takes out of the model's folder, and onnx refuses a file with several hard links)."""
    if path.is_symlink():
        target = path.resolve()
        path.unlink()
        shutil.copyfile(target, path)
    return path


def store_outputs(out: Path, artifacts) -> dict[str, str]:
    """Store the pipeline's output files as artifacts; returns output name -> artifact id."""
    outputs = {}
    for key, filename, kind in OUTPUT_FILES:
        if (out / filename).is_file():
            outputs[key] = artifacts.put_file(out / filename, filename, kind).id
    return outputs


def summarize(report: dict, outputs: dict[str, str]) -> dict:
    """The parts of the report a ``JobResult`` carries (all JSON-able), plus the output artifact ids."""
    keys = ("accuracy", "final_stage", "cost", "reduction", "latency", "gate", "timings", "layers", "target_errors",
            "target_accuracy", "warnings")
    result = {key: report.get(key) for key in keys}
    result["outputs"] = outputs
    return _plain(result)


def _plain(value):
    """JSON-able copy: numpy scalars to Python numbers, NaN to None."""
    import math

    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and callable(value.item):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _success_line(result: dict) -> str:
    final = (result.get("accuracy") or {}).get(result.get("final_stage") or "", {})
    reduction = (result.get("reduction") or {}).get("macs")
    gate = result.get("gate") or {}
    parts = ["succeeded"]
    if reduction is not None:
        parts.append(f"{reduction:.1%} MACs removed")
    if final.get("top1") is not None:
        parts.append(f"top-1 {final['top1']:.2%}")
    if gate.get("max_accuracy_drop") is not None:
        parts.append("quality gate " + ("passed" if gate.get("passed") else "FAILED"))
    return ", ".join(parts)


def main(argv: list[str] | None = None) -> None:
    """``python -m service.jobs.worker JOB_ID ...``: the worker process an executor starts."""
    parser = argparse.ArgumentParser(description="interprune job worker (started by the server)")
    parser.add_argument("job_id", nargs="?", help="the job to run (omit with --standby)")
    parser.add_argument("--standby", action="store_true", help="start, import, then read the job id from stdin")
    parser.add_argument("--job-store", required=True, metavar="URL", help="e.g. sqlite:///state/jobs.db")
    parser.add_argument("--artifact-store", required=True, metavar="URL", help="e.g. file:///state/artifacts")
    parser.add_argument("--work-dir", required=True, help="per-job scratch folders go here")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--parent-pid", type=int, required=True)
    parser.add_argument("--allow-model-package", action="append", default=[], metavar="PKG")
    args = parser.parse_args(argv)
    if not args.standby and not args.job_id:
        parser.error("give a job id or --standby")
    worker_main(None if args.standby else args.job_id, args.job_store, args.artifact_store, args.work_dir,
                args.threads, args.parent_pid, tuple(args.allow_model_package))


if __name__ == "__main__":
    main()
