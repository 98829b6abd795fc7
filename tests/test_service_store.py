"""One contract, every backend: the job store's state machine, event log, idempotency and recovery, run against
SQLite and the in-memory store alike."""
from __future__ import annotations

import threading

import pytest

from service.core.errors import AlreadyExists, FailedPrecondition, NotFound, ResourceExhausted
from service.jobs.memory_store import MemoryJobStore
from service.jobs.sqlite_store import SqliteJobStore
from service.jobs.store import (MAX_ATTEMPTS, SERVER_STOPPED_REASON, Failure, JobState,
                           TRANSITIONS, lost_worker_outcome)

SPEC = {"compress": {"model": {"arch": "demo/small_cnn"}}}


class StoreContract:
    """Mixed into one class per backend; ``store`` is a fresh, empty store."""

    @pytest.fixture
    def store(self, tmp_path):
        store = self.make_store(tmp_path)
        yield store
        store.close()

    def make_store(self, tmp_path):
        raise NotImplementedError

    def running(self, store, **kwargs):
        job, _ = store.create(SPEC, **kwargs)
        claimed = store.claim_next()
        assert claimed.id == job.id
        return claimed

    # --- creation and reading --------------------------------------------------------------------

    def test_create_queues_with_a_first_state_event(self, store):
        job, created = store.create(SPEC, request=b"x", timeout_seconds=30.0)
        assert created and job.state == JobState.QUEUED and job.spec == SPEC and job.timeout_seconds == 30.0
        events = store.events(job.id)
        assert [(e.sequence, e.type, e.state) for e in events] == [(1, "state", JobState.QUEUED)]
        assert store.get(job.id).last_sequence == 1

    def test_unknown_job_is_not_found(self, store):
        with pytest.raises(NotFound, match="no job 'job-nope'"):
            store.get("job-nope")
        with pytest.raises(NotFound):
            store.request_cancel("job-nope")

    def test_list_is_newest_first_paged_and_filtered(self, store):
        ids = [store.create(SPEC)[0].id for _ in range(5)]
        store.claim_next()                                   # the oldest becomes RUNNING
        page, cursor = store.list(page_size=2)
        assert [j.id for j in page] == ids[::-1][:2] and cursor is not None
        page2, cursor2 = store.list(page_size=2, before_seq=cursor)
        page3, cursor3 = store.list(page_size=2, before_seq=cursor2)
        assert [j.id for j in page2 + page3] == ids[::-1][2:] and cursor3 is None
        running, _ = store.list(states=[JobState.RUNNING])
        assert [j.id for j in running] == [ids[0]]

    # --- the state machine -----------------------------------------------------------------------

    def test_claim_takes_the_oldest_queued_job_once(self, store):
        first, _ = store.create(SPEC)
        second, _ = store.create(SPEC)
        claimed = store.claim_next()
        assert claimed.id == first.id and claimed.state == JobState.RUNNING and claimed.attempts == 1
        assert claimed.started is not None
        assert store.claim_next().id == second.id
        assert store.claim_next() is None

    def test_success_records_the_result_and_a_terminal_event(self, store):
        job = self.running(store)
        done = store.transition(job.id, JobState.RUNNING, JobState.SUCCEEDED, message="ok", result={"a": [1, 2]})
        assert done.state == JobState.SUCCEEDED and done.result == {"a": [1, 2]} and done.finished is not None
        last = store.events(job.id)[-1]
        assert last.terminal and last.state == JobState.SUCCEEDED and last.message == "ok"

    def test_failure_keeps_its_details(self, store):
        job = self.running(store)
        failure = Failure("crashed", "killed by SIGKILL", "WorkerCrashed", signal=9)
        failed = store.transition(job.id, JobState.RUNNING, JobState.FAILED, message=failure.message, failure=failure)
        assert failed.failure == failure and failed.message == "killed by SIGKILL"

    @pytest.mark.parametrize("start,to", [(JobState.QUEUED, JobState.SUCCEEDED), (JobState.QUEUED, JobState.FAILED),
                                          (JobState.SUCCEEDED, JobState.RUNNING),
                                          (JobState.SUCCEEDED, JobState.FAILED),
                                          (JobState.CANCELLED, JobState.QUEUED)])
    def test_illegal_transitions_are_rejected_and_change_nothing(self, store, start, to):
        job, _ = store.create(SPEC)
        if start != JobState.QUEUED:
            store.claim_next()
            if start == JobState.SUCCEEDED:
                store.transition(job.id, JobState.RUNNING, JobState.SUCCEEDED)
            else:
                store.transition(job.id, JobState.RUNNING, JobState.CANCELLED)
        before = store.get(job.id)
        with pytest.raises(FailedPrecondition, match="cannot"):
            store.transition(job.id, start, to)
        after = store.get(job.id)
        assert (after.state, after.last_sequence) == (before.state, before.last_sequence)
        assert len(store.events(job.id)) == before.last_sequence

    def test_a_transition_from_a_stale_state_is_rejected(self, store):
        job = self.running(store)
        store.transition(job.id, JobState.RUNNING, JobState.CANCELLED)
        with pytest.raises(FailedPrecondition, match="is CANCELLED, not RUNNING"):
            store.transition(job.id, JobState.RUNNING, JobState.SUCCEEDED)
        assert store.get(job.id).state == JobState.CANCELLED

    def test_every_state_in_the_table(self, store):
        assert set(TRANSITIONS) == set(JobState)
        assert all(not TRANSITIONS[s] for s in JobState if s.terminal)

    # --- events ----------------------------------------------------------------------------------

    def test_event_sequences_are_contiguous_per_job_and_resumable(self, store):
        a = self.running(store)
        b, _ = store.create(SPEC)
        for i in range(5):
            store.add_progress(a.id, "finetune", i / 4, f"step {i}")
        store.transition(a.id, JobState.RUNNING, JobState.SUCCEEDED)
        events = store.events(a.id)
        assert [e.sequence for e in events] == list(range(1, 9))
        assert [e.type for e in events] == ["state", "state"] + ["progress"] * 5 + ["state"]
        assert [e.sequence for e in store.events(a.id, after=6)] == [7, 8]
        assert [e.sequence for e in store.events(a.id, after=2, limit=2)] == [3, 4]
        assert [e.sequence for e in store.events(b.id)] == [1]
        assert store.get(a.id).progress == {"stage": "finetune", "fraction": 1.0, "message": "step 4"}

    def test_progress_is_ignored_unless_running(self, store):
        job, _ = store.create(SPEC)
        assert store.add_progress(job.id, "load", 0.0, "early") is None
        assert store.get(job.id).last_sequence == 1

    # --- cancellation ----------------------------------------------------------------------------

    def test_cancel_of_a_queued_job_is_immediate(self, store):
        job, _ = store.create(SPEC)
        cancelled = store.request_cancel(job.id)
        assert cancelled.state == JobState.CANCELLED and "before it started" in cancelled.message
        assert store.claim_next() is None
        assert store.request_cancel(job.id).state == JobState.CANCELLED      # idempotent

    def test_cancel_of_a_running_job_is_a_request(self, store):
        job = self.running(store)
        flagged = store.request_cancel(job.id)
        assert flagged.state == JobState.RUNNING and flagged.cancel_requested

    def test_cancel_of_a_finished_job_is_refused(self, store):
        job = self.running(store)
        store.transition(job.id, JobState.RUNNING, JobState.SUCCEEDED)
        with pytest.raises(FailedPrecondition, match="already SUCCEEDED"):
            store.request_cancel(job.id)

    # --- idempotency -----------------------------------------------------------------------------

    def test_same_request_id_gives_the_same_job(self, store):
        first, created = store.create(SPEC, request=b"spec", request_id="ci-123")
        again, created_again = store.create(SPEC, request=b"spec", request_id="ci-123")
        assert created and not created_again and again.id == first.id
        assert len(store.list()[0]) == 1

    def test_same_request_id_with_another_spec_conflicts(self, store):
        store.create(SPEC, request=b"spec", request_id="ci-123")
        with pytest.raises(AlreadyExists, match="different spec"):
            store.create(SPEC, request=b"other", request_id="ci-123")

    # --- recovery --------------------------------------------------------------------------------

    def test_recover_fails_running_jobs_with_the_reason(self, store):
        job = self.running(store)
        queued, _ = store.create(SPEC)
        recovered = store.recover()
        assert [j.id for j in recovered] == [job.id]
        failed = store.get(job.id)
        assert failed.state == JobState.FAILED and SERVER_STOPPED_REASON in failed.message
        assert failed.failure.kind == "server_stopped"
        assert store.get(queued.id).state == JobState.QUEUED
        assert store.events(job.id)[-1].terminal

    def test_recover_requeues_when_the_spec_allows_until_the_attempts_run_out(self, store):
        job = self.running(store, retry_on_crash=True)
        for attempt in range(1, MAX_ATTEMPTS):
            store.recover()
            requeued = store.get(job.id)
            assert requeued.state == JobState.QUEUED and "re-queued" in requeued.message
            assert store.claim_next().attempts == attempt + 1
        store.recover()
        assert store.get(job.id).state == JobState.FAILED

    def test_the_worker_and_its_node_are_recorded_and_cleared_on_requeue(self, store):
        job = self.running(store, retry_on_crash=True)
        store.set_worker(job.id, 123, "ray node ab12 (10.0.0.5)")
        assert (store.get(job.id).worker_pid, store.get(job.id).worker_node) == (123, "ray node ab12 (10.0.0.5)")
        store.recover()
        requeued = store.get(job.id)
        assert requeued.state == JobState.QUEUED and (requeued.worker_pid, requeued.worker_node) == (None, None)

    def test_a_lost_node_requeues_or_fails_by_the_spec(self, store):
        reason = "the Ray node running the job died (ray node ab12 (10.0.0.5))"
        retried, plain = self.running(store, retry_on_crash=True), self.running(store)
        assert lost_worker_outcome(retried, reason)[:2] == (JobState.QUEUED, f"re-queued: {reason} (attempt 1 of 3)")
        to, message, failure = lost_worker_outcome(plain, reason)
        assert (to, message, failure.kind, failure.error_type) == (JobState.FAILED, reason, "crashed", "NodeDied")
        assert "--retry-on-crash" in failure.message
        store.request_cancel(plain.id)
        assert lost_worker_outcome(store.get(plain.id), reason)[0] == JobState.CANCELLED

    def test_recover_completes_a_cancellation_in_progress(self, store):
        job = self.running(store)
        store.request_cancel(job.id)
        store.recover()
        assert store.get(job.id).state == JobState.CANCELLED


    # --- deletion and per-client limits ---------------------------------------------------------

    def test_only_finished_jobs_are_deleted_with_their_events(self, store):
        job = self.running(store, request_id="r-del")
        with pytest.raises(FailedPrecondition, match="only finished jobs can be deleted"):
            store.delete(job.id)
        store.transition(job.id, JobState.RUNNING, JobState.FAILED, message="x")
        assert store.delete(job.id).id == job.id
        with pytest.raises(NotFound):
            store.get(job.id)
        assert store.events(job.id) == [] and store.create(SPEC, request_id="r-del")[1], "the request id is free"

    def test_queued_jobs_per_owner_are_limited(self, store):
        for _ in range(2):
            store.create(SPEC, owner="token:a", max_queued=2)
        with pytest.raises(ResourceExhausted, match="max_queued_jobs_per_client=2"):
            store.create(SPEC, owner="token:a", max_queued=2)
        assert store.create(SPEC, owner="token:b", max_queued=2)[0].owner == "token:b"
        store.claim_next()                                   # one of a's starts: a has room again
        assert store.create(SPEC, owner="token:a", max_queued=2)[1]


class TestMemoryStore(StoreContract):
    def make_store(self, tmp_path):
        return MemoryJobStore()


class TestSqliteStore(StoreContract):
    def make_store(self, tmp_path):
        return SqliteJobStore(tmp_path / "jobs.db")

    def test_a_store_from_before_worker_node_gains_the_column(self, tmp_path):
        import sqlite3

        path = tmp_path / "old.db"
        store = SqliteJobStore(path)
        job, _ = store.create(SPEC)
        store.close()
        with sqlite3.connect(path) as conn:                   # as the store was before worker_node existed
            conn.execute("ALTER TABLE jobs DROP COLUMN worker_node")
        reopened = SqliteJobStore(path)
        assert reopened.get(job.id).worker_node is None
        reopened.set_worker(job.id, 7, "local")
        assert reopened.get(job.id).worker_node == "local"
        reopened.close()

    def test_jobs_survive_reopening(self, tmp_path):
        store = SqliteJobStore(tmp_path / "jobs.db")
        job, _ = store.create(SPEC, request_id="r1")
        store.close()
        reopened = SqliteJobStore(tmp_path / "jobs.db")
        assert reopened.get(job.id).state == JobState.QUEUED
        assert reopened.create(SPEC, request_id="r1")[0].id == job.id
        reopened.close()

    def test_a_store_without_owners_gains_the_column(self, tmp_path):
        import sqlite3

        path = tmp_path / "old.db"
        SqliteJobStore(path).close()
        conn = sqlite3.connect(path)
        conn.execute("DROP INDEX jobs_by_owner")
        conn.execute("ALTER TABLE jobs DROP COLUMN owner")
        conn.execute("INSERT INTO jobs (id, state, spec, created) VALUES ('job-old', 'FAILED', '{}', 0)")
        conn.commit()
        conn.close()
        store = SqliteJobStore(path)
        assert store.get("job-old").owner is None and store.create(SPEC, owner="x", max_queued=1)[0].owner == "x"
        store.close()

    def test_concurrent_claims_take_each_job_once(self, tmp_path):
        path = tmp_path / "jobs.db"
        setup = SqliteJobStore(path)
        ids = {setup.create(SPEC)[0].id for _ in range(20)}
        claimed, lock = [], threading.Lock()

        def worker():
            store = SqliteJobStore(path)             # its own connections, as a second process would have
            while (job := store.claim_next()) is not None:
                with lock:
                    claimed.append(job.id)
            store.close()
        threads = [threading.Thread(target=worker) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(claimed) == sorted(ids)
        setup.close()

    def test_concurrent_progress_keeps_sequences_unique(self, tmp_path):
        path = tmp_path / "jobs.db"
        store = SqliteJobStore(path)
        job, _ = store.create(SPEC)
        store.claim_next()

        def writer():
            own = SqliteJobStore(path)
            for i in range(25):
                own.add_progress(job.id, "finetune", 0.5, str(i))
            own.close()
        threads = [threading.Thread(target=writer) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert [e.sequence for e in store.events(job.id)] == list(range(1, 103))
        store.close()
