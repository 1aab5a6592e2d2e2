"""The ingest detector stage on Ray Data (``engine="ray"``; ``pip install "skullsearch[distributed]"``).

:class:`RayDetectStage` is a drop-in for :class:`~skullsearch.index.ingest.LocalDetectStage`:
called with one chunk of :class:`~skullsearch.index.ingest.Source` it returns the same rows, in
the same order, made by the same pure function :func:`~skullsearch.index.ingest.detect_one`.
The photos become a Ray Dataset (``ray.data.from_items``) of ``(index, path)`` rows, mapped by a
pool of ``workers`` :class:`DetectActor` (``map_batches(DetectActor, compute=
ActorPoolStrategy(size=workers))``); each actor runs the worker initializer once (the set of
known sha256, the detector's models) and then detects batch after batch. Rows travel as JSON
strings (nested faces and landmarks in one plain column), are decoded on the driver and come out
in order (an index column, ``preserve_order``); person and metadata never leave the driver.

Failures never raise: a photo that cannot be used is a row with a failure status. A batch whose
actor dies (a crashing decoder) is dropped by Ray Data (``max_errored_blocks``), the pool gets a
new actor, and the dropped photos are redone one by one in Ray tasks: ``worker-crashed`` if it
dies again, ``timeout`` after ``timeout_s``. A hang stops the dataset when it makes no progress
for ``timeout_s`` x batch size + 60 s (in a Ray whose DataContext has
``execution_no_progress_timeout_s``: 2.60 has it, 2.40 not); its first unfinished batch is then
redone photo by photo and the rest on a new dataset.

Actors start once per dataset (a fresh process importing torch and loading the detector: a few
seconds). ``stage(chunk)`` is one dataset per chunk; :meth:`RayDetectStage.iter_chunks` is one
dataset for a whole ingest, yielding each chunk's rows as soon as they are complete while the
actors go on detecting (what a runner should use when it can).

On one machine (the default) the stage starts a private Ray instance (``address="local"``,
``num_cpus=workers``), offline and quiet (no dashboard, no usage stats, worker logs not
forwarded), and shuts it down in :meth:`RayDetectStage.close`. If Ray is already initialised in
this process, that session is used and left running.

On a cluster the same stage runs unchanged:

- start it (``ray start --head`` on one node, ``ray start --address=HEAD:6379`` on the others,
  or KubeRay / the cluster launcher), with skullsearch and the detector's models installed on
  every node, and the photos under the same paths everywhere (NFS, a mounted bucket);
- run the ingest on a cluster node with ``RAY_ADDRESS=HEAD:6379`` set (or as a Ray job:
  ``ray job submit -- skullsearch ingest PHOTOS --gallery DIR --engine ray --workers 64``), or
  call ``ray.init(address=...)`` yourself before ``Gallery.ingest(..., engine="ray")``; then
  ``workers`` is the number of detector actors across the cluster and the cluster's own
  resources are used (``num_cpus`` is not set);
- GPU actors: with ``detector="fan"`` and GPUs in the cluster, each actor asks for a share of a
  GPU (``num_gpus = min(1, GPUs / workers)``) and FAN runs on it (Ray sets
  ``CUDA_VISIBLE_DEVICES`` per actor); dlib always runs on CPU and asks for none.

Only detection is distributed. The encoder (the batched fit) and the writer stay single, on the
driver: one process holds the gallery's write lock and commits the shards one by one, so a
gallery is never written by two machines at once, and an interrupted ingest resumes exactly as
with ``engine="local"``.
"""

from __future__ import annotations

import logging
import math
import os
import warnings

import numpy as np

from skullsearch.errors import DependencyError
from skullsearch.index.detect_stage import (
    TIMEOUT,
    WORKER_CRASHED,
    PhotoRecord,
    Source,
    chunk_sizes,
    detect_one,
    init_worker,
)

_log = logging.getLogger(__name__)

INSTALL_HINT = (
    'the ray engine needs Ray Data: pip install "skullsearch[distributed]" (or pip install '
    '"ray[data]"); without it use --engine local, the default'
)


def _import_ray():
    try:
        import ray
        import ray.data  # noqa: F401 - Ray Data is a separate extra of ray
    except ImportError as e:
        raise DependencyError(INSTALL_HINT) from e
    except Exception as e:  # noqa: BLE001 - an old ray against new numpy / pyarrow fails on import
        raise DependencyError(f"ray is installed but does not import ({type(e).__name__}: {e}); "
                              f"{INSTALL_HINT.replace('pip install', 'pip install -U', 1)}") from e
    return ray


class DetectActor:
    """One detector worker of the Ray Data pool: initialised once, then called on batches.

    A batch (pyarrow) has the columns ``index`` and ``path``; the result has ``index`` and
    ``row`` (the :func:`detect_one` record as JSON text, :meth:`PhotoRecord.to_json`, so nested
    faces and landmarks travel as one plain column).
    """

    def __init__(self, known: frozenset, detector: str, descriptors: bool = True, crops: bool = False):
        init_worker(known, detector, descriptors, crops)

    def __call__(self, batch):
        import pyarrow as pa

        index = batch.column("index").to_pylist()
        paths = batch.column("path").to_pylist()
        rows = [detect_one(Source(p)).to_json() for p in paths]
        return pa.table({"index": pa.array(index, pa.int64()), "row": pa.array(rows, pa.large_string())})


def _detect_alone(known: frozenset, detector: str, path: str, descriptors: bool = True,
                  crops: bool = False) -> str:
    """One photo alone in a Ray task (the fallback for the photos of a failed batch)."""
    init_worker(known, detector, descriptors, crops)
    return detect_one(Source(path)).to_json()


class RayDetectStage:
    """The detector stage on Ray Data; same calls, rows and order as ``LocalDetectStage``.

    workers: detector actors; known: sha256 already in the gallery; detector: ``dlib``, ``fan``
    or ``pts``; timeout_s: seconds one photo may take (a dataset that makes no progress for
    ``timeout_s`` x batch_size + 60 s is abandoned; its first unfinished batch is redone photo by
    photo, each with ``timeout_s``, the rest on a new dataset); batch_size: photos per actor call
    (default: about four batches per worker, at most 32).

    ``stage(sources)`` runs one dataset per call (one pool of actors per chunk);
    ``stage.iter_chunks(sources, chunk_images)`` runs one dataset for all the photos and yields
    the rows chunk by chunk, in order, while the actors go on detecting (the actors start once).
    """

    actor_class = DetectActor  # what the Ray Data pool runs (a subclass may wrap it)
    alone_function = staticmethod(_detect_alone)  # what a photo redone alone runs

    def __init__(self, workers: int, known: frozenset, detector: str, timeout_s: float = 120.0,
                 batch_size: int | None = None, descriptors: bool = True, crops: bool = False):
        self.ray = _import_ray()
        self.workers = max(1, int(workers))
        self.known = known
        self.detector = detector
        self.descriptors = descriptors
        self.crops = crops
        self.timeout_s = float(timeout_s)
        self.batch_size = batch_size
        self.started = False
        self._known_ref = None
        self._start()
        #: the CPUs of this machine the stage keeps busy, which the fit leaves it: none counted —
        #: the actors' CPUs are Ray's to schedule (on a cluster they are not this machine's)
        self.cpu_share = 0

    # ------------------------------------------------------------ ray session
    def _start(self) -> None:
        ray = self.ray
        if ray.is_initialized():
            return
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        kw = dict(include_dashboard=False, log_to_driver=False, ignore_reinit_error=True,
                  logging_level=logging.ERROR)
        if os.environ.get("RAY_ADDRESS"):  # a cluster: connect; its resources are its own
            ray.init(**kw)
        else:  # a private local instance (never one that happens to run on this machine)
            ray.init(address="local", num_cpus=self.workers, **kw)
        self.started = True

    def _gpus_per_actor(self) -> float:
        """A share of a GPU per actor for FAN when Ray has GPUs (dlib and pts run on CPU)."""
        if self.detector.lower() != "fan":
            return 0.0
        gpus = float(self.ray.cluster_resources().get("GPU", 0.0))
        return min(1.0, gpus / self.workers) if gpus > 0 else 0.0

    def _batch_size(self, n: int) -> int:
        return self.batch_size or max(1, min(32, math.ceil(n / (4 * self.workers))))

    # ------------------------------------------------------------ the stage
    def __call__(self, sources: list[Source]) -> list[PhotoRecord]:
        """Records of one chunk of photos, in order (one Ray dataset)."""
        chunks = list(self.iter_chunks(sources, len(sources)))
        return chunks[0] if chunks else []

    def iter_chunks(self, sources: list[Source], chunk: int | list[int]):
        """Records of ``sources`` chunk by chunk, in order, each chunk yielded as soon as it is
        complete; one Ray dataset for them all. chunk: photos per chunk (the last one shorter),
        or the list of chunk sizes (as :class:`LocalDetectStage`)."""
        n = len(sources)
        sizes = chunk if isinstance(chunk, list) else chunk_sizes(n, max(1, int(chunk)), max(1, int(chunk)))
        ends = list(np.cumsum(sizes))  # the chunks' ends, in order
        texts: dict[int, str] = {}
        pending = list(range(n))  # positions still to run through a dataset
        start = 0  # first position of the next chunk to yield
        while pending:
            last = -1
            try:
                for i, text in self._run_dataset(sources, pending):
                    texts[i], last = text, i
                    # outputs come in order: every chunk ending at or before i is complete
                    while ends and ends[0] - 1 <= i:
                        yield self._finish(sources, start, int(ends[0]), texts)
                        start = int(ends.pop(0))
                pending = []
            except Exception as e:  # noqa: BLE001 - a hang (no progress) or Ray failed
                rest = [j for j in pending if j > last]
                # the first unfinished batch holds the culprit: redo it alone, the rest anew
                suspects = 2 * self._batch_size(len(pending))
                _log.warning("ray detector stage: %s; redoing %d photo(s) one by one",
                             (str(e).splitlines() or [type(e).__name__])[0], min(suspects, len(rest)))
                pending = rest[suspects:]
        for end in ends:
            yield self._finish(sources, start, int(end), texts)
            start = int(end)

    def _finish(self, sources: list[Source], a: int, b: int, texts: dict[int, str]) -> list[PhotoRecord]:
        missing = [j for j in range(a, min(b, len(sources))) if j not in texts]
        if missing:  # dropped batches (a dead actor) and suspects of a hang
            _log.warning("ray detector stage: %d photo(s) of failed batches are redone one by one",
                         len(missing))
        rows = []
        for j in range(a, min(b, len(sources))):
            s = sources[j]
            row = PhotoRecord.from_json(texts.pop(j)) if j in texts else self._isolated(s)
            row.person, row.metadata = s.person, s.metadata  # never left the driver
            rows.append(row)
        return rows

    def _run_dataset(self, sources: list[Source], positions: list[int]):
        """(position, row JSON) of the photos at ``positions``, in order; a batch whose actor
        died is left out."""
        ray = self.ray
        bs = self._batch_size(len(positions))
        items = [{"index": j, "path": sources[j].path} for j in positions]
        ds = ray.data.from_items(items, override_num_blocks=math.ceil(len(items) / bs))
        ctx = ds.context  # this dataset's own copy of the DataContext
        for name, value in (("enable_progress_bars", False), ("enable_operator_progress_bars", False),
                            ("enable_auto_log_stats", False), ("print_on_execution_start", False),
                            ("max_errored_blocks", -1),  # a dead actor's batch is dropped, redone
                            ("execution_no_progress_timeout_s", self.timeout_s * bs + 60.0)):
            if hasattr(ctx, name):
                setattr(ctx, name, value)
        ctx.execution_options.preserve_order = True
        ctx.execution_options.verbose_progress = False
        with warnings.catch_warnings():
            # max_restarts=0 goes through **ray_remote_args (deprecated in Ray 2.60, no named
            # replacement yet); without it Ray Data restarts the actor and retries a photo that
            # kills it forever. The pool replaces a dead actor.
            warnings.filterwarnings("ignore", message=".*deprecated.*")
            ds = ds.map_batches(
                self.actor_class,
                fn_constructor_args=(self.known, self.detector, self.descriptors, self.crops),
                batch_size=bs,
                batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=self.workers),
                num_cpus=1, num_gpus=self._gpus_per_actor(), max_restarts=0)
        data_log = logging.getLogger("ray.data")
        level = data_log.level
        data_log.setLevel(logging.CRITICAL)  # dropped batches are redone and reported here
        try:
            for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
                yield from zip(batch.column("index").to_pylist(), batch.column("row").to_pylist(),
                               strict=True)
        finally:
            data_log.setLevel(level)

    def _isolated(self, source: Source) -> PhotoRecord:
        """One photo alone in a Ray task, as ``LocalDetectStage._isolated``."""
        ray = self.ray
        if self._known_ref is None:
            self._known_ref = ray.put(self.known)
        # no CPU asked: the actors may hold them all while the dataset goes on (iter_chunks)
        fn = ray.remote(num_cpus=0, max_retries=0)(self.alone_function)
        ref = fn.remote(self._known_ref, self.detector, source.path, self.descriptors, self.crops)
        try:
            return PhotoRecord.from_json(ray.get(ref, timeout=self.timeout_s))
        except ray.exceptions.GetTimeoutError:
            ray.cancel(ref, force=True)
            reason, detail = TIMEOUT, f"decoding or detection took over {self.timeout_s:.0f} s"
        except ray.exceptions.RayTaskError as e:  # a Python error (a bug, a missing dependency)
            raise e.as_instanceof_cause() from None
        except ray.exceptions.RayError:  # the worker process died (a crashing decoder)
            reason, detail = WORKER_CRASHED, "the decoder crashed on this file (corrupt image?)"
        return PhotoRecord.of(source, reason, detail)

    def close(self) -> None:
        """Shut Ray down if this stage started it (a Ray session begun elsewhere is left running)."""
        self._known_ref = None
        if self.started and self.ray.is_initialized():
            self.ray.shutdown()
        self.started = False
