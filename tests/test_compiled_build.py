"""The optional mypyc build (scripts/compile.py, ``make compile``): what it puts beside the
sources, how it is undone, and the suite's refusal of a build older than its sources. The build
itself is exercised by CI, which runs part of the suite compiled (.ci/run)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path
from types import ModuleType

import pytest

from .conftest import compiled_modules

ROOT = Path(__file__).resolve().parent.parent
EXTENSION = sysconfig.get_config_var("EXT_SUFFIX")


def compile_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("compile_script", ROOT / "scripts" / "compile.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tree(root: Path) -> None:
    for name in ("meterguard/meter.py", "meterguard/store/memory.py", "meterguard/cli.py"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("")
    (root / f"meterguard/meter{EXTENSION}").write_bytes(b"")
    (root / f"meterguard/store/memory{EXTENSION}").write_bytes(b"")
    (root / f"0123abcd__mypyc{EXTENSION}").write_bytes(b"")  # mypyc's shared module, beside the package


def test_clean_removes_every_extension_module_and_no_source(tmp_path: Path) -> None:
    script = compile_script()
    tree(tmp_path)
    assert [path.name for path in script.built(tmp_path)] == [
        f"0123abcd__mypyc{EXTENSION}", f"meter{EXTENSION}", f"memory{EXTENSION}"
    ]  # fmt: skip
    script.clean(tmp_path)
    assert script.built(tmp_path) == []
    assert sorted(str(path.relative_to(tmp_path)) for path in tmp_path.rglob("*.py")) == [
        "meterguard/cli.py", "meterguard/meter.py", "meterguard/store/memory.py"
    ]  # fmt: skip


def test_every_module_it_compiles_exists(tmp_path: Path) -> None:
    script = compile_script()
    missing = [name for name in script.COMPILED if not (ROOT / "src" / name).exists()]
    assert missing == []
    assert "meterguard/middleware.py" not in script.COMPILED  # see the script: cancellation


def test_without_a_c_compiler_it_says_so(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    script = compile_script()
    monkeypatch.setattr(script.shutil, "which", lambda name: None)
    with pytest.raises(SystemExit, match="no C compiler"):
        script.compile_into(tmp_path)


def test_a_compiled_module_older_than_its_source_is_stale(tmp_path: Path) -> None:
    package = tmp_path / "meterguard"
    tree(tmp_path)
    built = package / f"meter{EXTENSION}"
    os.utime(built, (1_000_000, 1_000_000))  # built long before its source was last written
    assert compiled_modules(package) == {"meterguard.meter": True, "meterguard.store.memory": False}


def test_meterguard_imports_without_mypy_extensions() -> None:
    """A plain install has no mypy_extensions (mypy's dependency, in the dev extras): the
    decorator the compiled build reads is then a no-op, and MemoryStore still subclasses."""
    blocked = textwrap.dedent(
        """
        import sys

        class Blocked:
            def find_spec(self, name, path=None, target=None):
                if name == "mypy_extensions":
                    raise ImportError("not installed")

        sys.meta_path.insert(0, Blocked())
        from meterguard.store.memory import MemoryStore

        class Failing(MemoryStore):
            pass

        assert "mypy_extensions" not in sys.modules
        print(type(Failing()).__mro__[1].__name__)
        """
    )
    result = subprocess.run([sys.executable, "-c", blocked], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "MemoryStore"
