"""Dynamic batching across concurrent requests, on one model thread.

Why one thread: torch already spreads one forward pass over all cores, so concurrent model calls
only fight over them (and some backends are not thread-safe). Why batch across requests: many small
requests (one query each) would otherwise each pay a whole forward pass; combined, they share one.

Jobs arrive tokenized (request threads validate and tokenize, ``serve.inputs``), so this thread
runs forward passes and pooling only: ``Embedder.pooled_token_ids`` for texts,
``Embedder.pooled_chunk_ids`` for late-chunked documents. Nothing else runs here (a search embeds
its query through ``embed_ids`` like any request and searches elsewhere).

The worker takes the oldest job, waits at most ``wait_s`` after that job arrived for more, and merges
jobs that can share a model call (same kind, same number of pooled-out prompt tokens) until the call
budget (sequences x longest sequence, ``call_tokens``) is reached. The Embedder sorts a merged call
by length and splits it into ``batch_tokens``-sized forward batches itself, so a call budget several
times the forward budget mostly saves padding. A job larger than the call budget runs alone. Jobs
that cannot join stay queued, in order, for the next round.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field

log = logging.getLogger("diffembed.serve")

_STOP = object()


class BatcherClosed(RuntimeError):
    """Work submitted after shutdown began."""


@dataclass(frozen=True)
class BatchStats:
    """One model call, reported to ``on_batch`` (for metrics)."""

    kind: str
    requests: int
    items: int
    padded_tokens: int
    queue_waits: list[float]


@dataclass(eq=False)
class _Job:
    kind: str  # "texts" | "documents"
    key: tuple  # jobs with equal keys may share one model call
    items: list  # token-id sequences (texts) or per-document chunk ids (documents)
    lengths: list[int]  # padded cost of each item, for the call budget
    future: Future
    enqueued: float = field(default_factory=time.monotonic)


class Batcher:
    """Owns the model thread. Submit work, get a ``concurrent.futures.Future`` back.

    Results are raw pooled float32 tensors, one block per request in request order, so each request
    applies its own precision, dimensions and normalisation afterwards.
    """

    def __init__(self, embedder, *, batch_tokens: int, wait_s: float = 0.002,
                 on_batch: Callable[[BatchStats], None] | None = None, call_tokens: int | None = None):
        self.embedder = embedder
        self.batch_tokens = int(batch_tokens)
        # How much one merged model call may hold (padded as if one batch). Larger than one forward
        # batch on purpose: ``pooled`` sorts the merged inputs by length and splits them by
        # ``batch_tokens`` itself, so merging many requests mostly saves padding.
        self.call_tokens = int(call_tokens if call_tokens is not None else batch_tokens)
        self.wait_s = float(wait_s)
        self.on_batch = on_batch
        self._queue: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False

    # ------------------------------------------------------------------ submitting
    def embed_ids(self, seqs: Sequence[list[int]], skip: int = 0) -> Future:
        """Future of an (n, dim) tensor for complete token-id sequences (special tokens included);
        ``skip``: leading prompt tokens pooling leaves out (``Embedder.prompt_skip``)."""
        seqs = list(seqs)
        return self._submit(_Job("texts", ("texts", skip), seqs, [len(s) for s in seqs], Future()))

    def embed_documents(self, documents: Sequence[Sequence[list[int]]], lengths: Sequence[int]) -> Future:
        """Future of one (n_chunks, dim) tensor per document, late-chunked from its chunks' token ids;
        ``lengths`` are the padded costs (a long document runs as model-length windows)."""
        return self._submit(_Job("documents", ("documents",), [list(d) for d in documents], list(lengths), Future()))

    def _submit(self, job: _Job) -> Future:
        if len(job.items) != len(job.lengths):
            raise ValueError("one length per item is required")
        if not job.items:
            raise ValueError("nothing to embed")
        with self._lock:
            if self._closed:
                raise BatcherClosed("the server is shutting down")
            if self._thread is None:  # started lazily: apps driven without lifespan events still work
                self._spawn()
            self._queue.put(job)
        return job.future

    def start(self) -> None:
        """Open for work again after ``close`` (an ASGI app may see lifespan startup more than once)."""
        with self._lock:
            old = self._thread
            if old is not None and old.is_alive() and not self._closed:
                return
            if old is not None:
                old.join()  # never two model threads
            self._closed = False
            self._spawn()

    def _spawn(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="diffembed-model", daemon=True)
        self._thread.start()

    def close(self, timeout: float | None = 30.0) -> None:
        """Finish what is queued, then stop the thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
            if thread is not None:
                self._queue.put(_STOP)
        if thread is not None:
            thread.join(timeout)

    # ------------------------------------------------------------------ worker
    def _loop(self) -> None:
        backlog: deque[_Job] = deque()
        stopping = False
        while backlog or not stopping:
            if not backlog:
                item = self._queue.get()
                if item is _STOP:
                    stopping = True
                    continue
                backlog.append(item)
            group: list[_Job] = []
            try:
                stopping |= self._gather(backlog)
                group = self._take(backlog)
                self._run(group)
            except Exception as exc:  # a bug here must neither stop the thread nor leave a request hanging
                log.exception("batcher round failed")
                for job in group:
                    with contextlib.suppress(InvalidStateError):  # already answered or abandoned
                        job.future.set_exception(exc)

    def _cost(self, n: int, longest: int) -> int:
        return n * longest

    def _gather(self, backlog: deque[_Job]) -> bool:
        """Pull queued jobs until the head's batch is full or its wait is over. True on stop."""
        head = backlog[0]
        deadline = head.enqueued + self.wait_s
        n, longest = 0, 0
        for job in backlog:
            if job.key == head.key:
                n, longest = n + len(job.lengths), max(longest, *job.lengths)
        while self._cost(n, longest) < self.call_tokens:
            remaining = deadline - time.monotonic()
            try:
                item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                return False
            if item is _STOP:
                return True
            backlog.append(item)
            if item.key == head.key:
                n, longest = n + len(item.lengths), max(longest, *item.lengths)
        return False

    def _take(self, backlog: deque[_Job]) -> list[_Job]:
        """The head plus the following compatible jobs that fit the budget with it."""
        head = backlog.popleft()
        group, n, longest = [head], len(head.lengths), max(head.lengths)
        rest: deque[_Job] = deque()
        open_ = True
        for job in backlog:
            if open_ and job.key == head.key:
                n2, longest2 = n + len(job.lengths), max(longest, *job.lengths)
                if self._cost(n2, longest2) <= self.call_tokens:
                    group.append(job)
                    n, longest = n2, longest2
                    continue
                open_ = False  # keep arrival order: nothing compatible overtakes this job
            rest.append(job)
        backlog.clear()
        backlog.extend(rest)
        return group

    def _run(self, group: list[_Job]) -> None:
        live = [j for j in group if j.future.set_running_or_notify_cancel()]  # skip abandoned requests
        if not live:
            return
        self._execute(live, time.monotonic())

    def _execute(self, jobs: list[_Job], started: float) -> None:
        try:
            outputs = self._model_call(jobs[0].key, [x for j in jobs for x in j.items])
        except Exception as exc:
            if len(jobs) == 1:
                jobs[0].future.set_exception(exc)
                return
            # Which request broke the merged call? Rerun each alone, so only it fails, with its own
            # item indices in the message.
            for job in jobs:
                self._execute([job], started)
            return
        k = 0
        for job in jobs:
            job.future.set_result(outputs[k : k + len(job.items)])
            k += len(job.items)
        self._report(jobs, started)

    def _model_call(self, key: tuple, items: list):
        if key[0] == "texts":
            return self.embedder.pooled_token_ids(items, skip=key[1], batch_tokens=self.batch_tokens,
                                                  show_progress=False)
        return self.embedder.pooled_chunk_ids(items, batch_tokens=self.batch_tokens, show_progress=False)

    def _report(self, jobs: list[_Job], started: float) -> None:
        if self.on_batch is None:
            return
        lengths = [x for j in jobs for x in j.lengths]
        stats = BatchStats(kind=jobs[0].kind, requests=len(jobs), items=len(lengths),
                           padded_tokens=self._cost(len(lengths), max(lengths)),
                           queue_waits=[max(0.0, started - j.enqueued) for j in jobs])
        try:
            self.on_batch(stats)
        except Exception:
            log.exception("batch observer failed")
