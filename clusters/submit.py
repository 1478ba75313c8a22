"""Run one of the CLI's commands (distill, label, tune, ...) on a launcher cluster's head node with `ray submit`.

    ray up clusters/aws.yaml
    ray submit clusters/aws.yaml clusters/submit.py distill --config configs/cluster-1.7b.yaml
    ray submit clusters/aws.yaml clusters/submit.py tune tune.space=tune_spaces/default.yaml

`ray submit` copies this file to the head and runs it there with the arguments that follow it, which are
the CLI's own (a subcommand, options, overrides). On the head the project sits at ~/gemini_ray (the
launcher's file_mounts) and is installed; relative paths such as configs/... are read from there. The
command joins the cluster that `ray start` started on the head (no address needed), with the token the
launcher copied. It runs in the foreground of the ssh session: add --tmux (or --screen) to `ray submit`
to keep it running when you disconnect, or use `ray job submit` (docs/cluster.md) for a job that
outlives the session and has its logs in the dashboard.

Locally, `python clusters/submit.py distill ...` runs the same code path on this machine.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def project_root() -> Path | None:
    """The checkout gemini_ray is installed from (an editable install: the directory above the package)."""
    try:
        import gemini_ray
    except ImportError:
        return None
    root = Path(gemini_ray.__file__).resolve().parents[1]
    return root if (root / "pyproject.toml").is_file() else None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    root = project_root()
    if root is None:
        print("submit.py: gemini_ray is not installed on this node. The launcher's setup_commands install it "
              "(pip install -e ~/gemini_ray); run `ray up` again, or install it there by hand.", file=sys.stderr)
        return 2
    os.chdir(root)  # configs/..., tune_spaces/... and a relative run.storage_path resolve in the checkout
    token = Path("~/.ray/auth_token").expanduser()
    if token.is_file():  # the launcher copies the token; a non-interactive ssh shell skips ~/.bashrc's export
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    from gemini_ray.cli import main as gemini_ray

    return gemini_ray(argv)


if __name__ == "__main__":
    raise SystemExit(main())
