"""The ``portnn`` command (also ``python -m portnn``).

::

    portnn info                                   # version, backends and their devices
    portnn train --dataset digits --out digits.safetensors
    portnn train --dataset mnist5k --model cnn --out cnn.safetensors
    portnn evaluate digits.safetensors --dataset digits
    portnn predict digits.safetensors --input new.csv --out predictions.csv
    portnn export digits.safetensors digits.onnx   # needs portnn[onnx]

``train`` builds a multilayer perceptron (Dense, activation, ..., Dense), or with
``--model cnn`` a convolutional network (``--conv``), for the data set's classes,
trains it with softmax cross-entropy, and reports the accuracy on the held-out
test split. Errors are reported in one line on stderr with exit status 2 (set
``PORTNN_DEBUG=1`` for the traceback).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Sequence

from .commands import cmd_evaluate, cmd_export, cmd_predict, cmd_train, cpu_threads
from .info import cmd_info
from .parser import ACTIVATIONS, CommandError, build_parser

__all__ = ["ACTIVATIONS", "CommandError", "build_parser", "main"]

COMMANDS = {
    "info": cmd_info,
    "train": cmd_train,
    "evaluate": cmd_evaluate,
    "predict": cmd_predict,
    "export": cmd_export,
}


def _one_line(e: BaseException) -> str:
    if isinstance(e, KeyError) and e.args:
        text = str(e.args[0])
    else:
        text = str(e) or type(e).__name__
    text = " ".join(text.split())
    expected = (CommandError, OSError, ValueError, TypeError, KeyError, ImportError)
    from ..backend import BackendError

    if not isinstance(e, expected + (BackendError,)):
        text = f"{type(e).__name__}: {text}"
    return text


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``portnn`` command with ``argv`` (default: ``sys.argv[1:]``).

    Returns the exit status: 0 on success, 2 for a bad argument or a failure
    (reported in one line on stderr), 130 when interrupted.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version and argument errors
        return e.code if isinstance(e.code, int) else 2
    try:
        with contextlib.ExitStack() as stack:
            if args.command != "info":
                from ..backend import get_backend, use_backend

                # the chosen backend is scoped to this call (nothing process-wide changes);
                # resolving it first imports its library, whose threads are then limited
                if args.backend is not None:
                    stack.enter_context(use_backend(args.backend))
                get_backend()
                stack.enter_context(cpu_threads(args.threads))
            return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("portnn: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if os.environ.get("PORTNN_DEBUG"):
            raise
        print(f"portnn {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 2
