"""``python -m meterguard``: the same CLI as the ``meterguard`` command."""

from __future__ import annotations

from .cli import main

main()
