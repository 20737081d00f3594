"""The `gateway` command: `serve` and `check-config`."""

from __future__ import annotations

import argparse
import logging
import sys

from gateway.config import ConfigError, GatewayConfig, load_config


def _load(path: str | None) -> GatewayConfig:
    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from gateway.app import create_app

    config = _load(args.config)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        app = create_app(config)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    host = args.host or config.listen.host
    port = config.listen.port if args.port is None else args.port
    uvicorn.run(app, host=host, port=port, log_level="info", proxy_headers=False, server_header=False,
                ws_max_size=1 << 20, lifespan="on")
    return 0


def _check_config(args: argparse.Namespace) -> int:
    config = _load(args.config)
    providers = [name for name in ("twilio", "vonage") if getattr(config.providers, name)]
    print("config OK")
    print(f"  listen: {config.listen.host}:{config.listen.port}")
    print(f"  public_url: {config.public_url or '(from each request)'}")
    print(f"  store: {config.store}")
    print(f"  providers: {', '.join(providers) or 'none configured'}")
    print(f"  agent: {config.agent.url} ({config.agent.audio.encoding}/{config.agent.audio.sample_rate})")
    print(f"  api_key: {'set' if config.api_key else 'not set (development secret will be generated)'}")
    print(f"  webhooks: {len(config.webhooks)}")
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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
