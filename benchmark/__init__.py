"""DAEBench: downstream-agnostic adversarial examples vs. defenses for SSL encoders.

Data flows one way: grid YAML -> GridSpec -> stage DAG -> artifact store ->
tidy results -> tables. See README.md and ../shared/DESIGN.md.
"""

__version__ = "0.1.0"
