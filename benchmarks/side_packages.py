"""A peer tool's packages, pinned, in a folder of their own (never this environment's site-packages).

    site = pinned_site(work / "peer_site", ("scikit-learn==1.7.2",), drop=("numpy*",))
    env["PYTHONPATH"] = f"{REPO}:{site}"      # the peer then runs on this environment's torch and the rest

Installed once: a DONE file lists the pins. ``drop`` removes what pip brought that must come from this
environment instead (numpy, which torch was built against).
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path


def pinned_site(site: Path, pins: tuple[str, ...], no_deps: bool = False, drop: tuple[str, ...] = ()) -> Path:
    if not (site / "DONE").is_file():
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", *(["--no-deps"] if no_deps else []),
                        "--target", str(site), *pins], check=True)
        for pattern in drop:
            for path in site.glob(pattern):
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        (site / "DONE").write_text("\n".join(pins))
    return site
