"""The `gateway` command: `serve`, `check-config`, `tunnel`, `simulate`, and the operator's tools
(`calls`, `events tail`, `webhooks test|listen`, `deliveries`, `admin-key`).

Text for people by default, `--json` for programs; a mistake is one line on stderr and a non-zero
exit code, never a traceback; a closed pipe (`| head`) ends the command quietly.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from datetime import UTC

from gateway.commands.output import CommandError, emit, emit_json
from gateway.config import ConfigError, GatewayConfig, config_file, load_config
from gateway.dev_secrets import with_dev_secrets
from gateway.errors import GatewayError
from gateway.redact import redact_url


def _load(path: str | None) -> GatewayConfig:
    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _load_dev(path: str | None) -> GatewayConfig:
    """The configuration with the development secrets `gateway serve` generated filled in (read,
    never generated: a tool run before the gateway says to start the gateway first)."""
    config = _load(path)
    try:
        return with_dev_secrets(config, from_file=config_file(path) is not None, create=False, warn=False)
    except ConfigError as exc:
        raise CommandError(str(exc)) from None


def _await_dev_secrets(path: str | None, wait: float) -> GatewayConfig:
    """`_load_dev`, waiting up to `wait` seconds for a gateway just started (`make run &`) to
    write its development secrets."""
    import time

    deadline = time.monotonic() + wait
    while True:
        try:
            return _load_dev(path)
        except CommandError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.25)


def _serve(args: argparse.Namespace) -> int:
    config = _load(args.config)
    from gateway.app import create_app
    from gateway.logs import configure_logging
    from gateway.serve import run

    redactor = configure_logging(fmt=config.log.format, level=config.log.level, secrets=config.secret_strings())
    try:
        config = with_dev_secrets(config, from_file=config_file(args.config) is not None)
        redactor.add(config.secret_strings())
        app = create_app(config)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    host = args.host or config.listen.host
    port = config.listen.port if args.port is None else args.port
    from gateway.workers.count import resolve_workers

    workers = resolve_workers(config.workers if args.workers is None else args.workers)
    if workers > 1:
        from gateway.workers.supervisor import prepare_store, serve_workers

        if not prepare_store(config):
            return 1
        return serve_workers(config, host=host, port=port, workers=workers)
    run(
        app,
        host=host,
        port=port,
        drain_seconds=config.shutdown.drain_seconds,
        read_timeout=config.limits.read_timeout_seconds,
        lean_media=config.listen.media_websocket == "picows",
    )
    return 0


def _workers_flag(value: str) -> int | str:
    from gateway.workers.count import check_workers

    try:
        return check_workers(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _check_config(args: argparse.Namespace) -> int:
    config = _load(args.config)
    providers = [name for name in type(config.providers).model_fields if getattr(config.providers, name)]
    if args.json:
        emit_json(
            {
                "ok": True,
                "file": config_file(args.config),
                "listen": config.listen.model_dump(),
                "workers": config.workers,
                "public_url": config.public_url,
                "store": redact_url(config.store),
                "providers": providers,
                "agent": config.agent.url,
                "api_key_set": config.api_key is not None,
                "webhooks": [s.name for s in config.webhooks],
            }
        )
        return 0
    if config_file(args.config) is None:
        print(
            "no config file (--config or GATEWAY_CONFIG): the built-in defaults; gateway serve adds development "
            "secrets and test provider credentials"
        )
    print("config OK")
    print(f"  listen: {config.listen.host}:{config.listen.port}")
    if config.workers != 1:
        from gateway.workers.count import resolve_workers

        print(f"  workers: {config.workers} ({resolve_workers(config.workers)} processes)")
    print(f"  public_url: {config.public_url or '(from each request)'}")
    if config.public_url == "auto":
        from gateway.tunnel.cloudflared import DEFAULT_METRICS

        where = ", ".join(config.tunnel.metrics or DEFAULT_METRICS)
        if config.tunnel.log_file:
            where += f", then {config.tunnel.log_file}"
        print(f"  tunnel: cloudflared quick tunnel looked for at {where}")
    print(f"  store: {redact_url(config.store)}")
    print(f"  providers: {', '.join(providers) or 'none configured'}")
    print(f"  agent: {redact_url(config.agent.url)} ({config.agent.audio.encoding}/{config.agent.audio.sample_rate})")
    print(f"  api_key: {'set' if config.api_key else 'not set (development secret will be generated)'}")
    print(f"  webhooks: {len(config.webhooks)}")
    for warning in asyncio.run(_destination_warnings(config)):
        print(f"warning: {warning}")
    return 0


async def _destination_warnings(config: GatewayConfig) -> list[str]:
    """Webhook host names the SSRF guard would refuse if a request went out now (resolved here)."""
    from gateway.webhooks.ssrf import named_destination_problem

    problems = await asyncio.gather(*(named_destination_problem(s.url, s.allow_networks) for s in config.webhooks))
    return [
        f"webhooks[{index}] ({s.name}).url: {problem}"
        for index, (s, problem) in enumerate(zip(config.webhooks, problems, strict=True))
        if problem
    ]


def _tunnel(args: argparse.Namespace) -> int:
    """Start `cloudflared tunnel --url http://localhost:PORT --metrics ADDR` in the foreground."""
    import shlex

    from gateway.tunnel.cloudflared import DEFAULT_METRICS
    from gateway.tunnel.launcher import INSTALL_HINT, find_cloudflared, quick_tunnel_command, run_quick_tunnel

    config = _load(args.config)
    port = config.listen.port if args.port is None else args.port
    binary = find_cloudflared()
    command = quick_tunnel_command(binary or "cloudflared", port, args.metrics)
    if args.dry_run:
        print(shlex.join(command))
        return 0
    if binary is None:
        print(INSTALL_HINT, file=sys.stderr, end="")
        return 127
    looked_at = config.tunnel.metrics or list(DEFAULT_METRICS)
    print(f"starting a cloudflared quick tunnel to http://localhost:{port}: {shlex.join(command)}", file=sys.stderr)
    if config.public_url != "auto":
        print(
            f"note: public_url is {config.public_url or 'not set'}, so the gateway will not use this tunnel; "
            "set public_url: auto and it finds the tunnel's hostname by itself",
            file=sys.stderr,
        )
    elif args.metrics not in looked_at and f"http://{args.metrics}" not in looked_at:
        print(
            f"note: the gateway looks for cloudflared at {', '.join(looked_at)} (tunnel.metrics), not at {args.metrics}",
            file=sys.stderr,
        )
    else:
        print(
            "the gateway (public_url: auto) finds the tunnel's hostname by itself: see GET /api/v1/tunnel",
            file=sys.stderr,
        )
    return run_quick_tunnel(command, args.log_file or config.tunnel.log_file)


async def _deliveries(config: GatewayConfig, args: argparse.Namespace) -> int:
    from datetime import datetime

    from gateway.commands.inspect import delivery_line
    from gateway.store import StoreError, open_store_for

    store = open_store_for(config.store)
    await store.open()
    now = datetime.now(UTC)
    try:
        if args.action == "list":
            rows, cursor = await store.list_deliveries(
                status=args.status, subscription=args.subscription, run_id=args.run, limit=args.limit
            )
            if args.json:
                emit_json({"deliveries": [row.to_dict() for row in rows], "next_cursor": cursor})
                return 0
            for row in rows:
                emit(delivery_line(row.to_dict()))
            if not rows:
                emit("no deliveries")
        elif args.action == "retry":
            delivery = await store.retry_delivery(args.id, now=now)
            if delivery is None:
                raise CommandError(f"no delivery {args.id}")
            if args.json:
                emit_json(delivery.to_dict())
            else:
                emit(
                    f"{delivery.id} is pending again; a running gateway sends it within {config.delivery.poll_seconds:g} s"
                )
        else:
            subscription = next((s for s in config.webhooks if s.name == args.subscription), None)
            if subscription is None:
                raise CommandError(
                    f"no webhook named {args.subscription!r}; configured: "
                    f"{', '.join(s.name for s in config.webhooks) or 'none'}"
                )
            try:
                since = datetime.fromisoformat(args.since.replace("Z", "+00:00"))
                until = datetime.fromisoformat(args.until.replace("Z", "+00:00")) if args.until else now
            except ValueError as exc:
                raise CommandError(f"--since/--until: {exc}") from None
            count = await store.replay_deliveries(
                subscription.name,
                since=since,
                until=until,
                now=now,
                matches=subscription.matches,
                ordered=subscription.ordered,
            )
            if args.json:
                emit_json({"subscription": subscription.name, "queued": count})
            else:
                emit(
                    f"queued {count} {'delivery' if count == 1 else 'deliveries'} to {subscription.name}: every event "
                    f"of the range it matches, sent to it before or not; a running gateway sends them within "
                    f"{config.delivery.poll_seconds:g} s"
                )
    except StoreError as exc:
        raise CommandError(f"store error: {exc}", 1) from None
    finally:
        await store.close()
    return 0


def _simulate(args: argparse.Namespace) -> int:
    import json

    from gateway.simulate import CallPlan, Outcome, SimulationError, provider_format, report, simulate
    from gateway.simulate_audio import AudioFileError, read_wav, write_wav

    config = _await_dev_secrets(args.config, args.wait)
    base = args.url or f"http://127.0.0.1:{config.listen.port}"
    try:
        context = json.loads(args.initial_context) if args.initial_context else {}
    except ValueError as exc:
        raise CommandError(f"--initial-context is not JSON: {exc}") from None
    if not isinstance(context, dict):
        raise CommandError('--initial-context must be a JSON object, e.g. \'{"tenant": "acme"}\'')
    if args.seconds <= 0 or args.seconds > 600:
        raise CommandError("--seconds must be more than 0 and at most 600")
    fmt = provider_format(args.provider)
    try:
        audio = read_wav(args.audio, fmt) if args.audio else None
        plan = CallPlan(
            provider=args.provider,
            to=args.to,
            from_=args.from_,
            workflow_id=args.workflow,
            user_id=args.user,
            seconds=args.seconds,
            audio=audio,
            inbound=args.inbound,
            outcome=Outcome(args.outcome),
            initial_context=context,
        )
        result = asyncio.run(simulate(config, base, plan, wait=args.wait))
        if args.save_agent_audio:
            saved = write_wav(args.save_agent_audio, bytes(result.agent_audio), fmt)
    except (AudioFileError, SimulationError) as exc:
        raise CommandError(f"simulation failed: {exc}", 1) from None
    if args.json:
        emit_json(
            {
                "workflow_run_id": result.run_id,
                "frames_sent": result.frames_sent,
                "frames_received": result.frames_received,
                "call": result.call,
                "deliveries": result.deliveries,
            }
        )
        return 0
    emit(report(result))
    if args.save_agent_audio:
        emit(f"the agent's audio ({saved:.1f} s, {fmt.sample_rate} Hz) is in {args.save_agent_audio}")
    return 0


def _calls(args: argparse.Namespace) -> int:
    from gateway.commands.inspect import calls_list, calls_show

    config = _load(args.config)
    if args.action == "list":
        return asyncio.run(calls_list(config, state=args.state, limit=args.limit, as_json=args.json))
    return asyncio.run(calls_show(config, args.run_id, as_json=args.json))


def _events_tail(args: argparse.Namespace) -> int:
    from gateway.commands.inspect import events_tail

    return asyncio.run(
        events_tail(_load(args.config), run_id=args.run, last=args.last, as_json=args.json, poll=args.poll)
    )


def _webhooks_test(args: argparse.Namespace) -> int:
    from gateway.commands.webhook_test import webhook_test

    return asyncio.run(webhook_test(_load(args.config), args.name, args.event, args.run, as_json=args.json))


def _webhooks_listen(args: argparse.Namespace) -> int:
    from gateway.commands.listen import WebhookListener, listen

    try:
        listener = WebhookListener(args.secret, status=args.status, as_json=args.json)
    except ValueError as exc:
        raise CommandError(f"--secret: {exc}") from None
    return listen(args.host, args.port, listener)


def _admin_key(args: argparse.Namespace) -> int:
    from gateway.dev_secrets import dev_secrets_path

    config = _load(args.config)
    source = "the configuration"
    if config.api_key is None:
        config = _load_dev(args.config)
        source = f"the development secrets in {dev_secrets_path(config)}"
    key = config.api_key.get_secret_value() if config.api_key else ""
    if args.json:
        emit_json({"api_key": key, "source": source})
    else:
        emit(key)
        if sys.stdout.isatty():
            print(f"(from {source}; send it as Authorization: Bearer <key>)", file=sys.stderr)
    return 0


def _json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--json", action="store_true", help="print JSON (one document, or one line per item of a stream)"
    )


def _config_flag(parser: argparse.ArgumentParser, help: str = "YAML config file (default: $GATEWAY_CONFIG)") -> None:
    parser.add_argument("--config", help=help)


def _tool(parser: argparse.ArgumentParser, func: object) -> None:
    """An operator's command: `--config`, `--json`, and what it runs."""
    _config_flag(parser)
    _json_flag(parser)
    parser.set_defaults(func=func)


def build_parser() -> argparse.ArgumentParser:
    from gateway.simulate import Outcome

    parser = argparse.ArgumentParser(prog="gateway", description="Telephony call-event gateway")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the gateway")
    _config_flag(serve, "YAML config file (default: $GATEWAY_CONFIG, else built-in defaults)")
    serve.add_argument("--host", help="listen address (overrides listen.host)")
    serve.add_argument("--port", type=int, help="listen port (overrides listen.port)")
    serve.add_argument(
        "--workers",
        type=_workers_flag,
        help="worker processes on the one port: a number or auto, one per core (overrides workers; default 1)",
    )
    serve.set_defaults(func=_serve)
    check = commands.add_parser("check-config", help="validate the configuration and print a summary")
    _tool(check, _check_config)
    tunnel = commands.add_parser(
        "tunnel", help="start a cloudflared quick tunnel to this gateway (for public_url: auto)"
    )
    _config_flag(tunnel)
    tunnel.add_argument("--port", type=int, help="the gateway's local port (default: listen.port)")
    tunnel.add_argument(
        "--metrics", default="127.0.0.1:20241", help="cloudflared's metrics address (default: 127.0.0.1:20241)"
    )
    tunnel.add_argument("--log-file", help="also write cloudflared's log here (default: tunnel.log_file)")
    tunnel.add_argument("--dry-run", action="store_true", help="print the cloudflared command instead of running it")
    tunnel.set_defaults(func=_tunnel)

    sim = commands.add_parser(
        "simulate", help="play Twilio, Vonage, Telnyx or Plivo against a running gateway (no phone needed)"
    )
    sim.add_argument("--provider", choices=["twilio", "vonage", "telnyx", "plivo"], default="twilio")
    sim.add_argument(
        "--audio", help="a PCM WAV file to speak, any rate and channels (default: a built-in speech-like tone)"
    )
    sim.add_argument("--seconds", type=float, default=3.0, help="length of the built-in tone (default: 3)")
    sim.add_argument("--save-agent-audio", metavar="WAV", help="write what the agent said to this WAV file")
    sim.add_argument(
        "--inbound",
        action="store_true",
        help="call a number: /inbound/WORKFLOW/USER (the gateway mints the run id), callbacks to /status-callback/PROVIDER",
    )
    sim.add_argument(
        "--outcome",
        choices=[o.value for o in Outcome],
        default="completed",
        help="how the call ends (busy, no-answer and failed are never answered)",
    )
    sim.add_argument(
        "--initial-context",
        metavar="JSON",
        help="the run's initial_context, written before the call as "
        "POST /api/v1/calls would (outbound calls; needs the gateway's store)",
    )
    sim.add_argument("--to", default="+15550100")
    sim.add_argument("--from", dest="from_", default="+15550199")
    sim.add_argument("--workflow", default="sim-workflow", help="the WORKFLOW id in the URLs (default: sim-workflow)")
    sim.add_argument("--user", default="sim-user", help="the USER id in the URLs (default: sim-user)")
    sim.add_argument("--url", help="the gateway's address (default: http://127.0.0.1:<listen.port>)")
    sim.add_argument(
        "--wait", type=float, default=10.0, help="seconds to wait for the gateway to be ready (default: 10)"
    )
    _config_flag(
        sim,
        "the gateway's YAML config (its secrets sign the simulated requests; default: $GATEWAY_CONFIG, "
        "else the development secrets gateway serve wrote under ./data)",
    )
    _json_flag(sim)
    sim.set_defaults(func=_simulate)

    calls = commands.add_parser("calls", help="the calls in the store: list them, show one with its timeline")
    call_commands = calls.add_subparsers(dest="action", required=True)
    call_list = call_commands.add_parser("list", help="newest calls first")
    call_list.add_argument("--state", help="only calls in this state (e.g. answered, completed)")
    call_list.add_argument("--limit", type=int, default=50)
    call_show = call_commands.add_parser("show", help="one call: its record, timeline and deliveries")
    call_show.add_argument("run_id", metavar="RUN", help="the workflow_run_id")
    for sub in (call_list, call_show):
        _tool(sub, _calls)

    events = commands.add_parser("events", help="follow events and webhook deliveries live")
    event_commands = events.add_subparsers(dest="action", required=True)
    tail = event_commands.add_parser("tail", help="print new events and delivery changes as they happen (Ctrl-C stops)")
    tail.add_argument("--run", help="only this call's events and deliveries")
    tail.add_argument("--last", type=int, default=0, help="start with the last N events (default: only new ones)")
    tail.add_argument("--poll", type=float, default=0.5, help="seconds between looks (default: 0.5)")
    _tool(tail, _events_tail)

    webhooks = commands.add_parser("webhooks", help="outbound webhook tools")
    webhook_commands = webhooks.add_subparsers(dest="webhooks_command", required=True)
    test = webhook_commands.add_parser("test", help="render and send one webhook, show the request, answer and verdict")
    test.add_argument("name", help="the subscription's name")
    test.add_argument("--event", help="event type to send (default: the subscription's first)")
    test.add_argument("--run", help="use this stored call instead of a sample call")
    _tool(test, _webhooks_test)
    receiver = webhook_commands.add_parser(
        "listen", help="a local receiver that verifies signatures and prints what arrives"
    )
    receiver.add_argument("--port", type=int, default=9000, help="default: 9000")
    receiver.add_argument("--host", default="127.0.0.1", help="default: 127.0.0.1")
    receiver.add_argument(
        "--secret", help="the subscription's whsec_... signing secret (default: signatures not checked)"
    )
    receiver.add_argument("--status", type=int, default=204, help="the answer to a verified request (default: 204)")
    _json_flag(receiver)
    receiver.set_defaults(func=_webhooks_listen)

    deliveries = commands.add_parser("deliveries", help="inspect, retry and replay webhook deliveries")
    delivery_commands = deliveries.add_subparsers(dest="action", required=True)
    listing = delivery_commands.add_parser("list", help="newest deliveries first")
    listing.add_argument("--status", choices=["pending", "succeeded", "failed", "dead"])
    listing.add_argument("--subscription")
    listing.add_argument("--run")
    listing.add_argument("--limit", type=int, default=50)
    retry = delivery_commands.add_parser("retry", help="send a delivery again, its schedule started afresh")
    retry.add_argument("id")
    replay = delivery_commands.add_parser(
        "replay", help="queue every event of a time range the subscription matches (sent before or not) again"
    )
    replay.add_argument("--subscription", required=True)
    replay.add_argument("--since", required=True, help="RFC 3339 time, e.g. 2026-11-25T00:00:00Z")
    replay.add_argument("--until", help="RFC 3339 time (default: now)")
    for sub in (listing, retry, replay):
        _tool(sub, lambda a: asyncio.run(_deliveries(_load(a.config), a)))

    admin_key = commands.add_parser(
        "admin-key", help="print the admin API key (the configured one, or the development one)"
    )
    _tool(admin_key, _admin_key)
    return parser


def _quiet_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush cannot fail on a closed pipe."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)  # every subcommand's handler answers an exit code
        return code
    except CommandError as exc:
        print(f"gateway {args.command}: {exc}", file=sys.stderr)
        return exc.code
    except GatewayError as exc:  # one the command did not word itself: its message, not a traceback
        print(f"gateway {args.command}: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `gateway deliveries list | head`: the reader has gone, as with SIGPIPE
        _quiet_stdout()
        return 0
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
