"""TFX components of this pipeline. The artifact types are reachable here because Kubeflow's task
entrypoint imports a custom type by its name, "components.<Type>" (components/artifacts.py).
They are loaded on first use (PEP 562), so importing a light module of this package (the task
entrypoint's kfp_executor_input, which the runners' compile step uses) does not import TFX."""

__all__ = ["VolumeEvaluation"]


def __getattr__(name):
    if name in __all__:
        from components import artifacts
        return getattr(artifacts, name)
    raise AttributeError(f"module 'components' has no attribute {name!r}")
