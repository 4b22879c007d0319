"""The engine's boundary: plain PyTorch and pydantic, never the service's web, database or broker."""

from __future__ import annotations

import subprocess
import sys


def test_the_engine_imports_no_web_database_or_broker_library() -> None:
    code = (
        "import pkgutil, importlib, sys, optim_engine\n"
        "for m in pkgutil.walk_packages(optim_engine.__path__, 'optim_engine.'):\n"
        "    if m.name != 'optim_engine.__main__':\n"
        "        importlib.import_module(m.name)\n"
        "import optim_engine.spec, optim_engine._trials\n"
        "assert 'torch' in sys.modules  # the training modules did load\n"
        "print(sorted({'fastapi', 'starlette', 'sqlalchemy', 'celery', 'kombu', 'service', 'workers'} & set(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
