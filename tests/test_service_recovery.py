"""kill -9 of the server during a job, then a restart on the same state folder: the job ends FAILED with the
reason, its worker is gone, every uploaded artifact is intact, and jobs run again. Also a graceful stop."""
from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from service.client import Client, JobState
from service.jobs.sqlite_store import SqliteJobStore
from tests.service_helpers import (data_file, long_finetune, make_server, model_file, process_gone,  # noqa: F401
                                   tiny_spec, wait_for)

ROOT = Path(__file__).resolve().parents[1]


class ServerProcess:
    """``python -m service.cli.main serve`` in a subprocess; ``address`` is read from its ready line."""

    def __init__(self, state_dir: Path, log: Path) -> None:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.log = open(log, "a")
        self.proc = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--listen", "127.0.0.1:0",
                                      "--state-dir", str(state_dir)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                     stderr=self.log, text=True)
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: [lines.put(line) for line in self.proc.stdout], daemon=True).start()
        try:
            line = lines.get(timeout=60)
        except queue.Empty:
            self.proc.kill()
            raise AssertionError(f"server did not start; log: {log.read_text()[-2000:]}") from None
        assert "serving on" in line, line
        self.address = line.split("serving on ")[1].split()[0]

    def stop(self, sig: int) -> int:
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout=30)
        self.log.close()
        return code


def workers_of(state: Path) -> list[int]:
    """Live worker processes (running or spare) started for ``state``."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            status = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if b"service.jobs.worker" in cmdline and str(state).encode() in cmdline and status != "Z":
            pids.append(int(proc.name))
    return pids


def test_kill_9_of_the_server_then_restart(tmp_path, model_file, data_file):
    state, log = tmp_path / "state", tmp_path / "server.log"
    first = ServerProcess(state, log)
    try:
        with Client(first.address) as client:
            uploads = {client.upload(model_file, "model").id: model_file,
                       client.upload(data_file, "dataset").id: data_file}
            long_job = client.submit(tiny_spec(model_file, data_file, finetune=long_finetune()))
            queued_job = client.submit(tiny_spec(model_file, data_file))
            wait_for(lambda: (p := client.get(long_job.id).progress) and p.stage == "finetune", timeout_s=90,
                     what="fine-tuning to start")
        store = SqliteJobStore(state / "jobs.db")
        worker = store.get(long_job.id).worker_pid
        store.close()
        assert worker and not process_gone(worker)
    finally:
        first.stop(signal.SIGKILL)
    wait_for(lambda: process_gone(worker) and not workers_of(state), timeout_s=30,
             what=f"orphaned worker {worker} and the spare to exit")

    second = ServerProcess(state, log)
    try:
        with Client(second.address) as client:
            failed = client.get(long_job.id)
            assert failed.state == JobState.FAILED and failed.failure.kind == "server_stopped"
            assert "server stopped while the job was running" in failed.message
            assert list(client.watch(long_job.id))[-1].state == JobState.FAILED
            for artifact_id, original in uploads.items():
                copy = client.download(artifact_id, tmp_path / "check" / artifact_id)    # digest-checked
                assert copy.read_bytes() == original.read_bytes()
            new_job = client.submit(tiny_spec(model_file, data_file))
            assert client.wait(queued_job.id).state == JobState.SUCCEEDED
            assert client.wait(new_job.id).state == JobState.SUCCEEDED
        assert "re-verified 2 artifacts, 0 corrupt" in log.read_text()
    finally:
        assert second.stop(signal.SIGTERM) == 0
    assert (state / "server.lock").read_text().startswith("stopped")


def test_graceful_stop_fails_or_requeues_running_jobs_and_ends_watchers(make_server, model_file, data_file):
    from service.client import InterpruneRPCError, StatusCode

    server = make_server(job_workers=2)
    client = Client(server.address)
    plain = client.submit(tiny_spec(model_file, data_file, finetune=long_finetune()))
    retried = client.submit(tiny_spec(model_file, data_file, finetune=long_finetune()), retry_on_crash=True)
    for job in (plain, retried):
        wait_for(lambda: (p := client.get(job.id).progress) and p.stage == "finetune", timeout_s=90,
                 what="fine-tuning to start")
    pids = [server.store.get(j.id).worker_pid for j in (plain, retried)]
    watched: queue.Queue = queue.Queue()

    def watch():
        try:
            for _ in client.watch(plain.id, reconnect_for_s=0):
                pass
        except InterpruneRPCError as error:
            watched.put(error)
    threading.Thread(target=watch, daemon=True).start()
    time.sleep(0.3)
    start = time.monotonic()
    server.stop(grace_s=2)
    from grpc_health.v1 import health_pb2

    status = server.health.Check(health_pb2.HealthCheckRequest(service=""), None).status
    assert status == health_pb2.HealthCheckResponse.NOT_SERVING
    assert time.monotonic() - start < 15
    error = watched.get(timeout=10)
    assert error.status == StatusCode.UNAVAILABLE and "after_sequence" in error.message
    assert all(process_gone(pid) for pid in pids)
    store = SqliteJobStore(server.state_dir / "jobs.db")
    assert store.get(plain.id).state == JobState.FAILED
    assert store.get(retried.id).state == JobState.QUEUED and "re-queued" in store.get(retried.id).message
    store.close()
