"""``python -m bot``: run Hypercord, or check its configuration.

    python -m bot                    run the bot (token from DISCORD_TOKEN or DISCORD_TOKEN_FILE)
    python -m bot --check-config     print the resolved settings (secrets redacted); exit 0 if valid
    python -m bot --healthcheck      exit 0 if the running bot reports itself healthy (Docker HEALTHCHECK)
    python -m bot --sync-global      also publish the slash commands globally at start (rate-limited by Discord)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys

from bot.config import TOKEN_ENV, TOKEN_FILE_ENV, ConfigError, Settings, load_settings
from bot.logsetup import setup_logging

NO_TOKEN_HELP = f"""\
Hypercord needs a Discord bot token and none was found.

  1. Open https://discord.com/developers/applications, create an application (or pick yours),
     open "Bot" and press "Reset Token"; copy the token.
  2. Give it to Hypercord through the environment, never through config.toml:
       export {TOKEN_ENV}='the-token'
     or put it in a file readable only by you and point to it:
       export {TOKEN_FILE_ENV}=/run/secrets/discord_token
  3. Run the bot again: make run   (or: python -m bot)
"""

log = logging.getLogger("hypercord")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bot", description="Hypercord: a Discord bot for Stable Diffusion "
                                     "with A1111 hypernetworks.")
    parser.add_argument("--config", help="path to config.toml (default: $HYPERCORD_CONFIG or ./config.toml)")
    parser.add_argument("--check-config", action="store_true", help="print the resolved settings and exit 0/1")
    parser.add_argument("--healthcheck", action="store_true",
                        help="exit 0 if the running bot reports itself healthy (for container health checks)")
    parser.add_argument("--sync-global", action="store_true",
                        help="publish slash commands globally at start (Discord limits command creation per day)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.healthcheck:
        from bot.health import check_health, health_path

        healthy, reason = check_health(health_path(settings.storage.database))
        print(reason)
        return 0 if healthy else 1
    if args.check_config:
        print(json.dumps(settings.redacted(), indent=2))
        return 0
    if not settings.token:
        print(NO_TOKEN_HELP, file=sys.stderr)
        return 2
    setup_logging(settings.logging.level, settings.logging.file, secrets=(settings.token.get(),))
    return asyncio.run(_run(settings, sync_global=args.sync_global))


async def _run(settings: Settings, *, sync_global: bool) -> int:
    # Imported here so --check-config and the no-token path stay instant.
    from bot.runner import run_bot

    return await run_bot(settings, sync_global=sync_global)


if __name__ == "__main__":
    sys.exit(main())
