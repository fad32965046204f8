"""``python -m roof_detector serve``: the detector as a REST service (FastAPI on uvicorn).

Loads the model once, then serves detections from a bounded queue, one at a
time on the chosen device. See README "REST service" and
:mod:`roof_detector.service`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from .arguments import add_params

DEFAULT_DATA_DIR = "roof-detector-data"


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the ``serve`` sub-command."""
    p = subparsers.add_parser(
        "serve",
        help="run the detector as a REST service",
        description="Serve building detection and solar sizing over HTTP (JSON API, "
        "OpenAPI at /docs). Bound to loopback unless --host says otherwise; "
        "no TLS: put it behind a reverse proxy for other machines.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1, this machine only)")
    p.add_argument("--port", type=_port, default=8000, help="TCP port (default 8000)")
    p.add_argument("--model", metavar="PATH", help="model file (default: the bundled model)")
    # The server's own choices of two declared parameters (core.params): requests cannot set them.
    add_params(p, "detect", "device", "batch_size")
    p.add_argument(
        "--data-dir",
        default=DEFAULT_DATA_DIR,
        metavar="DIR",
        help=f"job records, uploads and results; rasters named by path must lie under it "
        f"(default ./{DEFAULT_DATA_DIR})",
    )
    p.add_argument(
        "--max-upload-mb",
        type=float,
        default=512.0,
        metavar="N",
        help="largest raster upload in MiB (default 512); larger ones get 413",
    )
    p.add_argument(
        "--workers-queue",
        type=int,
        default=16,
        metavar="N",
        help="jobs that may wait for the device (default 16); more get 429 with Retry-After",
    )
    p.add_argument(
        "--token-file", metavar="F", help="file of bearer tokens, one per line; every call but /health then needs one"
    )
    p.add_argument(
        "--allow-url-prefix",
        action="append",
        default=[],
        metavar="PREFIX",
        help="also read rasters named by an http(s) URL starting with PREFIX, e.g. "
        "https://data.example.org/ortho/ (repeatable; end it with / to allow one folder). Default: "
        "no URL is read. Only hosts you trust: see README 'Rasters by URL'",
    )
    p.add_argument(
        "--url-timeout-s",
        type=float,
        default=30.0,
        metavar="S",
        help="give up on a raster URL that does not answer (or stalls) for S seconds (default 30)",
    )
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Load the model, then serve until Ctrl-C / SIGTERM."""
    from ..core.errors import RoofDetectorError
    from ..core.pipeline import DetectOptions, _load_model

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.workers_queue < 1 or args.max_upload_mb <= 0 or not args.url_timeout_s > 0:
        raise RoofDetectorError("--workers-queue must be at least 1, --max-upload-mb and --url-timeout-s above 0")
    try:
        import uvicorn

        from ..service.app import ServiceConfig, create_app, read_token_file
    except ImportError as exc:
        raise RoofDetectorError(
            f"The REST service needs fastapi, uvicorn and python-multipart ({exc}); "
            "install them with `pip install -r requirements.txt`"
        ) from None
    url_prefixes = _url_prefixes(args)
    tokens = None
    if args.token_file:
        try:
            tokens = read_token_file(args.token_file)
        except (OSError, ValueError) as exc:
            raise RoofDetectorError(f"Cannot use the token file: {exc}") from None
    try:
        os.makedirs(args.data_dir, exist_ok=True)
    except OSError as exc:
        raise RoofDetectorError(f"Cannot create the data dir {args.data_dir}: {exc.strerror}") from None
    # Before the store reads its jobs back (and fails the interrupted ones, and removes half-written
    # uploads): held by this process, the data dir is no other server's, and the port is ours.
    lock = _lock_data_dir(args.data_dir)
    sock = _listening_socket(args.host, args.port)
    model = _load_model(DetectOptions(model_path=args.model, device=args.device))
    config = ServiceConfig(
        data_dir=args.data_dir,
        model=model,
        model_path=args.model or "bundled",
        batch_size=args.batch_size,
        max_upload_mb=args.max_upload_mb,
        max_queued=args.workers_queue,
        tokens=tokens,
        url_prefixes=url_prefixes,
        url_timeout_s=args.url_timeout_s,
    )
    app = create_app(config)
    log = logging.getLogger("roof_detector.service")
    log.info(
        "model %s %s on %s; data dir %s; %s; %s; listening on http://%s:%d",
        model.metadata.get("name", "?"),
        model.metadata.get("version", ""),
        model.device,
        os.path.realpath(args.data_dir),
        f"{len(tokens)} token(s)" if tokens else "no token needed",
        f"rasters by URL under {', '.join(p.text for p in url_prefixes)}" if url_prefixes else "no raster by URL",
        args.host,
        sock.getsockname()[1],
    )
    _serve_until_stopped(uvicorn, app, sock, lock)
    return 0


def _serve_until_stopped(uvicorn, app, sock, lock) -> None:
    """uvicorn on the bound socket until Ctrl-C / SIGTERM; then the socket and the data-dir lock go."""
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # Ctrl-C / SIGTERM again after uvicorn's graceful shutdown: done (as uvicorn.run)
        pass
    finally:
        sock.close()
        lock.close()


def _port(text: str) -> int:
    """``--port``: a TCP port, 0 to 65535 (argparse says so in one line otherwise)."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a TCP port is from 0 to 65535, got {port}")
    return port


def _lock_data_dir(data_dir: str):
    """Hold ``data_dir/.server.lock`` for this process (released when it ends, even killed), or say
    which server holds it: two servers on one data dir fail each other's jobs and delete each
    other's uploads."""
    import fcntl

    from ..core.errors import RoofDetectorError

    path = os.path.join(data_dir, ".server.lock")
    try:
        handle = open(path, "a+")
    except OSError as exc:
        raise RoofDetectorError(f"Cannot use the data dir {data_dir}: {exc.strerror}") from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "?"
        handle.close()
        raise RoofDetectorError(
            f"The data dir {data_dir} is in use by another server (pid {holder}); stop it, or give this "
            "one its own --data-dir"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def _listening_socket(host: str, port: int):
    """A socket bound to (``host``, ``port``) for uvicorn, or one line saying why it cannot be."""
    import socket

    from ..core.errors import RoofDetectorError

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        raise RoofDetectorError(f"Cannot listen on {host}: {exc.strerror or exc}; check --host") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: a restart need not wait
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise RoofDetectorError(
            f"Cannot listen on {host}:{port}: {exc.strerror or exc}; is another program using the port? "
            "Choose another with --port"
        ) from None
    return sock


def _url_prefixes(args: argparse.Namespace):
    """The checked ``--allow-url-prefix`` values; with any, GDAL's HTTP reads are bounded."""
    from ..core.errors import RoofDetectorError
    from ..service.url_rasters import configure_gdal_http, parse_prefixes

    try:
        prefixes = parse_prefixes(args.allow_url_prefix)
    except ValueError as exc:
        raise RoofDetectorError(str(exc)) from None
    if prefixes:
        configure_gdal_http(args.url_timeout_s)
    return prefixes
