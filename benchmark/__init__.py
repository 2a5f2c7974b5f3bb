"""DAEBench: downstream-agnostic adversarial examples vs. defenses for SSL encoders.

Data flows one way: grid YAML -> GridSpec -> stage DAG -> artifact store ->
tidy results -> tables. See README.md and ../shared/DESIGN.md.
"""

__version__ = "0.1.0"

__all__ = ["run", "load_results", "estimate"]


def __getattr__(name: str):
    """`daebench.run` / `load_results` / `estimate` (the Python API), imported on first use,
    so `import daebench` stays light."""
    if name in __all__:
        from daebench import api

        return getattr(api, name)
    raise AttributeError(f"module 'daebench' has no attribute {name!r}")
