"""``sermas-bus`` / ``python -m sermas_bus``: the command line.

Commands: pub, sub, topics, token, bus, demo, bench.  Connection settings come
from flags or the environment: SERMAS_URL, SERMAS_APP_ID, SERMAS_CLIENT_ID,
SERMAS_CLIENT_SECRET, SERMAS_TOKEN, SERMAS_MQTT_URL.

Exit codes: 0 success, 1 failure (e.g. nothing received before --timeout),
2 bad usage or configuration, 3 authentication refused, 4 broker or API unreachable.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import datetime, timezone
from typing import Any, Dict, List, Optional

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_AUTH, EXIT_UNREACHABLE = 0, 1, 2, 3, 4


class UsageError(Exception):
    """Bad flags or configuration: exit code 2."""


def _params(pairs: List[str]) -> Dict[str, str]:
    out = {}
    for p in pairs or []:
        if "=" not in p:
            raise UsageError(f"--param expects name=value, got {p!r}")
        k, v = p.split("=", 1)
        out[k] = v
    return out


def _connection_args(ap: argparse.ArgumentParser) -> None:
    env = os.environ.get
    g = ap.add_argument_group("connection (flags override SERMAS_* environment variables)")
    g.add_argument("--url", default=env("SERMAS_URL", "http://localhost:8080"), help="API base URL [SERMAS_URL]")
    g.add_argument("--app-id", default=env("SERMAS_APP_ID"), help="application id [SERMAS_APP_ID]")
    g.add_argument("--client-id", default=env("SERMAS_CLIENT_ID"), help="client id [SERMAS_CLIENT_ID]")
    g.add_argument("--client-secret", default=env("SERMAS_CLIENT_SECRET"),
                   help="client secret [SERMAS_CLIENT_SECRET]")
    g.add_argument("--token", default=env("SERMAS_TOKEN"), help="access token [SERMAS_TOKEN]")
    g.add_argument("--mqtt-url", default=env("SERMAS_MQTT_URL"),
                   help="broker URL (default: derived from --url) [SERMAS_MQTT_URL]")


def _bus(args: argparse.Namespace, **kw: Any) -> Any:
    from .sermas import SermasClient
    if not args.app_id:
        raise UsageError("an app id is needed: --app-id or SERMAS_APP_ID")
    if args.client_id and not args.client_secret and not args.token:
        raise UsageError("--client-id needs --client-secret (or SERMAS_CLIENT_SECRET)")
    return SermasClient(args.url, app_id=args.app_id, client_id=args.client_id,
                        client_secret=args.client_secret, token=args.token, mqtt_url=args.mqtt_url, **kw)


def _payload(args: argparse.Namespace) -> Any:
    if args.file:
        with open(args.file, "rb") as f:
            return f.read()
    if args.payload is None:
        data = sys.stdin.buffer.read() if not sys.stdin.isatty() else b""
    else:
        data = args.payload.encode("utf-8")
    if args.raw:
        return data
    try:
        return json.loads(data) if data else None
    except ValueError:
        raise UsageError("the payload is not JSON; pass --raw to send it as bytes") from None


def cmd_pub(args: argparse.Namespace) -> int:
    payload = _payload(args)
    with _bus(args) as bus:
        for _ in range(args.repeat):
            info = bus.publish(args.target, payload, qos=args.qos, retain=args.retain, **_params(args.param))
        info.wait_for_publish(args.timeout)
        print(f"published to {bus.topic(args.target, payload, **_params(args.param))} (mid {info.mid})",
              file=sys.stderr)
    return EXIT_OK


def cmd_sub(args: argparse.Namespace) -> int:
    from . import json as sbjson
    count = 0
    with _bus(args) as bus:
        events = bus.events(args.target, timeout=args.timeout, max_events=args.count,
                            qos=args.qos, share=args.share, **_params(args.param))
        for event, msg in events:
            count += 1
            if args.raw:
                sys.stdout.buffer.write(msg.raw + b"\n")
            else:
                line = {"topic": msg.topic, "name": msg.name, "params": msg.params, "qos": msg.qos,
                        "retain": msg.retain,
                        "event": event if msg.is_json else msg.raw.decode("utf-8", "backslashreplace")}
                sys.stdout.buffer.write(sbjson.dumps(line) + b"\n")
            sys.stdout.flush()
    if args.count is not None and count < args.count:
        print(f"received {count} of {args.count} events before the {args.timeout} s time-out", file=sys.stderr)
        return EXIT_FAIL
    return EXIT_OK


def cmd_topics(args: argparse.Namespace) -> int:
    from . import topics
    if args.resolve:
        m = topics.match(args.resolve)
        if m is None:
            print(f"{args.resolve}: no SERMAS topic matches", file=sys.stderr)
            return EXIT_FAIL
        print(json.dumps({"topic": args.resolve, "name": m[0], "params": m[1]}))
        return EXIT_OK
    if args.render:
        print(topics.render(args.render, _params(args.param), None, defaults=None, subscribe=args.subscribe))
        return EXIT_OK
    for name in topics.names():
        print(f"{name:40s} {topics.template(name)}")
    return EXIT_OK


def cmd_token(args: argparse.Namespace) -> int:
    from .auth import ClientCredentials, Token
    if args.token:
        token = Token.from_string(args.token)
    else:
        if not (args.app_id and args.client_id and args.client_secret):
            raise UsageError("token needs --app-id, --client-id and --client-secret (or SERMAS_TOKEN)")
        token = ClientCredentials(args.url, args.app_id, args.client_id, args.client_secret).fetch()
    left = token.seconds_left()
    exp = "unknown" if token.expires_at is None else \
        datetime.fromtimestamp(token.expires_at, timezone.utc).isoformat(timespec="seconds")
    out: Dict[str, Any] = {"claims": token.claims, "expires": exp,
                           "expires_in_s": None if left is None else round(left, 1),
                           "refreshable": token.refresh_token is not None}
    if args.show_token:
        out["access_token"] = token.access_token
    print(json.dumps(out, indent=2, sort_keys=True))
    return EXIT_OK


def cmd_bus(args: argparse.Namespace) -> int:
    from .testing import LocalBus
    apps = {args.app_id or "demo": {"clients": {args.client_id or "demo-client": args.client_secret or "demo-secret"}}}
    with LocalBus(apps=apps, token_ttl=args.token_ttl) as bus:
        app = next(iter(apps))
        client, secret = next(iter(apps[app]["clients"].items()))
        print(f"SERMAS local bus running (Ctrl-C to stop)\n"
              f"  SERMAS_URL={bus.api_url}\n  SERMAS_MQTT_URL={bus.mqtt_url}\n"
              f"  SERMAS_APP_ID={app}\n  SERMAS_CLIENT_ID={client}\n  SERMAS_CLIENT_SECRET={secret}", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            print("stopping", file=sys.stderr)
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import main as demo_main
    return demo_main(duration=args.duration)


def cmd_bench(args: argparse.Namespace) -> int:
    from .quickbench import main as bench_main
    return bench_main(count=args.count)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="sermas-bus", description="SERMAS event bus client.",
                                 epilog="Exit codes: 0 ok, 1 failure, 2 usage, 3 auth refused, 4 unreachable.")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("pub", help="publish an event")
    p.add_argument("target", help="topic name (dialogue.messages), template or topic")
    p.add_argument("payload", nargs="?", help="JSON payload (default: stdin); with --raw, bytes")
    p.add_argument("--file", help="read the payload from a file (sent raw)")
    p.add_argument("--raw", action="store_true", help="send the payload as bytes, not JSON")
    p.add_argument("--param", "-p", action="append", metavar="NAME=VALUE", help="topic parameter")
    p.add_argument("--qos", type=int, default=1, choices=(0, 1, 2))
    p.add_argument("--retain", action="store_true")
    p.add_argument("--repeat", type=int, default=1, help="publish this many times")
    p.add_argument("--timeout", type=float, default=10.0)
    _connection_args(p)
    p.set_defaults(func=cmd_pub)

    p = sub.add_parser("sub", help="print events as JSON lines")
    p.add_argument("target", help="topic name, template or MQTT filter")
    p.add_argument("--param", "-p", action="append", metavar="NAME=VALUE", help="topic parameter")
    p.add_argument("--raw", action="store_true", help="print raw payloads")
    p.add_argument("--count", type=int, help="stop after this many events")
    p.add_argument("--timeout", type=float, help="stop after this many seconds without an event")
    p.add_argument("--qos", type=int, default=1, choices=(0, 1, 2))
    p.add_argument("--share", help="join a shared-subscription group")
    _connection_args(p)
    p.set_defaults(func=cmd_sub)

    p = sub.add_parser("topics", help="list the topic table, resolve or render a topic")
    p.add_argument("--resolve", metavar="TOPIC", help="the name and params of a concrete topic")
    p.add_argument("--render", metavar="NAME", help="the topic for a name and --param values")
    p.add_argument("--param", "-p", action="append", metavar="NAME=VALUE")
    p.add_argument("--subscribe", action="store_true", help="with --render: unfilled params become +")
    p.set_defaults(func=cmd_topics)

    p = sub.add_parser("token", help="fetch a token and print its claims and expiry")
    p.add_argument("--show-token", action="store_true", help="also print the token itself")
    _connection_args(p)
    p.set_defaults(func=cmd_token)

    p = sub.add_parser("bus", help="run a local SERMAS bus (broker + token endpoint) in the foreground")
    p.add_argument("--token-ttl", type=float, default=300.0)
    _connection_args(p)
    p.set_defaults(func=cmd_bus)

    p = sub.add_parser("demo", help="the SERMAS docs' scenario, on a local bus unless SERMAS_URL is set")
    p.add_argument("--duration", type=float, default=6.0, help="seconds of event traffic")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("bench", help="a quick benchmark on a local broker (see bench/ for the full one)")
    p.add_argument("--count", type=int, default=50000)
    p.set_defaults(func=cmd_bench)
    return ap


def main(argv: Optional[List[str]] = None) -> int:
    from .auth import AuthError, AuthRejected, AuthServerError, AuthUnreachable
    from .errors import ConnectError, NotAuthorizedError, SermasBusError
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UsageError as exc:
        print(f"sermas-bus: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (AuthRejected, NotAuthorizedError) as exc:
        print(f"sermas-bus: {exc}", file=sys.stderr)
        return EXIT_AUTH
    except (AuthUnreachable, AuthServerError, ConnectError) as exc:
        print(f"sermas-bus: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except (AuthError, SermasBusError, ValueError) as exc:
        print(f"sermas-bus: {exc}", file=sys.stderr)
        return EXIT_FAIL
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:                 # e.g. `sermas-bus topics | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
