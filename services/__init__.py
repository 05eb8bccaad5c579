"""TwinArm domain services: data model, cohorts, retrieval, twin generation, evaluation, export.

Plain Python over pandas/numpy; never imports streamlit, so the CLI, the benches and the
tests use exactly the code the app uses.
"""

__version__ = "0.1.0"
