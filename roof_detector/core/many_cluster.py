"""The Dask side of ``detect-many``: the client, on an existing cluster or on a LocalCluster started here.

Local workers: two or more are processes (Dask's nanny starts, watches and
restarts each); a single one runs as threads of this process, the way the
single-raster CLI runs, which saves the second Python start, the second import
of the engine and the process hand-over of every result (README, "Where the
overhead goes"). Dask cannot stop a running task, so the client stops its own
jobs in this process when the run ends (:func:`stopping`). Each local worker
runs :data:`JOBS_PER_WORKER` jobs at once, which take turns on its network.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Optional

from .errors import RoofDetectorError
from .many_job import release_models, stop_jobs


def cluster_workers(scheduler: str) -> int:
    """How many workers the cluster at ``scheduler`` has now (at least 1)."""
    with dask_client(scheduler, 1, None, True) as client:
        return max(1, len(client.scheduler_info().get("workers", {})))


#: Dask settings of the local cluster (read while it starts; the nanny hands them to worker processes).
#: Its servers check their event loop every 20 ms by default, only to log a blocked loop (our logs are
#: off); and a single worker has nobody to steal work from (work stealing runs every 100 ms): an idle
#: in-process cluster took 3.8 % of a core with Dask's defaults, 2.5 % with these (15 s, loaded machine).
#: A worker also samples its running tasks' Python stacks every 10 ms for the dashboard's Profile
#: page, and the system monitor reads psutil's counters every 0.5 s: with one job running, the
#: event loop took 6.2 % of a core, 1.6 % without the profiler and 1.3 % with the monitor at 2 s
#: (12 s, quiet machine); during a bench run of 16 x 3072 px the event loop thread had burnt 2.9 CPU s
#: (perf). The dashboard's task stream, progress and system pages stay.
LOCAL_CLUSTER_CONFIG = {
    "distributed.admin.tick.interval": "1s",
    "distributed.worker.profile.enabled": False,
    "distributed.admin.system-monitor.interval": "2s",
}

#: Jobs a local worker runs at once. They take turns on the model (:data:`.many_job.NETWORK_LOCK`):
#: the second waits while the first predicts its tiles, then starts while the first traces its last
#: outlines, which would otherwise leave the model's cores idle at the end of every job.
JOBS_PER_WORKER = 2


@contextlib.contextmanager
def dask_client(scheduler: Optional[str], workers: int, threads: Optional[int], processes: bool) -> Iterator[Any]:
    """A Dask client on ``scheduler``, or on a LocalCluster started (and stopped) here."""
    import logging

    import dask
    from distributed import Client, LocalCluster

    if scheduler:
        try:
            client = Client(scheduler, timeout="20s")
        except (OSError, TimeoutError) as exc:
            raise RoofDetectorError(
                f"Cannot reach the Dask scheduler {scheduler} ({exc}); check the address "
                "(tcp://HOST:8786) and that `dask scheduler` runs there"
            ) from None
        try:
            yield client
        finally:
            client.close()
        return
    torch_threads = None
    if not processes:  # the worker's jobs set torch's (process-wide) threads here: given back below
        import torch

        torch_threads = torch.get_num_threads()
    # Two tasks at a time per worker, one on the network (JOBS_PER_WORKER); the model's threads are
    # the worker's parallelism. The workers' own logs stay quiet (CRITICAL): a job's error reaches
    # the client with its future, while a worker stopped by Ctrl-C / SIGTERM logged
    # "CommClosedError ... heartbeat_worker" tracebacks.
    with dask.config.set(dict(LOCAL_CLUSTER_CONFIG, **{"distributed.scheduler.work-stealing": workers > 1})):
        # Loopback only: the scheduler, the workers and the dashboard (no authentication) are this
        # machine's business; ":0" had served the dashboard and the worker ports on every interface.
        cluster = LocalCluster(
            n_workers=workers,
            threads_per_worker=JOBS_PER_WORKER,
            processes=processes,
            dashboard_address="127.0.0.1:0",
            worker_dashboard_address="127.0.0.1:0",  # the workers' own HTTP (metrics) server too
            silence_logs=logging.CRITICAL,
            # worker processes talk over TCP; threads in this process over inproc:// (no host)
            **({"host": "127.0.0.1"} if processes else {}),
        )
    try:
        with Client(cluster) as client:
            try:
                yield client
            except BaseException:
                # Ctrl-C / SIGTERM / an error: the workers' heartbeats then meet closed streams
                # while the cluster stops, which distributed logs with a traceback; say nothing.
                for name in ("distributed", "tornado"):
                    logging.getLogger(name).setLevel(logging.CRITICAL + 1)
                raise
    finally:
        cluster.close()
        if torch_threads is not None:  # the worker's model was loaded here: free it, give torch its threads back
            release_models()
            torch.set_num_threads(torch_threads)


@contextlib.contextmanager
def stopping(run_id: str) -> Iterator[None]:
    """On leaving (done, Ctrl-C, SIGTERM, an error, a cancel): stop ``run_id``'s jobs running in this process.

    Jobs of a local single worker run on threads here; closing its cluster waits for the job
    in progress, which Dask cannot stop: the job itself gives up at its next check.
    """
    try:
        yield
    finally:
        stop_jobs(run_id)


def dashboard_link(client) -> Optional[str]:
    """The Dask dashboard's address, or None (no dashboard: bokeh missing).

    For a cluster started here, the address its HTTP server is bound to (loopback): Dask's own
    link names the machine's network address, where nothing listens then.
    """
    try:
        server = getattr(getattr(getattr(client, "cluster", None), "scheduler", None), "http_server", None)
        if server is not None:
            from distributed.comm.utils import get_tcp_server_address

            host, port = get_tcp_server_address(server)[:2]
            return f"http://{host}:{port}/status"
        return client.dashboard_link
    except Exception:  # noqa: BLE001 - no dashboard (bokeh missing): the run does not need one
        return None


__all__ = ["dask_client", "stopping", "dashboard_link", "cluster_workers", "LOCAL_CLUSTER_CONFIG", "JOBS_PER_WORKER"]
