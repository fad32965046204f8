"""A local Dask cluster is this machine's business: its scheduler, workers and dashboard (which has
no authentication) listen on loopback only, and the printed dashboard link is where it listens."""

import urllib.request

import psutil
import pytest

from roof_detector.core.many_cluster import dashboard_link, dask_client


def _listening(processes):
    return {c.laddr.ip for p in processes for c in p.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN}


@pytest.mark.parametrize("processes", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["threads", "processes"])
def test_local_cluster_listens_on_loopback_and_links_where_it_listens(processes):
    me = psutil.Process()
    with dask_client(None, 1, None, processes) as client:
        # before: the dashboard and the in-process worker's HTTP server listened on 0.0.0.0
        assert _listening([me, *me.children(recursive=True)]) == {"127.0.0.1"}
        link = dashboard_link(client)
        assert link.startswith("http://127.0.0.1:") and link.endswith("/status")
        with urllib.request.urlopen(link, timeout=20) as reply:
            assert reply.status == 200
