"""The ``interprune.v1.JobWorker`` servicer: the server's side of the worker protocol (``worker.proto``).

Workers on other machines (``serve --executor ray``) reach the job store and the artifact store only through
these calls (``service.jobs.remote_store`` is the other side). Each call is authenticated by the job's
credentials (``service.jobs.job_tokens``) and limited to that job: its record, its progress, its end, the input
artifacts its spec names and new output artifacts. A call for an attempt that is over is refused, so a worker
stranded on a lost node cannot write into a newer attempt.
"""
from __future__ import annotations

import json
import logging

from service._proto.interprune.v1 import compression_pb2 as pb
from service._proto.interprune.v1 import worker_pb2 as wpb
from service._proto.interprune.v1 import worker_pb2_grpc as wpb_grpc
from service.api.convert import artifact_to_proto
from service.core.errors import FailedPrecondition, InvalidArgument, NotFound, Unauthenticated, rpc
from service.core.names import parse_artifact_name
from service.core.wire import FAILURE_FROM_PROTO, KIND_FROM_PROTO, STATE_FROM_PROTO, STATE_TO_PROTO
from service.jobs.artifacts import ArtifactStore
from service.jobs.job_tokens import JobTokens
from service.jobs.lifecycle import job_inputs
from service.jobs.store import Failure, JobRecord, JobState, JobStore

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
OUTPUT_KINDS = ("plan", "weights", "onnx", "report_json", "report_html")


class JobWorkerServicer(wpb_grpc.JobWorkerServicer):
    def __init__(self, store: JobStore, artifacts: ArtifactStore, tokens: JobTokens) -> None:
        self.store, self.artifacts, self.tokens = store, artifacts, tokens

    def _job(self, context, states: tuple[JobState, ...] = (JobState.RUNNING,)) -> JobRecord:
        """The caller's job, when its credentials are good, its attempt is the job's current one and the job is
        in one of ``states``."""
        proven = self.tokens.check(context.invocation_metadata())
        if proven is None:
            raise Unauthenticated("this call needs the job credentials the server gave the worker")
        job_id, attempt = proven
        job = self.store.get(job_id)
        if job.attempts != attempt or job.state not in states:
            raise FailedPrecondition(f"job {job_id} attempt {attempt} is over (the job is {job.state.value}, attempt "
                                     f"{job.attempts}); this worker should stop")
        return job

    @rpc
    def AttachWorker(self, request, context):
        job = self._job(context)
        self.store.set_worker(job.id, request.pid or None, request.node[:200] or None)
        log.info("job %s: worker pid %d attached on %s", job.id, request.pid, request.node[:200])
        return _worker_job(self.store.get(job.id))

    @rpc
    def GetWorkerJob(self, request, context):
        return _worker_job(self._job(context, tuple(JobState)))     # the cancel flag, in any state

    @rpc
    def ReportProgress(self, request, context):
        job = self._job(context)
        p = request.progress
        event = self.store.add_progress(job.id, p.stage[:100], min(max(p.fraction, 0.0), 1.0), p.message[:2000])
        return wpb.ReportProgressResponse(sequence=event.sequence if event else 0)

    @rpc
    def FinishJob(self, request, context):
        to = STATE_FROM_PROTO.get(request.state)
        if to is None or not to.terminal:
            raise InvalidArgument("FinishJob records a terminal state: SUCCEEDED, FAILED or CANCELLED")
        job = self._job(context, (JobState.RUNNING, to))
        if job.state == to:
            return _worker_job(job)                      # a retried call: already recorded
        failure = None
        if request.HasField("failure"):
            f = request.failure
            failure = Failure(FAILURE_FROM_PROTO.get(f.kind, "internal"), f.message, f.error_type,
                              f.exit_code if f.HasField("exit_code") else None,
                              f.signal if f.HasField("signal") else None)
        result = _result(request.result_json) if to == JobState.SUCCEEDED else None
        return _worker_job(self.store.transition(job.id, JobState.RUNNING, to, message=request.message,
                                                 failure=failure, result=result))

    @rpc
    def GetJobArtifact(self, request, context):
        return artifact_to_proto(self.artifacts.get(self._input(context, request.name)))

    @rpc
    def ReadJobArtifact(self, request, context):
        info = self.artifacts.get(self._input(context, request.name))
        yield pb.DownloadArtifactResponse(artifact=artifact_to_proto(info))
        for chunk in self.artifacts.read_chunks(info.id, CHUNK_BYTES):
            if not context.is_active():
                return
            yield pb.DownloadArtifactResponse(chunk=chunk)

    @rpc
    def WriteJobArtifact(self, request_iterator, context):
        job = self._job(context)
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("content") != "header":
            raise InvalidArgument("the first WriteJobArtifact message must carry the header")
        header = first.header
        kind = KIND_FROM_PROTO.get(header.kind)
        if kind not in OUTPUT_KINDS:
            raise InvalidArgument(f"a worker writes job outputs ({', '.join(OUTPUT_KINDS)}), not {kind or 'unset'}")
        info = self.artifacts.put_stream(header.display_name, kind, header.size_bytes, header.sha256,
                                         _chunks(request_iterator), limit=False)
        log.info("job %s: output %s (%s, %d bytes) stored", job.id, info.id[:12], info.name, info.size_bytes)
        return artifact_to_proto(info)

    @rpc
    def GetAgentToken(self, request, context):
        from service.core.auth import AuthConfigError, read_client_token

        benchmark = self._job(context).spec.get("benchmark") or {}
        if request.agent not in (benchmark.get("agents") or {}):
            raise NotFound(f"agent {request.agent[:80]!r} is not a benchmark target of this job")
        token_file = (benchmark.get("agent_token_files") or {}).get(request.agent)
        try:
            return wpb.AgentToken(token=read_client_token(token_file) if token_file else "")
        except AuthConfigError as exc:
            raise FailedPrecondition(f"the server cannot give agent {request.agent}'s token: {exc}") from None

    def _input(self, context, name: str) -> str:
        """The artifact id in ``name`` when the caller's job names it as an input."""
        artifact_id = parse_artifact_name(name)
        if artifact_id not in job_inputs(self._job(context)):   # weights, ONNX model, data
            raise NotFound(f"artifact {artifact_id} is not an input of this job")
        return artifact_id


def _worker_job(job: JobRecord) -> wpb.WorkerJob:
    return wpb.WorkerJob(id=job.id, state=STATE_TO_PROTO[job.state], spec_json=json.dumps(job.spec),
                         cancel_requested=job.cancel_requested, attempt=job.attempts)


def _result(text: str) -> dict:
    try:
        result = json.loads(text)
    except ValueError:
        result = None
    if not isinstance(result, dict):
        raise InvalidArgument("FinishJob with SUCCEEDED needs result_json: the job's result as a JSON object")
    return result


def _chunks(request_iterator):
    for message in request_iterator:
        if message.WhichOneof("content") != "chunk":
            raise InvalidArgument("only the first WriteJobArtifact message may carry a header")
        yield message.chunk
