"""The command of every Kubeflow task:

    python -m components.task_entrypoint --outputs=KEY,KEY MODULE ARGS...

runs TFX's container entrypoint MODULE (the executor, or the ExampleGen's driver) as `python -m
MODULE ARGS...` would, with two differences:

- before TFX parses ARGS, the ExecutorInput in them is made readable by TFX where open-source
  Kubeflow Pipelines 2.x sends what TFX 1.16 cannot read: outputs the component does not declare
  (`--outputs`, written in at compile time) are dropped, upstream artifacts without a type get
  the declared one, and so on (components/kfp_executor_input.py, which says why for each);
- the process ends with the task's own exit status even where tensorflow-io's s3:// support
  would abort it at exit (common/process_exit.py).

pipeline/kubeflow_target.py puts it in front of TFX's commands in the compiled file.
"""
from __future__ import annotations

import sys
from typing import List, Optional, Sequence, Tuple

from common.process_exit import run_module
from components.kfp_executor_input import (OUTPUTS_FLAG, ExecutorInputError, parse_outputs_flag,
                                           readable_args)

USAGE = f"usage: python -m components.task_entrypoint [{OUTPUTS_FLAG}=KEY,...] MODULE [ARGS...]"


def parse_command(argv: Sequence[str]) -> Tuple[Optional[List[str]], str, List[str]]:
    """(declared output keys or None when not given, MODULE, ARGS) of this entrypoint's argv."""
    argv = list(argv)
    declared = None
    while argv and argv[0].startswith("--"):
        flag = argv.pop(0)
        if not flag.startswith(OUTPUTS_FLAG + "="):
            raise ExecutorInputError(f"unknown option {flag!r}; {USAGE}")
        declared = parse_outputs_flag(flag[len(OUTPUTS_FLAG) + 1:])
    if not argv:
        raise ExecutorInputError(USAGE)
    return declared, argv[0], argv[1:]


def main(argv: Sequence[str]) -> None:
    try:
        declared, module, args = parse_command(argv)
        args, changes = readable_args(args, declared)
    except ExecutorInputError as error:
        sys.exit(f"task_entrypoint: {error}")
    for change in changes:
        print(f"task_entrypoint: {change}", file=sys.stderr, flush=True)
    run_module(module, args)


if __name__ == "__main__":
    main(sys.argv[1:])
