"""The `gateway` command: `serve`, `check-config`, `tunnel`, and the webhook and delivery tools."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import TYPE_CHECKING

from gateway.config import ConfigError, GatewayConfig, load_config
from gateway.redact import redact_url

if TYPE_CHECKING:
    from gateway.calls.record import CallRecord


def _load(path: str | None) -> GatewayConfig:
    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _serve(args: argparse.Namespace) -> int:
    config = _load(args.config)
    from gateway.app import create_app
    from gateway.config import with_dev_secrets
    from gateway.logs import configure_logging
    from gateway.serve import run

    redactor = configure_logging(fmt=config.log.format, level=config.log.level, secrets=config.secret_strings())
    try:
        config = with_dev_secrets(config)
        redactor.add(config.secret_strings())
        app = create_app(config)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    host = args.host or config.listen.host
    port = config.listen.port if args.port is None else args.port
    run(app, host=host, port=port, drain_seconds=config.shutdown.drain_seconds, read_timeout=config.limits.read_timeout_seconds,
        lean_media=config.listen.media_websocket == "picows")
    return 0


def _check_config(args: argparse.Namespace) -> int:
    config = _load(args.config)
    providers = [name for name in ("twilio", "vonage") if getattr(config.providers, name)]
    print("config OK")
    print(f"  listen: {config.listen.host}:{config.listen.port}")
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
    return 0


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
        print(f"note: public_url is {config.public_url or 'not set'}, so the gateway will not use this tunnel; "
              "set public_url: auto and it finds the tunnel's hostname by itself", file=sys.stderr)
    elif args.metrics not in looked_at and f"http://{args.metrics}" not in looked_at:
        print(f"note: the gateway looks for cloudflared at {', '.join(looked_at)} (tunnel.metrics), not at {args.metrics}",
              file=sys.stderr)
    else:
        print("the gateway (public_url: auto) finds the tunnel's hostname by itself: see GET /api/v1/tunnel", file=sys.stderr)
    return run_quick_tunnel(command, args.log_file or config.tunnel.log_file)


def _sample_call(run_id: str) -> "CallRecord":
    from datetime import timedelta

    from gateway.calls.record import CallRecord, utcnow
    from gateway.calls.states import CallState

    now = utcnow()
    return CallRecord(
        workflow_run_id=run_id, workflow_id="sample-workflow", user_id="sample-user", provider="twilio",
        provider_call_id="CA" + "0" * 32, state=CallState.COMPLETED, from_number="+15550100", to_number="+15550199",
        direction="outbound", started_at=now - timedelta(seconds=75), answered_at=now - timedelta(seconds=60),
        ended_at=now, duration=60, initial_context={"customer": "sample"}, gathered_context={"resolution": "sample"},
        created_at=now - timedelta(seconds=75), updated_at=now,
    )


async def _webhook_test(config: GatewayConfig, name: str, event_type: str | None, run_id: str | None) -> int:
    import json
    import time

    from gateway.calls.record import utcnow
    from gateway.events.envelope import Event, new_event_id
    from gateway.store import open_store_for
    from gateway.store.base import event_data
    from gateway.webhooks.clients import EndpointClients
    from gateway.webhooks.policy import map_response
    from gateway.webhooks.sender import RequestBuildError, build_request, send_attempt
    from gateway.webhooks.attempts import delivery_context

    subscription = next((s for s in config.webhooks if s.name == name), None)
    if subscription is None:
        print(f"no webhook named {name!r}; configured: {', '.join(s.name for s in config.webhooks) or 'none'}", file=sys.stderr)
        return 2
    call = None
    if run_id:
        store = open_store_for(config.store)
        await store.open()
        try:
            call = await store.get_call(run_id)
        finally:
            await store.close()
        if call is None:
            print(f"no call with workflow_run_id {run_id!r} in {redact_url(config.store)}", file=sys.stderr)
            return 2
    call = call or _sample_call("sample-run")
    kind = event_type or next((e for e in subscription.events if "*" not in e and "?" not in e), "call.ended")
    event = Event(type=kind, workflow_run_id=call.workflow_run_id, occurred_at=utcnow(), data=event_data(call))
    try:
        prepared = build_request(subscription, event.envelope(), delivery_context(event, call), config.secret_values(),
                                 message_id=new_event_id("msg"), now=time.time())
    except RequestBuildError as exc:
        print(f"request could not be built: {exc}", file=sys.stderr)
        return 1
    shown = prepared.redacted()
    print(f"> {shown['method']} {shown['url']}")
    for header, value in shown["headers"].items():
        print(f"> {header}: {value}")
    if shown["body"]:
        print(">")
        print(shown["body"])
    clients = EndpointClients()
    try:
        result = await send_attempt(clients, prepared, subscription)
    finally:
        await clients.aclose()
    print()
    if result.status is None:
        print(f"< no answer: {result.error}")
    else:
        print(f"< {result.status} in {result.latency_ms:.0f} ms")
        if result.response_text:
            print(result.response_text)
    print()
    print(f"verdict: {result.outcome.value} ({'success' if result.success else 'not a success'} by the rule {subscription.success.model_dump()})")
    if subscription.response_mapping:
        mapped = map_response(subscription.name, result.status, result.response_json, subscription.response_mapping, success=result.success)
        print("mapped into gathered_context:")
        print(json.dumps(mapped, indent=2, default=str))
    return 0 if result.success else 1


async def _deliveries(config: GatewayConfig, args: argparse.Namespace) -> int:
    import json
    from datetime import datetime, timezone

    from gateway.store import StoreError, open_store_for

    store = open_store_for(config.store)
    await store.open()
    now = datetime.now(timezone.utc)
    try:
        if args.action == "list":
            rows, _ = await store.list_deliveries(status=args.status, subscription=args.subscription, run_id=args.run, limit=args.limit)
            for row in rows:
                print(f"{row.id}  {row.status:<9} {row.subscription:<16} {row.event.type if row.event else '-':<28} "
                      f"run={row.workflow_run_id or '-'} attempts={row.attempts} last={row.last_status or row.last_error or '-'}")
            if not rows:
                print("no deliveries")
        elif args.action == "retry":
            delivery = await store.retry_delivery(args.id, now=now)
            if delivery is None:
                print(f"no delivery {args.id}", file=sys.stderr)
                return 2
            print(f"{delivery.id} is pending again; a running gateway sends it within {config.delivery.poll_seconds:g} s")
        else:
            subscription = next((s for s in config.webhooks if s.name == args.subscription), None)
            if subscription is None:
                print(f"no webhook named {args.subscription!r}", file=sys.stderr)
                return 2
            try:
                since = datetime.fromisoformat(args.since.replace("Z", "+00:00"))
                until = datetime.fromisoformat(args.until.replace("Z", "+00:00")) if args.until else now
            except ValueError as exc:
                print(f"--since/--until: {exc}", file=sys.stderr)
                return 2
            count = await store.replay_deliveries(subscription.name, since=since, until=until, now=now,
                                                  matches=subscription.matches, ordered=subscription.ordered)
            print(json.dumps({"subscription": subscription.name, "queued": count}))
    except StoreError as exc:
        print(f"store error: {exc}", file=sys.stderr)
        return 1
    finally:
        await store.close()
    return 0


def _simulate(args: argparse.Namespace) -> int:
    from gateway.config import with_dev_secrets
    from gateway.simulate import SimulationError, read_wav, report, simulate
    from gateway.audio import TWILIO_FORMAT, VONAGE_FORMAT

    config = with_dev_secrets(_load(args.config))
    base = args.url or f"http://127.0.0.1:{config.listen.port}"
    audio = read_wav(args.audio, TWILIO_FORMAT if args.provider == "twilio" else VONAGE_FORMAT) if args.audio else None
    try:
        result = asyncio.run(simulate(config, base, provider=args.provider, to=args.to, from_=args.from_,
                                      workflow_id=args.workflow, user_id=args.user, seconds=args.seconds, audio=audio))
    except (SimulationError, OSError) as exc:
        print(f"simulation failed: {exc}", file=sys.stderr)
        return 1
    print(report(result))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description="Telephony call-event gateway")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", help="YAML config file (default: $GATEWAY_CONFIG, else built-in defaults)")
    serve.add_argument("--host", help="listen address (overrides listen.host)")
    serve.add_argument("--port", type=int, help="listen port (overrides listen.port)")
    serve.set_defaults(func=_serve)
    check = commands.add_parser("check-config", help="validate the configuration and print a summary")
    check.add_argument("--config", help="YAML config file (default: $GATEWAY_CONFIG)")
    check.set_defaults(func=_check_config)
    tunnel = commands.add_parser("tunnel", help="start a cloudflared quick tunnel to this gateway (for public_url: auto)")
    tunnel.add_argument("--config", help="YAML config file (default: $GATEWAY_CONFIG)")
    tunnel.add_argument("--port", type=int, help="the gateway's local port (default: listen.port)")
    tunnel.add_argument("--metrics", default="127.0.0.1:20241", help="cloudflared's metrics address (default: 127.0.0.1:20241)")
    tunnel.add_argument("--log-file", help="also write cloudflared's log here (default: tunnel.log_file)")
    tunnel.add_argument("--dry-run", action="store_true", help="print the cloudflared command instead of running it")
    tunnel.set_defaults(func=_tunnel)

    sim = commands.add_parser("simulate", help="play Twilio or Vonage against a running gateway (no phone needed)")
    sim.add_argument("--provider", choices=["twilio", "vonage"], default="twilio")
    sim.add_argument("--audio", help="a 16-bit mono WAV file to speak (default: a built-in speech-like signal)")
    sim.add_argument("--seconds", type=float, default=3.0, help="length of the built-in signal")
    sim.add_argument("--to", default="+15550100")
    sim.add_argument("--from", dest="from_", default="+15550199")
    sim.add_argument("--workflow", default="sim-workflow")
    sim.add_argument("--user", default="sim-user")
    sim.add_argument("--url", help="the gateway's address (default: http://127.0.0.1:<listen.port>)")
    sim.add_argument("--config", help="the gateway's YAML config (its secrets sign the simulated requests)")
    sim.set_defaults(func=_simulate)

    webhooks = commands.add_parser("webhooks", help="outbound webhook tools")
    webhook_commands = webhooks.add_subparsers(dest="webhooks_command", required=True)
    test = webhook_commands.add_parser("test", help="render and send one webhook, show the request, answer and verdict")
    test.add_argument("name", help="the subscription's name")
    test.add_argument("--event", help="event type to send (default: the subscription's first)")
    test.add_argument("--run", help="use this stored call instead of a sample call")
    test.add_argument("--config", help="YAML config file (default: $GATEWAY_CONFIG)")
    test.set_defaults(func=lambda a: asyncio.run(_webhook_test(_load(a.config), a.name, a.event, a.run)))

    deliveries = commands.add_parser("deliveries", help="inspect, retry and replay webhook deliveries")
    delivery_commands = deliveries.add_subparsers(dest="action", required=True)
    listing = delivery_commands.add_parser("list", help="newest deliveries first")
    listing.add_argument("--status", choices=["pending", "succeeded", "failed", "dead"])
    listing.add_argument("--subscription")
    listing.add_argument("--run")
    listing.add_argument("--limit", type=int, default=50)
    retry = delivery_commands.add_parser("retry", help="send a delivery again, its schedule started afresh")
    retry.add_argument("id")
    replay = delivery_commands.add_parser("replay", help="queue a subscription's events of a time range again")
    replay.add_argument("--subscription", required=True)
    replay.add_argument("--since", required=True, help="RFC 3339 time, e.g. 2026-11-25T00:00:00Z")
    replay.add_argument("--until", help="RFC 3339 time (default: now)")
    for sub in (listing, retry, replay):
        sub.add_argument("--config", help="YAML config file (default: $GATEWAY_CONFIG)")
        sub.set_defaults(func=lambda a: asyncio.run(_deliveries(_load(a.config), a)))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
