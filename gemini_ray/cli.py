"""Command line: `gemini-ray {distill,label,tune,eval,ablate,curve,config} [--config FILE] [section.key=value ...]`.

    gemini-ray distill                          # embedded demo
    gemini-ray label                            # teacher once -> parquet cache (distill/tune reuse it)
    gemini-ray tune                             # Ray Tune over λ, τ, K (tune_spaces/quick.yaml)
    gemini-ray distill train.max_steps=200 loss.lambda_kd=0.7
    gemini-ray config                           # print the effective config as YAML
    gemini-ray eval runs/demo/student           # student vs teacher: held-out LM, Lee, Rotten Tomatoes, cost
    gemini-ray ablate                           # no teacher / KD only / contrastive only / KD + contrastive
    gemini-ray curve --config configs/quality.yaml  # one student evaluated at every checkpoint, vs targets

The CLI builds the config (config.build_config: defaults <- --config <- overrides; `tune` adds its search
space's fixed values, `eval` starts from the student's recorded data settings), checks what needs neither
Ray nor the teacher (preflight), and hands the config to the command in gemini_ray.commands.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gemini_ray.config import Config

__all__ = ["main", "preflight"]


class _Once(argparse.Action):
    """Store an option's value, refusing a second one. argparse keeps the last without a word, so
    `--config a.yaml --config b.yaml` would run b.yaml alone and drop every setting of a.yaml."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                 option_string: str | None = None) -> None:
        given = getattr(namespace, self.dest, None)
        if given is not None:
            name = self.option_strings[0]
            fix = ("Give it once: one file holds every section, so merge the two files or give the other settings "
                   "as section.key=value overrides." if name == "--config" else "Give it once.")
            parser.error(f"{name} is given twice ({given}, then {values}): only one can apply. {fix}")
        setattr(namespace, self.dest, values)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gemini-ray",
        description="Distil a large teacher LM into a small student (KD + contrastive) on Ray.",
    )
    parser.add_argument("--debug", action="store_true", help="show stack traces for user errors")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (("distill", "run teacher labelling, mining and student training end to end"),
                            ("label", "run the teacher once and keep its signal in a parquet cache"),
                            ("tune", "search λ, τ, K (tune.space) with Ray Tune on the cached teacher signal"),
                            ("config", "print the effective config (defaults <- --config <- overrides) as YAML"),
                            ("eval", "evaluate a student next to its teacher (JSON report + markdown table)"),
                            ("ablate", "the untrained student vs no-teacher, KD-only, contrastive-only and "
                                       "KD+contrastive students, trained and evaluated"),
                            ("curve", "train one student and evaluate it at every checkpoint against the quality "
                                      "targets (table, chart, extrapolation)")):
        p = sub.add_parser(name, help=help_text)
        if name == "eval":  # before the overrides: argparse fills positionals in order
            p.add_argument("model_dir", help="an exported student (…/student) or any HF model directory")
        p.add_argument("--config", "-c", default=None, action=_Once, help="YAML file with config sections")
        p.add_argument("overrides", nargs="*", metavar="section.key=value",
                       help="dotted overrides, e.g. loss.lambda_kd=0.7 train.max_steps=200")
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,  # keeps `gemini-ray --debug X`
                       help="show stack traces for user errors")
        if name in ("ablate", "curve"):
            p.add_argument("--out", default=None, action=_Once,
                           help=f"output directory (default: <storage_path>/<name>-{name})")
        if name == "eval":
            p.add_argument("--teacher", default=None, action=_Once,
                           help="teacher directory or name (default: the one recorded with the student, "
                                "else teacher.model)")
            p.add_argument("--no-teacher", action="store_true", help="skip evaluating the teacher itself")
            p.add_argument("--out", default=None, action=_Once,
                           help="report directory (default: <model_dir>/../eval)")
    return parser


def preflight(cfg: Config, command: str, out: str | None = None) -> None:
    """Checks that need neither Ray nor the teacher, so that bad input fails in a second and writes nothing:
    the local corpus files (gemini_ray.data.filecheck) and the directories results go to (`out`: --out): a
    folder the command would replace is refused unless it is empty or an earlier output of ours."""
    from gemini_ray.data.cache import read_manifest
    from gemini_ray.data.filecheck import check_corpus
    from gemini_ray.paths import check_output_dir, check_writable

    check_writable(cfg.run.storage_path, "run.storage_path")
    if out:
        check_writable(out, "--out")
    if command in ("label", "ablate", "tune"):  # the commands that write a teacher-signal cache
        key = "label.path" if cfg.label.path else "label.cache_root"
        if cfg.label.path or cfg.label.cache_root:
            check_writable(cfg.label.path or cfg.label.cache_root, key)
        if cfg.label.path and read_manifest(cfg.label.path) is None:  # not a cache: shards would land among files
            check_output_dir(cfg.label.path, "label.path", replace_ours=True)
    if command in ("label", "ablate"):
        check_corpus(cfg.data, cfg.label.max_negatives + 1, "label.max_negatives")
    else:
        if command == "distill":
            from gemini_ray.jobs.distill_run import check_output

            check_output(cfg)  # an existing run.output_dir that the export would replace: refused now
        check_corpus(cfg.data, cfg.loss.num_negatives + 1, "loss.num_negatives")


def _run(args: argparse.Namespace) -> None:
    """Build the config the command runs, check it, run the command."""
    from gemini_ray.config import build_config, config_to_dict

    if args.command == "eval":
        from gemini_ray.commands.eval import evaluate_model
        from gemini_ray.jobs.evaluate import recorded_settings

        cfg = build_config(args.config, args.overrides, base=recorded_settings(args.model_dir))
        evaluate_model(args.model_dir, cfg, teacher=args.teacher, with_teacher=not args.no_teacher, out=args.out)
    elif args.command == "tune":
        from gemini_ray.jobs.search import search_config

        cfg, space = search_config(args.config, args.overrides)  # the space's fixed values are checked too
        preflight(cfg, args.command)
        from gemini_ray.commands.tune import tune

        tune(cfg, space)
    elif args.command == "config":
        import yaml

        cfg = build_config(args.config, args.overrides)
        print(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), end="")
    else:
        cfg = build_config(args.config, args.overrides)
        preflight(cfg, args.command, out=getattr(args, "out", None))  # before the command's heavy imports
        if args.command == "ablate":
            from gemini_ray.commands.ablate import ablate

            ablate(cfg, args.out)
        elif args.command == "curve":
            from gemini_ray.commands.curve import curve

            curve(cfg, args.out)
        elif args.command == "label":
            from gemini_ray.commands.label import label

            label(cfg)
        else:
            from gemini_ray.commands.distill import distill

            distill(cfg)


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)  # overrides may also follow options: eval DIR --out X a.b=1
    unknown = [e for e in extra if e.startswith("-") or "=" not in e]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.overrides = list(args.overrides) + extra
    from gemini_ray.config import check_overrides_once
    from gemini_ray.errors import GeminiRayError

    try:
        check_overrides_once(args.overrides)  # build_config lets the later win, for callers that layer on purpose
    except GeminiRayError as exc:
        print(f"gemini-ray: error: {exc}", file=sys.stderr)
        return 2

    started = time.time()
    try:
        _run(args)
        return 0
    except GeminiRayError as exc:
        if args.debug:
            raise
        print(f"gemini-ray: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C (during a Ray Train fit too: `ray_compat.train`)
        on_main = threading.current_thread() is threading.main_thread()  # signal.signal works there only
        before = signal.signal(signal.SIGINT, signal.SIG_IGN) if on_main else None  # a 2nd Ctrl-C: no cut line
        try:
            kept = _kept(args, started)
            again = "Resume with" if kept != "nothing was kept" else "Run it again with"
            print(f"gemini-ray: interrupted; kept: {kept}. {again}: {_command_line(argv)}", file=sys.stderr,
                  flush=True)
        finally:
            if before is not None:
                signal.signal(signal.SIGINT, before)
        return 130


def _command_line(argv: list[str] | None) -> str:
    """The command that ran, as a shell line: `gemini-ray ARGS` for main(argv), else this process's argv
    (`python -m gemini_ray[.cli] ARGS` when run as a module)."""
    if argv is not None:
        return shlex.join(["gemini-ray", *argv])
    program = sys.argv[0]
    if program.endswith((os.path.join("gemini_ray", "cli.py"), os.path.join("gemini_ray", "__main__.py"))):
        module = "gemini_ray.cli" if program.endswith("cli.py") else "gemini_ray"
        return shlex.join([sys.executable, "-m", module, *sys.argv[1:]])
    return shlex.join(sys.argv)


def _kept(args: argparse.Namespace, started: float) -> str:
    """What an interrupted command leaves for the next run, in a few words, read from disk (no Ray, no torch
    unless already loaded): distill and curve, their newest whole checkpoint; label, the shards in its cache."""
    from gemini_ray.config import build_config
    from gemini_ray.paths import absolute, is_uri, join, run_dir

    if args.command in ("eval", "config"):
        return "nothing was kept"
    try:
        cfg = build_config(args.config, args.overrides)
    except Exception:  # noqa: BLE001 - the config was read once already; say the least rather than fail here
        return "what had finished"
    storage = absolute(cfg.run.storage_path)
    if args.command == "tune":
        return f"the search's trials so far under {join(storage, cfg.tune.name)}"
    if args.command == "ablate":
        return f"each finished variant's checkpoints and students under {storage}"
    if args.command == "label":
        return _kept_shards(cfg, started)
    run = run_dir(cfg.run.storage_path, cfg.run.name)
    if is_uri(run):
        return f"the checkpoints under {run}"
    steps = _checkpoint_steps(run)
    return f"checkpoint at step {steps[-1]} under {run}" if steps else "nothing was kept"


def _checkpoint_steps(run: str) -> list[int]:
    """The steps of the checkpoints under a local run directory: whole ones (`checkpoint.whole_checkpoint_steps`)
    when torch is loaded already, else those whose state.json (written last) reads."""
    if "torch" in sys.modules:
        from gemini_ray.models.checkpoint import whole_checkpoint_steps

        return whole_checkpoint_steps(run)
    import json
    from pathlib import Path

    steps = []
    for state in Path(run).glob("checkpoint_*/state.json"):
        try:
            step = json.loads(state.read_text(encoding="utf-8")).get("step")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(step, int):
            steps.append(step)
    return sorted(steps)


def _kept_shards(cfg: Config, started: float) -> str:
    """The labelled blocks of the cache this `label` wrote to: label.path, else the cache under label.cache_root
    (or <storage_path>/signal_cache) whose manifest changed last since the command started."""
    from pathlib import Path

    from gemini_ray.paths import absolute, is_uri, join

    root = absolute(cfg.label.path or cfg.label.cache_root or join(cfg.run.storage_path, "signal_cache"))
    if is_uri(root):
        return f"the labelled blocks under {root}"
    if cfg.label.path:
        manifests = [Path(root) / "manifest.json"]
    else:
        manifests = [m for m in Path(root).glob("*/manifest.json") if m.stat().st_mtime >= started - 1]
    for manifest in sorted((m for m in manifests if m.is_file()), key=lambda m: m.stat().st_mtime, reverse=True):
        blocks = len(list((manifest.parent / "blocks").glob("[0-9][0-9][0-9][0-9][0-9].json")))
        if blocks:
            return f"{blocks} labelled block(s) of the teacher-signal cache at {manifest.parent}"
    return "nothing was kept"


if __name__ == "__main__":
    sys.exit(main())
