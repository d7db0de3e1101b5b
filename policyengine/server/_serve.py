"""``policyengine serve PATH... [--host] [--port] [--workers N]``.

One worker runs uvicorn in this process. With ``--workers N`` the parent checks the
policy, binds the socket, and forks N workers that share it (the kernel spreads
connections); each worker builds its engine after the fork, so connections to shared
stores are its own; the parent forwards SIGHUP (reload), SIGTERM and SIGINT (graceful stop) to
every worker and exits when they have. Workers keep no shared state of their own beyond
what the engine's stores share, so N workers behave as one service.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import logging
import os
import signal
import socket
import sys
from typing import Any

from policyengine._visible import error_of, say, say_error

__all__ = ["register"]

def _usage(message: str) -> None:
    """A usage error's line, as every command prints it (exit status 2)."""
    say_error("serve", "usage_error", message)


def _failed(exc: Exception) -> None:
    """The line of an error that stops serve (exit status 1), coded as every command
    codes it (:func:`policyengine._visible.error_of`: its code, or io_error for a file the
    operating system would not read)."""
    say_error("serve", *error_of(exc))


def _number(low: int, high: int | None = None) -> Any:
    """An argparse type: a whole number from ``low`` (to ``high``), else a usage error."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(
                f"{text!r}: a whole number from {low}" + (f" to {high}" if high else ""))
        return value
    return parse


def register(sub: Any) -> None:
    p = sub.add_parser("serve", help="run the decision service (tracengent, AuthZEN)")
    p.add_argument("paths", nargs="*", help="policy files or directories")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default "
                   "127.0.0.1)")
    p.add_argument("--port", type=_number(0, 65535), default=8181,
                   help="port to listen on (default 8181)")
    p.add_argument("--workers", type=_number(1), default=1,
                   help="processes sharing the socket (default 1)")
    p.add_argument("--credentials", help="agent and admin credentials file (JSON)")
    p.add_argument("--keys", help="JWKS file with the signing keys of access and "
                   "delegation tokens (default: a fresh key per start)")
    p.add_argument("--hmac-key-file", help="secret for 'hash' redactions")
    p.add_argument("--issuer", default="policyengine",
                   help="iss of the access tokens (default policyengine)")
    p.add_argument("--prefix", action="append", default=[], metavar="WIRE=/PATH",
                   help="mount a wire under a path prefix: tracengent=/pdp, authzen=/az, "
                   "actguard=/ag, agent-ledger=/ledger, cycles=/cycles")
    p.add_argument("--max-body-bytes", type=int, default=1_048_576,
                   help="larger request bodies get 413 (default 1 MiB)")
    p.add_argument("--body-timeout", type=float, default=10.0,
                   help="seconds a request body may take to arrive (default 10)")
    p.add_argument("--watch-interval", type=float, default=1.0,
                   help="seconds between policy file checks; 0 turns watching off")
    p.add_argument("--no-access-log", action="store_true",
                   help="no JSON line per request on policyengine.server.access")
    p.add_argument("--http", default="service", choices=("service", "uvicorn"),
                   help="the HTTP/1.1 connection protocol: the service's own (default: "
                   "answers without a task or ASGI messages per request) or uvicorn's "
                   "httptools protocol over the ASGI application")
    p.add_argument("--log-level", default="info", type=str.lower,
                   choices=("critical", "error", "warning", "info", "debug", "trace"),
                   help="the server's log level (default info)")
    for flag, what in (("--budget-store", "budgets: memory: (default; per worker), "
                        "sqlite:///path, postgresql://..., redis://..."),
                       ("--approvals", "approvals: memory: (default; per worker), "
                        "postgresql://..., redis://..."),
                       ("--revocations", "token revocations: memory: (default; per "
                        "worker), postgresql://..., redis://...")):
        p.add_argument(flag, metavar="URL", help=f"shared state for {what}")
    p.add_argument("--decision-log", metavar="URL",
                   help="record every decision (docs/decision-log.md): a JSON Lines file "
                   "path, stdout:, or http(s)://collector; with several workers each "
                   "writes its own file (NAME-wPID.jsonl)")
    p.add_argument("--decision-log-overflow", default="block",
                   choices=("block", "spill", "deny", "drop"),
                   help="when the log's sink is slow or down (default: block)")
    p.add_argument("--decision-log-spill", metavar="PATH",
                   help="spill file (default: beside a file log)")
    p.add_argument("--decision-log-checkpoint", type=int, default=10_000, metavar="N",
                   help="records between signed checkpoints")
    p.add_argument("--hash-secret", action="store_true",
                   help="read a secret from stdin, print its hash for a credentials file")
    p.set_defaults(func=run)


def _prefixes(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        wire, sep, path = item.partition("=")
        if not sep or wire not in ("tracengent", "authzen", "actguard", "agent-ledger",
                                   "cycles") or not path.startswith("/"):
            raise ValueError(f"bad --prefix {item!r}: use WIRE=/path (tracengent, "
                             "authzen, actguard, agent-ledger, cycles)")
        out[wire] = path
    return out


def _decision_log(args: argparse.Namespace, keys: Any) -> Any:
    """The worker's decision log (``--decision-log``), or None."""
    url = args.decision_log
    if not url:
        return None
    from policyengine.audit import DecisionLog
    if args.workers > 1 and not url.startswith(("http://", "https://")) and url != "stdout:":
        # One chain per file: each worker process writes its own.
        base = url[len("file://"):] if url.startswith("file://") else url
        stem, dot, ext = base.rpartition(".")
        url = f"{stem}-w{os.getpid()}.{ext}" if dot and "/" not in ext else \
            f"{base}-w{os.getpid()}"
    return DecisionLog(url, overflow=args.decision_log_overflow,
                       spill_path=args.decision_log_spill,
                       checkpoint_every=args.decision_log_checkpoint, keys=keys)


def run(args: argparse.Namespace) -> int:
    from policyengine.server import hash_secret
    if args.hash_secret:
        secret = getpass.getpass("secret: ") if sys.stdin.isatty() else sys.stdin.readline()
        print(hash_secret(secret.rstrip("\r\n")))
        return 0
    if not args.paths:
        _usage("give at least one policy file or directory")
        return 2
    try:
        import uvicorn
    except ImportError:
        _usage("serve needs the server extra: pip install 'policyengine[server]'")
        return 2
    import policyengine as pe
    from policyengine.server import Credentials, CredentialsError, ServiceConfig, create_app
    from policyengine.server._app import note_early_sighup

    logging.basicConfig(level=args.log_level.upper(), format="%(message)s")
    try:
        keys = pe.KeySet.from_file(args.keys) if args.keys else pe.KeySet.generate()
        hmac_key = None
        if args.hmac_key_file:
            try:
                with open(args.hmac_key_file, "rb") as fh:
                    hmac_key = fh.read().strip()
            except OSError as exc:
                _usage(f"--hmac-key-file {args.hmac_key_file}: cannot read: "
                       f"{exc.strerror or exc}")
                return 2
        credentials = Credentials.from_file(args.credentials) if args.credentials else None
        # The policy is checked here, once, with in-memory stores: a worker opens its own
        # connections to shared stores after the fork (a socket must never be shared by
        # two processes).
        checked = pe.Engine.from_path(*args.paths, keys=keys, hmac_key=hmac_key)
    except pe.PolicyError as err:
        say(err.render(), file=sys.stderr)
        return 1
    except (CredentialsError, pe.PolicyEngineError, OSError) as exc:
        _failed(exc)
        return 1
    try:
        prefixes = _prefixes(args.prefix)
    except ValueError as exc:
        _usage(str(exc))
        return 2
    config = ServiceConfig(issuer=args.issuer, max_body_bytes=args.max_body_bytes,
                           body_timeout=args.body_timeout, prefixes=prefixes,
                           access_log=not args.no_access_log,
                           watch_interval=args.watch_interval or None)
    shared = {"budget_store": args.budget_store, "approvals": args.approvals,
              "revocations": args.revocations}

    def build() -> Any:
        engine = checked
        log = _decision_log(args, keys)  # made here: its threads do not survive a fork
        if log is not None:
            engine = pe.Engine.from_path(*args.paths, keys=keys, hmac_key=hmac_key,
                                         decision_log=log, **shared)
        elif any(v is not None for v in shared.values()):
            engine = pe.Engine.from_path(*args.paths, keys=keys, hmac_key=hmac_key,
                                         **shared)
        return create_app(engine, credentials=credentials, keys=keys, paths=args.paths,
                          config=config)

    uv_config: dict[str, Any] = dict(
        host=args.host, port=args.port, log_level=args.log_level, access_log=False,
        lifespan="on", timeout_graceful_shutdown=10, server_header=False)
    if args.http == "service":
        from policyengine.server._http import ServiceProtocol
        uv_config["http"] = ServiceProtocol
    if args.workers <= 1:
        signal.signal(signal.SIGHUP, note_early_sighup)
        try:
            app = build()
        except pe.PolicyEngineError as exc:
            _failed(exc)
            return 1
        uvicorn.run(app, **uv_config)
        return 0
    return _supervise(build, uv_config, args.workers)


def _listen_failed(host: str, port: int, exc: OSError) -> int:
    """One line for a socket the parent cannot bind (exit status 1)."""
    say_error("serve", "listen_failed",
              f"cannot listen on {host}:{port}: {exc.strerror or exc}")
    return 1


def _supervise(build: Any, uv_config: dict[str, Any], workers: int) -> int:
    import uvicorn

    from policyengine.server._app import note_early_sighup

    family = socket.AF_INET6 if ":" in uv_config["host"] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((uv_config["host"], uv_config["port"]))
        sock.listen(2048)
    except OSError as exc:  # in use, not an address of this host ...
        sock.close()
        return _listen_failed(uv_config["host"], uv_config["port"], exc)
    sock.set_inheritable(True)
    children: list[int] = []
    for _ in range(workers):
        pid = os.fork()
        if pid == 0:  # a worker: uvicorn on the shared socket, then exit
            code = 0
            try:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    signal.signal(sig, signal.SIG_DFL)
                signal.signal(signal.SIGHUP, note_early_sighup)
                server = uvicorn.Server(uvicorn.Config(build(), **uv_config))
                server.run(sockets=[sock])
            except BaseException:
                code = 1
            finally:
                os._exit(code)
        children.append(pid)
    sock.close()
    logging.getLogger("policyengine.server").info(
        "serving on %s:%s with %d workers", uv_config["host"], uv_config["port"], workers)

    def forward(signum: int, _frame: Any) -> None:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    status = 0
    for pid in children:
        while True:
            try:
                _, code = os.waitpid(pid, 0)
                break
            except InterruptedError:
                continue
        status = status or (1 if os.waitstatus_to_exitcode(code) not in (0, -15, -2) else 0)
    return status
