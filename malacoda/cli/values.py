"""Command-line arguments that may start with '-': ``call d add -5``, ``keys revoke -Xh…``.

click reads any word that starts with '-' as an option (or a bundle of one-letter options:
``-Xh…`` holds ``-h``, and would print the help). :class:`ValueArgs` sorts the words itself
before click sees them: the command's own options with their values first, then ``--``, then
every argument, so that click never reads an argument as an option.
"""

from __future__ import annotations

import difflib
import re
from typing import Dict, List

import click

NUMBER = re.compile(r"-\.?\d")  # -5, -.5, -1e3, -2j: a negative number literal
Z85 = frozenset("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#")


class ValueArgs(click.Command):
    """A command whose arguments are values, a negative number or a bare ``-`` among them.

    Any other unknown word that starts with '-' is a usage error, as in any click command.
    """

    def is_value(self, word: str) -> bool:
        """True if ``word``, which starts with '-', is an argument rather than an option."""
        return word == "-" or NUMBER.match(word) is not None

    def parse_args(self, ctx: click.Context, args: List[str]) -> List[str]:
        if ctx.resilient_parsing:  # shell completion: click parses leniently itself
            return super().parse_args(ctx, args)
        options: Dict[str, click.Option] = {
            name: param for param in self.get_params(ctx) if isinstance(param, click.Option)
            for name in (*param.opts, *param.secondary_opts)}
        given: List[str] = []
        values: List[str] = []
        words = iter(args)
        for word in words:
            if word == "--":
                values.extend(words)
                break
            if not word.startswith("-") or self.is_value(word):
                values.append(word)
                continue
            name, has_value, _ = word.partition("=")
            option = options.get(name)
            if option is None:
                raise click.NoSuchOption(
                    name, possibilities=difflib.get_close_matches(name, options), ctx=ctx,
                    message=None if name.startswith("--") else
                    f"No such option: {name} (a value that starts with '-' goes after '--')")
            given.append(word)
            if not has_value and not option.is_flag and not option.count:
                for _ in range(max(option.nargs, 1)):
                    value = next(words, None)
                    if value is None:
                        raise click.BadOptionUsage(
                            name, f"Option '{name}' requires an argument.", ctx=ctx)
                    given.append(value)
        return super().parse_args(ctx, [*given, "--", *values])


class KeyArgs(ValueArgs):
    """A command whose argument may be a CURVE public key: 40 z85 characters, '-' among them."""

    def is_value(self, word: str) -> bool:
        return len(word) == 40 and Z85.issuperset(word)
