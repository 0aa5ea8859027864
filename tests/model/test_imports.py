"""model/ is pure PyTorch: importing it must not pull in the web or queue stacks."""

from __future__ import annotations

import subprocess
import sys


def test_model_imports_no_web_or_queue_packages():
    code = ("import sys, importlib, pkgutil, model\n"
            "for m in pkgutil.iter_modules(model.__path__):\n"
            "    importlib.import_module('model.' + m.name)\n"
            "bad = [n for n in ('fastapi', 'celery', 'redis', 'starlette', 'uvicorn', 'kombu')"
            " if n in sys.modules]\n"
            "print(','.join(bad))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


def test_model_formats_do_not_import_torch():
    """The API process validates uploads and requests with model.formats and must not import
    torch (the import-linter contract checks the source; this checks the running process)."""
    code = ("import sys, importlib, pkgutil, model.formats\n"
            "for m in pkgutil.iter_modules(model.formats.__path__):\n"
            "    importlib.import_module('model.formats.' + m.name)\n"
            "names = sorted(m.name for m in pkgutil.iter_modules(model.formats.__path__))\n"
            "print(','.join(names), 'torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60)
    names, torch_loaded = result.stdout.split()
    assert {"archives", "config", "errors", "files", "imagefile", "manifest"} <= \
        set(names.split(",")), names
    assert torch_loaded == "False", result.stderr
