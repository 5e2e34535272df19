"""Run inside the engine's interpreter: parse argv lists with the installed vLLM's own
server argument parser, without starting anything. Reads a JSON list of argv lists on
stdin, prints a JSON list of error strings (null where vLLM accepted the argv)."""

import contextlib
import io
import json
import sys


def make_parser():
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    try:  # the module moved in vLLM 0.2x; keep both so older pinned builds work too
        from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
    except ImportError:
        from vllm.entrypoints.openai.cli_args import make_arg_parser, validate_parsed_serve_args
    return make_arg_parser(FlexibleArgumentParser()), validate_parsed_serve_args


def quantization_methods():
    # The parser takes any string for --quantization; vLLM checks it only at engine start.
    from vllm.model_executor.layers.quantization import QUANTIZATION_METHODS

    return set(QUANTIZATION_METHODS)


def check(parser, validate, argv):
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            args = parser.parse_args(argv)
            validate(args)
        if args.quantization is not None and args.quantization not in quantization_methods():
            return f"unknown quantization method {args.quantization!r}"
    except SystemExit:
        return stderr.getvalue().strip().splitlines()[-1] if stderr.getvalue().strip() else "rejected"
    except Exception as exc:  # validate_parsed_serve_args raises ValueError/TypeError
        return f"{type(exc).__name__}: {exc}"
    return None


def main():
    parser, validate = make_parser()
    print(json.dumps([check(parser, validate, argv) for argv in json.load(sys.stdin)]))


if __name__ == "__main__":
    main()
