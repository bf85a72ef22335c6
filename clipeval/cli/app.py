"""`demo` (build the offline demo's runs) and `app` (serve the Streamlit explorer as a child process)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from clipeval.cli.options import int_in, placement_of
from clipeval.config import DEVICE_CHOICES, DTYPE_CHOICES
from clipeval.errors import check_path

# Imported inside the functions that use them: the demo's builder and its models, the compute placement (torch), and subprocess/signal for the app: `clipeval runs` or `--help` must answer in a second, not load torch.


def cmd_demo(args) -> int:
    from clipeval.demo.build import build_demo, start_in_background

    placement = placement_of(args)
    check_path(args.db, "run store", "write", new_folders=True)
    if args.background:
        print(start_in_background(args.db, args.size, args.device, args.dtype), file=sys.stderr)
        return 0
    build_demo(db=args.db, size=args.size, device=placement.device, dtype=placement.dtype_name, status=args.status)
    return 0


def _die_with_parent() -> None:
    """In the Streamlit child (Linux): get SIGTERM when `clipeval app` dies, even by SIGKILL."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def cmd_app(args) -> int:
    """Run Streamlit as a child and stop it with us: SIGTERM / SIGINT / SIGHUP to `clipeval app` are
    passed on and waited for, so no orphaned server is left behind."""
    import signal
    import subprocess

    env = dict(os.environ, CLIPEVAL_DB=str(Path(args.db).resolve()))
    app = Path(__file__).resolve().parents[2] / "app.py"
    child = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(app), "--server.port", str(args.port)],
        env=env,
        preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
    )

    def stop(signum, _frame):
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
        raise SystemExit(128 + signum)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        return child.wait()
    except (KeyboardInterrupt, SystemExit) as e:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        return e.code if isinstance(e, SystemExit) and isinstance(e.code, int) else 130
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def register(add) -> None:
    """Add this module's subcommands (`add(name, **kw)` makes a subparser with the shared options)."""
    dm = add("demo", help="build the offline demo runs (if missing)")
    dm.add_argument("--size", choices=["full", "small"], default="full")
    dm.add_argument("--device", default="auto", metavar="DEVICE", help=f"{DEVICE_CHOICES} (default auto)")
    dm.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES, help="model precision (default auto)")
    dm.add_argument(
        "--background",
        action="store_true",
        help="start the build as a detached process and return at once (what ./run app does): it "
        "writes its progress to STORE.build.json, which the app's Overview shows, and its output "
        "to STORE.build.log; nothing starts when the demo is complete or a build is running",
    )
    dm.add_argument(
        "--status",
        action="store_true",
        help="also write the build's stage and progress to STORE.build.json (for the app)",
    )
    dm.set_defaults(func=cmd_demo)

    a = add("app", help="start the Streamlit explorer on the store")
    a.add_argument("--port", type=int_in(1, 65535), default=8501)
    a.set_defaults(func=cmd_app)
