"""What reaches the operator's terminal of text written by someone else: control characters
made visible.

Daemon names and fields from etcd, log lines, attribute values, docstrings and remote exception
messages are written by a daemon, its callers or whoever can write to etcd. A terminal acts on
control characters: ESC starts sequences that clear the screen, set the window title (OSC 0),
print hyperlinks (OSC 8) or, on some terminals, type an answer back into the input; ``\\r``
returns to the start of the line, so that what follows overwrites what came before — in
``malacodactl logs``, a line that looks like the monitor's own ``[monitor] ... ready``.
``journalctl`` and ``systemctl`` show such characters escaped; so does ``malacodactl``, unless
``--raw`` is given.

:func:`visible` is the one function every printing path of the CLI uses. It rewrites, as
Python's ``repr`` would write them inside a string:

- the C0 controls but tab (``\\x00``-``\\x1f``: ``\\r``, ``\\n`` by their names, the others as
  ``\\x1b``), DEL (``\\x7f``) and the C1 controls (``\\x80``-``\\x9f``; ``\\x9b`` is a one-byte
  CSI to some terminals);
- the bidirectional formatting characters (``\\u202e`` and its kin), which reorder what is
  shown ("Trojan Source");
- lone surrogates (``\\udc80``), which a terminal cannot be sent at all.

A tab is kept: it only moves the cursor forward to the next tab stop, over nothing, and hides or
forges nothing. A newline is kept where the text is a block of lines (a docstring, a
traceback, a multi-line value: ``newlines=True``), and made visible in one-line fields (a name,
a table cell, a log line, an error line). A backslash is not escaped: a log line that holds the
four characters ``\\x1b`` reads the same as one that held an ESC; only the second would have
acted on the terminal.

:func:`visible_json` does the same inside JSON text (``--json`` output written with
``ensure_ascii=False``), as ``\\u00XX`` escapes that keep the JSON valid.
"""

from __future__ import annotations

import re

#: What is made visible; tab (``\t``) is not, newline only where asked.
_CONTROLS = ("\x00-\x08\x0b-\x1f\x7f-\x9f"  # C0 but tab and newline, DEL, C1
             "\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"  # bidirectional formatting
             "\ud800-\udfff")  # lone surrogates
_LINE = re.compile(f"[{_CONTROLS}\n]")
_BLOCK = re.compile(f"[{_CONTROLS}]")
_NAMED = {"\n": "\\n", "\r": "\\r"}


def _escape(match: re.Match) -> str:
    char = match.group()
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def visible(text: str, newlines: bool = False) -> str:
    """``text`` with its control characters written out (see the module docstring); newlines
    kept when ``newlines`` is true."""
    pattern = _BLOCK if newlines else _LINE
    if pattern.search(text) is None:  # the common case: one scan, no copy
        return text
    return pattern.sub(_escape, text)


def visible_json(text: str) -> str:
    """JSON text with the control characters JSON leaves raw (DEL, C1, bidirectional
    formatting, lone surrogates) escaped as ``\\uXXXX``; still valid JSON, same value."""
    if _BLOCK.search(text) is None:
        return text
    return _BLOCK.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
