"""Command line: `gemini-ray {distill,label,tune,config} [--config FILE] [section.key=value ...]`.

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
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gemini_ray.config import Config

__all__ = ["main", "preflight"]


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
        p.add_argument("--config", "-c", default=None, help="YAML file with config sections")
        p.add_argument("overrides", nargs="*", metavar="section.key=value",
                       help="dotted overrides, e.g. loss.lambda_kd=0.7 train.max_steps=200")
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,  # keeps `gemini-ray --debug X`
                       help="show stack traces for user errors")
        if name in ("ablate", "curve"):
            p.add_argument("--out", default=None, help=f"output directory (default: <storage_path>/<name>-{name})")
        if name == "eval":
            p.add_argument("--teacher", default=None,
                           help="teacher directory or name (default: the one recorded with the student, else teacher.model)")
            p.add_argument("--no-teacher", action="store_true", help="skip evaluating the teacher itself")
            p.add_argument("--out", default=None, help="report directory (default: <model_dir>/../eval)")
    return parser


def preflight(cfg: Config, command: str, out: str | None = None) -> None:
    """Checks that need neither Ray nor the teacher, so that bad input fails in a second and writes nothing:
    the local corpus files (gemini_ray.data.filecheck) and the directories results go to (`out`: --out)."""
    from gemini_ray.data.filecheck import check_corpus
    from gemini_ray.paths import check_writable

    check_writable(cfg.run.storage_path, "run.storage_path")
    if out:
        check_writable(out, "--out")
    if command in ("label", "ablate"):
        key = "label.path" if cfg.label.path else "label.cache_root"
        if cfg.label.path or cfg.label.cache_root:
            check_writable(cfg.label.path or cfg.label.cache_root, key)
        check_corpus(cfg.data, cfg.label.max_negatives + 1, "label.max_negatives")
    else:
        if command == "distill" and cfg.run.output_dir:
            check_writable(cfg.run.output_dir, "run.output_dir")
        check_corpus(cfg.data, cfg.loss.num_negatives + 1, "loss.num_negatives")


def _run(args: argparse.Namespace) -> None:
    """Build the config the command runs, check it, run the command."""
    from gemini_ray.config import build_config, config_to_dict

    if args.command == "eval":
        from gemini_ray.commands.eval import evaluate_model
        from gemini_ray.evaluation.run import recorded_settings

        cfg = build_config(args.config, args.overrides, base=recorded_settings(args.model_dir))
        evaluate_model(args.model_dir, cfg, teacher=args.teacher, with_teacher=not args.no_teacher, out=args.out)
    elif args.command == "tune":
        from gemini_ray.search import search_config

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
    from gemini_ray.errors import GeminiRayError

    try:
        _run(args)
        return 0
    except GeminiRayError as exc:
        if args.debug:
            raise
        print(f"gemini-ray: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gemini-ray: interrupted; run the same command again to resume from the latest checkpoint.",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
