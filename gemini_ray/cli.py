"""Command line: `gemini-ray {distill,label,tune,config} [--config FILE] [section.key=value ...]`.

    gemini-ray distill                          # embedded demo
    gemini-ray label                            # teacher once -> parquet cache (distill/tune reuse it)
    gemini-ray tune                             # Ray Tune over λ, τ, K (tune_spaces/quick.yaml)
    gemini-ray distill train.max_steps=200 loss.lambda_kd=0.7
    gemini-ray config                           # print the effective config as YAML
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["main"]


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
                            ("config", "print the effective config (defaults <- --config <- overrides) as YAML")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--config", "-c", default=None, help="YAML file with config sections")
        p.add_argument("overrides", nargs="*", metavar="section.key=value",
                       help="dotted overrides, e.g. loss.lambda_kd=0.7 train.max_steps=200")
        p.add_argument("--debug", action="store_true", help="show stack traces for user errors")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from gemini_ray.errors import GeminiRayError

    try:
        from gemini_ray.config import config_to_dict, load_config

        cfg = load_config(args.config, args.overrides)
        if args.command == "tune":
            from gemini_ray.tune import run_tune

            run_tune(args.config, args.overrides)
            return 0
        if args.command == "label":
            from gemini_ray.label import label

            label(cfg)
            return 0
        if args.command == "config":
            import yaml

            print(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), end="")
            return 0
        from gemini_ray.distill import distill

        distill(cfg)
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
