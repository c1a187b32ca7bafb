"""The serve console script."""
from __future__ import annotations

import json
import logging
import os

from genderfusion.cli.arguments import add_face_arguments, capped_workers, number, positive_int
from genderfusion.cli.running import make_parser, run_cli

log = logging.getLogger("genderfusion")


from genderfusion.fusion.serve.app import TOKEN_ENV


def serve_main(argv: list[str] | None = None) -> None:
    p = make_parser("serve", "Serve a fusion model: POST /predict (photos -> one row per face), GET /health, and a page "
                             "at / to drop photos on. Binds to 127.0.0.1: put a reverse proxy with TLS, a body size "
                             "limit and authentication in front of it for the open internet.")
    p.add_argument("--model", default="default", help="default (shipped), a name under <workdir>/heads/, or a file")
    p.add_argument("--workdir", default=None)
    p.add_argument("--host", default="127.0.0.1", help="the address to bind (default loopback only; 0.0.0.0: every "
                                                       "interface, reachable from the network)")
    p.add_argument("--port", type=number(int, 1, "a port number from 1 to 65535", 65535), default=8000)
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="another Host header value to answer (a name the server is reached by); by default only the "
                        "--host name and loopback's names are answered, against DNS rebinding")
    p.add_argument("--token", default=None,
                   help=f"a token clients must send as 'Authorization: Bearer <token>' (or set {TOKEN_ENV}); the "
                        "page takes it as http://host:port/#token=...")
    p.add_argument("--docs", action="store_true", help="serve the interactive /docs page (it loads its scripts from "
                                                       "a CDN); /openapi.json is always served")
    p.add_argument("--workers", type=positive_int, default=1,
                   help="server processes, each with the model loaded once and its share of the cores' threads "
                        "(at most the cores here)")
    p.add_argument("--max-mb", type=number(float, 0, "a positive number of MB", low_inclusive=False), default=20.0,
                   help="largest upload per request (MB)")
    p.add_argument("--max-pixels", type=positive_int, default=40_000_000, help="largest image (pixels)")
    p.add_argument("--max-images", type=positive_int, default=16, help="images per request")
    p.add_argument("--queue", type=positive_int, default=8, help="requests that may wait; more get 503")
    p.add_argument("--timeout", type=number(float, 0, "a positive number of seconds", low_inclusive=False),
                   default=60.0, help="seconds per request; then 504")
    add_face_arguments(p)
    args = p.parse_args(argv)

    def body():
        import importlib.util

        if importlib.util.find_spec("fastapi") is None or importlib.util.find_spec("uvicorn") is None:
            raise ModuleNotFoundError('serve needs FastAPI and uvicorn: pip install "genderfusion[serve]"')
        import uvicorn

        from genderfusion.fusion.model.classifier import FusionClassifier
        from genderfusion.fusion.serve.app import ENV, LOOPBACK, allowed_hosts, app_from_settings, thread_share
        from genderfusion.fusion.serve.uploads import Limits

        workers = capped_workers(args.workers)
        token = args.token or os.environ.get(TOKEN_ENV) or None
        clf = FusionClassifier.load(args.model, args.workdir)  # a bad --model fails here, in one line, before any server starts
        settings = {"model": args.model, "workdir": args.workdir, "threads": thread_share(workers),
                    "limits": vars(Limits(round(args.max_mb * 2**20), args.max_pixels, args.max_images, args.queue,
                                          args.timeout)),
                    "options": {"faces": args.faces, "detector": args.detector, "min_face": args.min_face},
                    "hosts": allowed_hosts(args.host, tuple(args.allow_host)), "docs": args.docs}
        log.warning("serving %s on http://%s:%d (%d process(es), %d thread(s) each)", args.model, args.host,
                    args.port, workers, settings["threads"])
        if args.host not in LOOPBACK and token is None:
            log.warning("--host %s: reachable from the network with no authentication: anyone who can reach this "
                        "machine can use the model; pass --token (or set %s), or bind to 127.0.0.1", args.host,
                        TOKEN_ENV)
        if token is not None:
            os.environ[TOKEN_ENV] = token  # for the worker processes; not in the settings, which are logged
        if workers == 1:  # this process serves the model it has loaded
            uvicorn.run(app_from_settings(settings, clf), host=args.host, port=args.port, log_level="warning")
            return
        del clf  # each worker process loads its own
        os.environ[ENV] = json.dumps(settings)
        uvicorn.run("genderfusion.fusion.serve.app:app_from_env", factory=True, host=args.host, port=args.port,
                    workers=workers, log_level="warning")

    run_cli(body, interrupted="server stopped")
