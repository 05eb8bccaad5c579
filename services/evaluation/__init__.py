"""Evaluation of twins: metrics by family, twin-vs-real comparison, the backtest of a generator,
PROCOVA planning, the validation card and the 2-D projection of patients."""
