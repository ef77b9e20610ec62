"""The command of every Kubeflow task: `python -m components.task_entrypoint MODULE ARGS...` runs
TFX's container entrypoint MODULE (the executor, or the ExampleGen's driver) as `python -m MODULE
ARGS...` would, and ends the process with its exit status even where tensorflow-io's s3://
support would abort it at exit (common/process_exit.py). pipeline/kubeflow_target.py puts
it in front of TFX's commands in the compiled file.
"""
import sys

from common.process_exit import run_module

if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: python -m components.task_entrypoint MODULE [ARGS...]")
    run_module(sys.argv[1], sys.argv[2:])
