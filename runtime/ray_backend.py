"""Jobs as Ray tasks (`modelspec run SPEC --executor ray [--address HOST:PORT]`).

Each job is one Ray task asking for the CPUs and GPUs of its plan job (`resources`), so Ray
places it on a node that has them. The task writes into the staging folder the driver created
in the store, which must therefore be a path every node sees (a shared filesystem); the driver
verifies and commits, exactly as with local workers. Progress events travel back through a
`ray.util.queue.Queue`. A task is never retried by Ray: a lost node fails its job, and the
next run resumes (training from its last checkpoint in the store's work folder).

ray is imported here only, and this module only when `--executor ray` is asked for.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import os
import socket
import sys
from pathlib import Path
from typing import Any

_REPO = Path(__file__).resolve().parents[1]
PROBE_SECONDS = 5.0


class ClusterUnreachable(Exception):
    pass


class Unplaceable(Exception):
    pass


def runtime_env() -> dict[str, Any]:
    """Workers import this checkout (editable or plain) from the same path; an installed copy needs nothing."""
    env = {"TQDM_DISABLE": "1"}  # as local workers: coremltools' bars would break the run's own display
    if (_REPO / "pyproject.toml").is_file() and (_REPO / "runtime").is_dir():
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {"env_vars": env}


def probe(address: str) -> None:
    """Fail fast on an address nothing listens on: ray.init would retry it for minutes."""
    if address == "auto":
        return  # ray.init resolves it from this machine's running cluster and fails at once without one
    if "://" in address:
        raise ClusterUnreachable(f"'{address}': give the cluster's GCS address HOST:PORT (or 'auto') and run on a "
                                 "node of the cluster; Ray Client addresses (ray://) are not supported")
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ClusterUnreachable(f"'{address}' is not HOST:PORT (the head's GCS address, port 6379 by default)")
    try:
        socket.create_connection((host, int(port)), timeout=PROBE_SECONDS).close()
    except OSError as exc:
        raise ClusterUnreachable(f"nothing answers at {address} ({exc.strerror or exc})") from None


def _task(events, args: tuple) -> dict:
    """The body of every Ray task: `runtime.worker.run_job`, reporting where it ran."""
    import ray

    from . import worker

    worker.report_to(events)
    result = worker.run_job(*args)
    rc = ray.get_runtime_context()
    result["worker"] = dict(result["worker"], executor="ray", node_id=rc.get_node_id(), worker_id=rc.get_worker_id())
    return result


def _needs(resources: dict[str, Any]) -> dict[str, float]:
    return {"CPU": float(resources["cpus"]), "GPU": float(resources["gpus"])}


class RayBackend:
    """Connects on first use (`connect`): a run with nothing to run starts no cluster."""

    def __init__(self, address: str | None = None):
        self.address = address
        self._ray = None
        self._remote = None
        self._events = None
        self._nodes: list[dict] = []
        self._running: dict[Any, cf.Future] = {}  # ObjectRef -> the future the executor waits on
        self._stdout = None

    def connect(self) -> None:
        if self._ray is not None:
            return
        if self.address:
            probe(self.address)
        import ray

        kwargs: dict[str, Any] = {"include_dashboard": False} if not self.address else {}
        try:
            # "local": a new single-node cluster with this machine's CPUs and GPUs, whatever RAY_ADDRESS says
            ray.init(address=self.address or "local", runtime_env=runtime_env(), namespace="modelspec",
                     logging_level=logging.WARNING, **kwargs)
        except (ConnectionError, RuntimeError) as exc:  # no cluster there, a refused token, another Ray version
            why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if self.address and self.address != "auto" and os.environ.get("RAY_AUTH_MODE") != "token":
                why += (" (a cluster with token authentication, Ray's default, is reached with an explicit address "
                        "only with RAY_AUTH_MODE=token and its token in RAY_AUTH_TOKEN or ~/.ray/auth_token)")
            raise ClusterUnreachable(why) from None
        self._ray = ray
        # Ray prints what tasks write to stdout, and the raylet's notices (a worker died), on the
        # driver's sys.stdout; stdout holds `--json`, so while connected they go to stderr
        self._stdout, sys.stdout = sys.stdout, sys.stderr
        from ray.util.queue import Queue

        self._events = Queue(actor_options={"num_cpus": 0})
        self._remote = ray.remote(_task)
        self._nodes = [n for n in ray.nodes() if n.get("Alive")]

    def describe(self) -> str:
        def one(n: dict) -> str:
            res = n.get("Resources", {})
            return f"{n.get('NodeManagerAddress', '?')} CPU {res.get('CPU', 0):g} GPU {res.get('GPU', 0):g}"

        return "; ".join(one(n) for n in self._nodes) or "no live nodes"

    def refuse(self, resources: dict[str, Any]) -> str | None:
        if resources["nodes"] > 1:
            return (f"asks for {resources['nodes']} nodes: a Ray task runs on one node, so --executor ray runs "
                    "single-node jobs only (multi-node training runs from the generated Slurm or Kubernetes launch files, docs/scale.md)")
        self.connect()
        need = _needs(resources)
        if any(all(n.get("Resources", {}).get(r, 0.0) >= v for r, v in need.items()) for n in self._nodes):
            return None
        return (f"asks for {need['CPU']:g} CPU and {need['GPU']:g} GPU on one node; no node of the Ray cluster "
                f"has that ({self.describe()})")

    def submit(self, job_id: str, resources: dict[str, Any], args: tuple) -> cf.Future:
        out: cf.Future = cf.Future()
        why = self.refuse(resources)
        if why:
            out.set_exception(Unplaceable(why))
            return out
        need = _needs(resources)
        ref = self._remote.options(num_cpus=need["CPU"], num_gpus=need["GPU"], max_retries=0,
                                   name=f"modelspec {job_id}").remote(self._events, args)
        self._running[ref] = out
        ref.future().add_done_callback(lambda done: self._settle(ref, done))
        return out

    def _settle(self, ref, done: cf.Future) -> None:
        out = self._running.pop(ref, None)
        if out is None or out.done():
            return
        exc = done.exception()
        if exc is None:
            out.set_result(done.result())
            return
        # a job's own exception arrives wrapped (RayTaskError); report it as the local workers do
        cause = getattr(exc, "cause", None)
        out.set_exception(cause if isinstance(cause, BaseException) else exc)

    def events(self) -> list[tuple]:
        if self._events is None:
            return []
        n = self._events.qsize()
        return self._events.get_nowait_batch(n) if n else []

    def abort(self) -> None:
        if self._ray is None:
            return
        refs = list(self._running.copy())  # a copy: tasks settle on Ray's threads meanwhile
        for ref in refs:
            self._ray.cancel(ref, force=True)  # kills the worker process running it
        if refs:  # resolved (as cancelled) once the workers are gone
            self._ray.wait(refs, num_returns=len(refs), timeout=30)

    def close(self) -> None:
        if self._ray is not None:
            self._ray.shutdown()  # a local cluster stops; on a shared one this driver's queue actor goes
            self._ray = None
            sys.stdout, self._stdout = self._stdout, None
