"""Where the per-image work of a command runs: in this process (`local`, the default), or on a Ray
cluster (`ray`): a local Ray started for the command, or a running cluster joined by address.

Only the work that grows with the number of images goes to Ray (clipeval.compute.ray_map). Text embeddings,
similarity, top-k, rules and every store write stay in this process, so a Ray run gives the local
run's answers and the store keeps one writer.

The options are checked before any work (bad values are a ClipevalError, exit 2 from the CLI); what
only the cluster can tell (does it have GPUs?) is checked once Ray is up, still before any store write.
"""

from __future__ import annotations

import logging
import math
import os
import re
import sys
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from clipeval.errors import ClipevalError

# Imported inside the functions that use them: ray, only with --engine ray (it takes seconds to import and
# is optional).

ENGINES = ("local", "ray")
LOCAL_ADDRESS = "local"
# host:port, or a Ray Client address ray://host:port (host: a name, IPv4, or [IPv6])
_ADDRESS = re.compile(r"^(ray://)?(\[[0-9a-fA-F:]+\]|[A-Za-z0-9_.-]+):(\d{1,5})$")


@dataclass(frozen=True)
class Engine:
    """kind 'local' or 'ray'; address 'local' (start a Ray on this machine for the command), 'auto'
    (join the cluster this machine belongs to, as `ray start` left it) or host:port / ray://host:port;
    workers: Ray actors, each with its own copy of the models (None: as many as the cluster's GPUs / G,
    or its CPUs); gpus_per_worker G: GPUs per actor, fractions below 1 share a GPU between actors."""

    kind: str = "local"
    address: str = LOCAL_ADDRESS
    workers: int | None = None
    gpus_per_worker: float = 0.0

    @property
    def is_ray(self) -> bool:
        return self.kind == "ray"

    def check(self) -> "Engine":
        if self.kind not in ENGINES:
            raise ClipevalError(f"unknown engine {self.kind!r}: use {' or '.join(ENGINES)}")
        if not self.is_ray:
            return self
        if self.workers is not None and self.workers < 1:
            raise ClipevalError(f"--workers must be at least 1 with --engine ray, not {self.workers}")
        g = self.gpus_per_worker
        if not math.isfinite(g) or g < 0:
            raise ClipevalError(f"--gpus-per-worker must be 0 or more, not {g:g}")
        if g > 1 and g != int(g):
            raise ClipevalError(
                f"--gpus-per-worker {g:g}: Ray shares a GPU only in fractions below 1; "
                "above 1 it must be a whole number"
            )
        if self.address not in (LOCAL_ADDRESS, "auto"):
            m = _ADDRESS.match(self.address)
            if not m or not 0 < int(m.group(3)) < 65536:
                raise ClipevalError(
                    f"--ray-address {self.address!r} is not 'local', 'auto', HOST:PORT or "
                    "ray://HOST:PORT (e.g. 10.0.0.5:6379, the address `ray start --head` prints)"
                )
        return self

    def describe(self) -> str:
        if not self.is_ray:
            return "local"
        where = "a local Ray" if self.address == LOCAL_ADDRESS else f"the Ray cluster at {self.address}"
        return f"ray ({where}, {self.workers or 'auto'} worker(s), {self.gpus_per_worker:g} GPU(s) each)"


LOCAL = Engine()


def engine_from_args(args) -> Engine:
    """The CLI's engine options, checked (before any work): --ray-address and --gpus-per-worker mean
    something only with --engine ray, so giving them without it is an error rather than silently ignored."""
    kind = getattr(args, "engine", "local") or "local"
    if kind != "ray":
        given = [
            f
            for f, v in (("--ray-address", args.ray_address), ("--gpus-per-worker", args.gpus_per_worker))
            if v is not None
        ]
        if given:
            raise ClipevalError(f"{' and '.join(given)} need{'s' if len(given) == 1 else ''} --engine ray")
        return Engine(kind).check()
    return Engine("ray", args.ray_address or LOCAL_ADDRESS, args.workers, float(args.gpus_per_worker or 0.0)).check()


# Ray's notices that say nothing about this command: that the local cluster uses token authentication
# (it does, which is right for a cluster that runs code), and that Ray Data's own progress bars are off
# (clipeval shows one progress bar per pass instead).
_NOTICE_LOGGERS = ("ray._private.authentication.authentication_token_setup", "ray.data._internal.progress")


def _quiet_ray_logs() -> None:
    """Ray and Ray Data log their start-up, plans and progress bars at INFO; a clipeval command shows its
    own progress, so only their warnings and errors come through, minus two notices."""
    for name in ("ray", "ray.data", "ray._private", "ray.util"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for name in _NOTICE_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    # Ray Data warns about its own deprecated settings when it copies its context: not the user's doing
    warnings.filterwarnings("ignore", module=r"ray(\.|$)")
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    ctx.verbose_stats_logs = False


_scope = {"depth": 0, "started": False}


@contextmanager
def ray_scope(engine: Engine) -> Iterator[None]:
    """Within this block a Ray that a ray_session starts stays up until the block ends: one start for a
    command's several maps (evaluate's CP, ES and contrast), and none at all if every result is cached."""
    if not engine.is_ray:
        yield
        return
    _scope["depth"] += 1
    try:
        yield
    finally:
        _scope["depth"] -= 1
        if _scope["depth"] == 0 and _scope["started"]:
            _scope["started"] = False
            import ray

            ray.shutdown()


@contextmanager
def ray_session(engine: Engine, progress: bool = True) -> Iterator[dict]:
    """Ray up for the length of a command: joins the session already up in this process (tests start
    one for all), else starts a local Ray or joins `engine.address`; shuts down only what it started
    (at the end of the enclosing ray_scope, if any). Yields the cluster's resources ({'CPU': n, ...})."""
    try:
        import ray
    except ImportError as e:  # the pinned requirements install it; a trimmed environment may not
        raise ClipevalError("--engine ray needs Ray: pip install 'ray[data]==2.60.0'") from e
    started = False
    for name in _NOTICE_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    if not ray.is_initialized():
        kwargs = dict(
            include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING, configure_logging=True
        )
        if engine.address == LOCAL_ADDRESS:
            # the workers of a local Ray import clipeval from where this process did (a source checkout
            # is not always the installed copy); on a cluster, clipeval is installed on every node
            root = str(Path(__file__).resolve().parents[1])
            os.environ["PYTHONPATH"] = os.pathsep.join(
                [root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
            )
            if progress:
                print("[ray] starting a local Ray on this machine ...", file=sys.stderr, flush=True)
        else:
            kwargs["address"] = engine.address
        try:
            ray.init(**kwargs)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise ClipevalError(
                f"cannot {'start a local Ray' if engine.address == LOCAL_ADDRESS else 'join the Ray cluster at ' + engine.address}: "
                f"{str(e).splitlines()[0] if str(e) else type(e).__name__}"
            ) from e
        started = True
        if _scope["depth"]:
            _scope["started"], started = True, False
    _quiet_ray_logs()
    try:
        resources = ray.cluster_resources()
        check_resources(engine, resources)
        yield resources
    finally:
        if started:
            ray.shutdown()


def check_resources(engine: Engine, resources: dict) -> None:
    """What the cluster must have for the requested workers (checked before any store write)."""
    gpus, cpus = float(resources.get("GPU", 0)), float(resources.get("CPU", 0))
    g = engine.gpus_per_worker
    if g > 0 and gpus == 0:
        raise ClipevalError(
            f"--gpus-per-worker {g:g}, but the Ray cluster has no GPU (resources: "
            f"{cpus:g} CPU); use --gpus-per-worker 0 to run the workers on CPUs"
        )
    n = worker_count(engine, resources)
    if g > 0 and n * g > gpus + 1e-9:
        raise ClipevalError(f"{n} worker(s) x {g:g} GPU need {n * g:g} GPUs; the Ray cluster has {gpus:g}")
    if g == 0 and n > cpus:
        raise ClipevalError(f"{n} worker(s) need a CPU each; the Ray cluster has {cpus:g}")


def worker_count(engine: Engine, resources: dict) -> int:
    if engine.workers:
        return engine.workers
    if engine.gpus_per_worker > 0:
        return max(1, int(float(resources.get("GPU", 0)) / engine.gpus_per_worker + 1e-9))
    return max(1, int(float(resources.get("CPU", 1))))


def driver_device_and_dtype(engine: Engine, device: str | None, dtype: str | None) -> tuple[str | None, str | None]:
    """--device and --dtype as the command uses them. With --engine ray the models run on the workers
    (on GPUs where --gpus-per-worker > 0) and this process keeps only text embeddings and the
    similarity: it runs on its CPU, and its models travel to the workers from there. The dtype is part
    of a run's settings, so it is decided here: 'auto' is float32 on CPU workers; for GPU workers it
    would depend on GPUs this process cannot see, so it must be given."""
    if not engine.is_ray:
        return device, dtype
    if (device or "auto").strip().lower() not in ("auto", "cpu"):
        raise ClipevalError(
            f"--device {device}: with --engine ray the models run on the Ray workers; give them "
            "GPUs with --gpus-per-worker (this process runs on its CPU)"
        )
    auto = (dtype or "auto").strip().lower() == "auto"
    if engine.gpus_per_worker > 0 and auto:
        raise ClipevalError(
            "--engine ray with --gpus-per-worker: pass --dtype (bfloat16 on GPUs that support it, "
            "such as A100/H100/H200; float16 on older ones; or float32): 'auto' is decided where "
            "the models run, and this process does not see the workers' GPUs"
        )
    return "cpu", ("float32" if auto else dtype)
