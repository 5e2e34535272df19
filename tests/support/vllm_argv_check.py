"""Run inside the engine's interpreter: parse argv lists with the installed vLLM's own
server argument parser, without starting anything. Reads a JSON list of argv lists on
stdin, prints a JSON list of error strings (null where vLLM accepted the argv).

  --parse-only   the parser's verdict alone (not validate_parsed_serve_args, which also
                 judges combinations: --enable-auto-tool-choice wants a parser, ...)
  --options      instead: every option string the parser registers, with how many values
                 it takes and its choices, and the quantization methods
  --stored       stdin holds [argv, dest] pairs: print what the parser stores in dest for
                 each argv (an error string where it refuses the argv)"""

import contextlib
import io
import json
import sys


def make_parser():
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    from pathlib import Path

    # Where the module lives moved twice: the release tables' probe knows every place.
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
    from vllm_release_probe import parser_module

    module = parser_module()
    return module.make_arg_parser(FlexibleArgumentParser()), module.validate_parsed_serve_args


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


def stored(parser, argv, dest):
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            value = getattr(parser.parse_args(argv), dest)
    except SystemExit:
        return {"error": stderr.getvalue().strip()[-300:]}
    return value if isinstance(value, (bool, int, float, str, type(None))) else repr(value)


def registered_options(parser):
    import argparse

    found = {}
    for option, action in parser._option_string_actions.items():
        if isinstance(action, argparse._HelpAction):
            continue
        found[option] = {"nargs": action.nargs if isinstance(action.nargs, (int, str)) else None,
                         "choices": sorted(str(c) for c in action.choices if c is not None)
                         if action.choices is not None else None}
    return found


def main():
    parser, validate = make_parser()
    if "--options" in sys.argv:
        print(json.dumps({"options": registered_options(parser), "quantization": sorted(quantization_methods())}))
        return
    if "--stored" in sys.argv:
        print(json.dumps([stored(parser, argv, dest) for argv, dest in json.load(sys.stdin)]))
        return
    if "--parse-only" in sys.argv:
        validate = lambda args: None  # noqa: E731
    print(json.dumps([check(parser, validate, argv) for argv in json.load(sys.stdin)]))


if __name__ == "__main__":
    main()
