"""Write the shell completion scripts in completions/ from the app itself.

The scripts call back into `animllm` for the words, so model names complete from the
user's own config. Run after changing commands: .venv/bin/python scripts/gen_completions.py
(tests/cli/test_completions.py fails while the committed scripts are stale).
"""

from __future__ import annotations

from pathlib import Path

from typer._completion_shared import get_completion_script

OUT = Path(__file__).resolve().parent.parent / "completions"
FILES = {"bash": "animllm.bash", "zsh": "_animllm", "fish": "animllm.fish"}


def scripts() -> dict[str, str]:
    return {shell: get_completion_script(prog_name="animllm", complete_var="_ANIMLLM_COMPLETE", shell=shell) + "\n"
            for shell in FILES}


def main() -> None:
    OUT.mkdir(exist_ok=True)
    for shell, text in scripts().items():
        (OUT / FILES[shell]).write_text(text)
        print(f"wrote {OUT / FILES[shell]}")


if __name__ == "__main__":
    main()
