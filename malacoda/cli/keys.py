"""``malacodactl keys``: this user's CURVE key pairs and the keys it authorizes.
"""

from __future__ import annotations

from typing import Optional

import click

from malacoda.cli.values import KeyArgs
from malacoda.security import Keys
from malacoda.supervisor import supervise as supervise

# ---------------------------------------------------------------------- keys


@click.group()
def keys() -> None:
    """CURVE keys for direct TCP: this host's server key, your client key, the allow-list."""


@keys.command(name="init")
def keys_init() -> None:
    """Make the server and client key pairs that do not exist yet (files 0600); print them."""
    store = Keys()
    pairs = store.init()
    click.echo(f"server key  {pairs['server'].public.decode()}")
    click.echo(f"client key  {pairs['client'].public.decode()}")
    click.echo(f"folder      {store.folder}")


@keys.command(name="show")
def keys_show() -> None:
    """Print the public keys of this host (server), of you (client) and the authorized ones."""
    store = Keys()
    for role in ("server", "client"):
        pair = store.pair(role)
        click.echo(f"{role} key  {pair.public.decode() if pair else '- (malacodactl keys init)'}")
    authorized = store.authorized()
    click.echo(f"authorized  {len(authorized)}")
    for label, key in authorized.items():
        click.echo(f"  {label}  {key.decode()}")


@keys.command(name="authorize", cls=KeyArgs)
@click.argument("public_key")
@click.option("--name", "label", metavar="NAME", help="A name for the key (default: its digest).")
def keys_authorize(public_key: str, label: Optional[str]) -> None:
    """Allow the client PUBLIC_KEY (40 z85 characters, or a .key file) to call CURVE daemons."""
    path = Keys().authorize(public_key, label)
    click.echo(f"authorized {path.stem} ({path})")


@keys.command(name="revoke", cls=KeyArgs)
@click.argument("key_or_name")
def keys_revoke(key_or_name: str) -> None:
    """Remove a client key (the key itself, or its name) from the allow-list."""
    path = Keys().revoke(key_or_name)
    click.echo(f"revoked {path.stem}")
