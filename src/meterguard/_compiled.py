"""What the optional mypyc build (scripts/compile.py) asks of the modules it compiles.

``mypyc_attr`` is mypy_extensions' (mypy's own dependency, installed with the dev extras); where
it is not installed nothing is compiled, and the decorator does nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mypy_extensions import mypyc_attr as mypyc_attr
else:
    try:
        from mypy_extensions import mypyc_attr
    except ImportError:  # pragma: no cover - a plain install, without the dev extras

        def mypyc_attr(*_args: Any, **_flags: Any) -> Any:
            return lambda cls: cls
