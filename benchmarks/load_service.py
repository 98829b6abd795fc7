"""Load run for the gRPC service (a script, not a test): N concurrent clients submit tiny jobs, watch them, get
and list, for a fixed time on loopback. Prints requests, errors and latency percentiles per RPC.

    python benchmarks/load_service.py                      # starts its own server on 127.0.0.1, 20 clients, 60 s
    python benchmarks/load_service.py --server HOST:PORT   # against a running server (loopback only)

Bounded: at most --max-jobs submissions in all; jobs still queued at the end are cancelled. Each client:
submit (with a request id; until the job budget is spent) -> get -> list (one page) -> watch its latest job for up
to --watch-s seconds (dropping the stream does not cancel the job) -> pause. "WatchJob(1st)" is the time to the
first event; "WatchJob(rest)" the rest of the bounded watch (about --watch-s by design, not a latency).
"""
from __future__ import annotations

import argparse
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


class Recorder:
    """Latencies (ms) and errors per RPC, shared by the client threads."""

    def __init__(self) -> None:
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.errors: dict[str, list[str]] = defaultdict(list)
        self.lock = threading.Lock()

    def call(self, name: str, fn, *args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - counted and shown, the run goes on
            with self.lock:
                self.errors[name].append(f"{type(exc).__name__}: {exc}")
            return None
        finally:
            with self.lock:
                self.latency[name].append((time.perf_counter() - start) * 1000)

    def table(self, seconds: float) -> str:
        rows = [f"{'rpc':<16} {'requests':>8} {'errors':>6} {'req/s':>7} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} "
                f"{'max ms':>8}"]
        for name in sorted(self.latency):
            values = sorted(self.latency[name])
            pick = lambda q: values[min(len(values) - 1, int(q * len(values)))]  # noqa: E731
            rows.append(f"{name:<16} {len(values):>8} {len(self.errors[name]):>6} {len(values) / seconds:>7.1f} "
                        f"{pick(0.5):>8.1f} {pick(0.9):>8.1f} {pick(0.99):>8.1f} {values[-1]:>8.1f}")
        return "\n".join(rows)


def make_inputs(folder: Path) -> tuple[Path, Path]:
    import numpy as np
    import torch

    from pruning import zoo
    from pruning.data import digits_sample

    torch.manual_seed(0)
    weights, data = folder / "small_cnn.pt", folder / "digits.npz"
    torch.save(zoo.create_model("demo/small_cnn").state_dict(), weights)
    images = digits_sample().train
    np.savez(data, images=images.images[:300], labels=images.labels[:300])
    return weights, data


def tiny_spec(weights_id: str, data_id: str):
    from pruning.compress import CompressSpec, DataSpec, ModelSpec, PruneSpec, ReconstructSpec
    from pipeline.spec import BenchmarkSpec, JobSpec

    return JobSpec(CompressSpec(ModelSpec("demo/small_cnn", weights_id),
                                DataSpec(data_id, calibration_images=64, evaluation_images=64),
                                PruneSpec("l1", target_reduction=0.5, allocation="uniform"),
                                ReconstructSpec(enabled=False), threads=1),
                   benchmark=BenchmarkSpec(targets=()))


def client_loop(address: str, index: int, files: tuple[Path, Path], end: float, budget: "Budget",
                rec: Recorder, args, submitted: list) -> None:
    from service.client import Client

    with Client(address) as client:
        weights = rec.call("UploadArtifact", client.upload, files[0], "model")
        data = rec.call("UploadArtifact", client.upload, files[1], "dataset")
        if weights is None or data is None:
            return
        spec, mine = tiny_spec(weights.id, data.id), []
        while time.monotonic() < end:
            if budget.take():
                job = rec.call("SubmitJob", client.submit, spec, request_id=f"load-{index}-{uuid.uuid4().hex[:8]}")
                if job is not None:
                    submitted.append(job.id)
                    mine.append(job.id)
            if not mine:
                continue
            job_id = mine[-1]
            rec.call("GetJob", client.get, job_id)
            rec.call("ListJobs", client.list, page_size=20)
            watch_s = max(0.1, min(args.watch_s, end - time.monotonic()))
            events = client.watch(job_id, for_s=watch_s)
            rec.call("WatchJob(1st)", next, events, None)        # time to the first event of the stream
            rec.call("WatchJob(rest)", lambda: sum(1 for _ in events))
            time.sleep(args.pause_s)


class Budget:
    def __init__(self, total: int) -> None:
        self.left, self.lock = total, threading.Lock()

    def take(self) -> bool:
        with self.lock:
            if self.left <= 0:
                return False
            self.left -= 1
            return True


def start_server(state: Path) -> tuple[subprocess.Popen, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    log = open(state.parent / "server.log", "w")
    # every client comes from 127.0.0.1, which the server's per-client limits count as one client: raise them to
    # stand for the --clients separate users this run simulates
    proc = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--listen", "127.0.0.1:0", "--state-dir",
                             str(state), "--max-uploads-per-client", "16", "--max-queued-jobs", "1000"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=log, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    line = lines.get(timeout=60)
    return proc, line.split("serving on ")[1].split()[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", help="HOST:PORT of a running server on loopback (default: start one)")
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--max-jobs", type=int, default=300)
    parser.add_argument("--watch-s", type=float, default=2.0, help="longest watch of one job")
    parser.add_argument("--pause-s", type=float, default=0.5, help="pause between a client's iterations")
    args = parser.parse_args()
    if args.server and args.server.rpartition(":")[0] not in ("127.0.0.1", "localhost", "[::1]"):
        parser.error("the load run is for loopback servers only")
    tmp = Path(tempfile.mkdtemp(prefix="interprune-load-"))
    proc = None
    try:
        files = make_inputs(tmp)
        if args.server:
            address = args.server
        else:
            proc, address = start_server(tmp / "state")
        rec, budget, submitted = Recorder(), Budget(args.max_jobs), []
        start = time.monotonic()
        end = start + args.seconds
        threads = [threading.Thread(target=client_loop, args=(address, i, files, end, budget, rec, args, submitted))
                   for i in range(args.clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=args.seconds + 120)
        elapsed = time.monotonic() - start
        print(f"{args.clients} clients, {elapsed:.1f} s on {address}\n")
        print(rec.table(elapsed))
        summarize_jobs(address, submitted, rec)
        errors = sum(len(v) for v in rec.errors.values())
        for name, messages in rec.errors.items():
            for message in messages[:3]:
                print(f"  {name}: {message}")
        print(f"\nerrors: {errors}")
        return 1 if errors else 0
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=60)
        shutil.rmtree(tmp, ignore_errors=True)


def summarize_jobs(address: str, submitted: list[str], rec: Recorder) -> None:
    """Count how the submitted jobs ended; cancel those still queued or running (bounded load)."""
    from service.client import Client

    states: dict[str, int] = defaultdict(int)
    with Client(address) as client:
        for job_id in submitted:
            job = rec.call("GetJob(final)", client.get, job_id)
            if job is not None and not job.done:
                job = rec.call("CancelJob", client.cancel, job_id) or job
            if job is not None:
                states[job.state.value] += 1
    print(f"\njobs submitted: {len(submitted)}; at the end: "
          + ", ".join(f"{state} {count}" for state, count in sorted(states.items())))


if __name__ == "__main__":
    sys.exit(main())
