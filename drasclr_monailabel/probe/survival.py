"""A small L2-penalised Cox proportional-hazards model, Harrell's C-index and Kaplan-Meier curves.

Written with numpy/scipy instead of a survival library (lifelines is not a dependency and
scikit-survival would add a compiled package for three short functions). Ties in time are handled
with Breslow's approximation: every subject still at risk at an event time is in its risk set.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize


def cox_negative_log_likelihood(beta: np.ndarray, x: np.ndarray, time: np.ndarray, event: np.ndarray) -> tuple[float, np.ndarray]:
    """Breslow negative partial log-likelihood of ``beta`` (d,) and its gradient.

    Args:
        x: (n, d) covariates; time: (n,) follow-up; event: (n,) 1 = event observed, 0 = censored.
    """
    order = np.argsort(-time, kind="stable")
    x, time, event = x[order], time[order], event[order].astype(bool)
    eta = x @ beta
    shift = eta.max() if eta.size else 0.0
    weights = np.exp(eta - shift)
    # risk set of row i (descending time) = rows 0 .. last row with the same time (Breslow ties)
    last_tied = np.searchsorted(-time, -time, side="right") - 1
    risk_sum = np.cumsum(weights)[last_tied]
    risk_x = np.cumsum(weights[:, None] * x, axis=0)[last_tied]
    log_risk = np.log(risk_sum) + shift
    loss = -float(np.sum(eta[event] - log_risk[event]))
    grad = -np.sum(x[event] - risk_x[event] / risk_sum[event, None], axis=0)
    return loss, grad


def cox_fit(x: np.ndarray, time: np.ndarray, event: np.ndarray, penalty: float) -> np.ndarray:
    """Coefficients (d,) minimising ``-log partial likelihood / n_events + penalty * |beta|^2``.

    Dividing by the number of events makes ``penalty`` comparable between folds and cohorts of
    different sizes. Covariates should be standardised so that one penalty suits every column.
    """
    scale = max(int(np.sum(event)), 1)

    def objective(beta: np.ndarray) -> tuple[float, np.ndarray]:
        loss, grad = cox_negative_log_likelihood(beta, x, time, event)
        return loss / scale + penalty * float(beta @ beta), grad / scale + 2.0 * penalty * beta

    return minimize(objective, np.zeros(x.shape[1]), jac=True, method="L-BFGS-B").x


def harrell_c_index(time: np.ndarray, event: np.ndarray, risk: np.ndarray) -> float:
    """Harrell's concordance: among pairs where the earlier time is an observed event, the
    fraction in which that subject has the higher risk (risk ties count 1/2). NaN without pairs."""
    concordant, comparable = 0.0, 0
    for i in np.flatnonzero(event):
        later = time > time[i]
        comparable += int(later.sum())
        concordant += float(np.sum(risk[i] > risk[later]) + 0.5 * np.sum(risk[i] == risk[later]))
    return concordant / comparable if comparable else float("nan")


def kaplan_meier(time: np.ndarray, event: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Kaplan-Meier survival curve: step times (starting at 0) and survival just after each."""
    times = np.unique(time[event.astype(bool)])
    at_risk = np.array([np.sum(time >= t) for t in times])
    deaths = np.array([np.sum((time == t) & event.astype(bool)) for t in times])
    survival = np.cumprod(1.0 - deaths / at_risk)
    return np.concatenate([[0.0], times]), np.concatenate([[1.0], survival])


def logrank_p_value(time: np.ndarray, event: np.ndarray, group: np.ndarray) -> float:
    """Two-group log-rank test p-value (``group`` boolean); NaN when there is no event."""
    from scipy.stats import chi2

    event = event.astype(bool)
    observed_minus_expected, variance = 0.0, 0.0
    for t in np.unique(time[event]):
        at_risk = time >= t
        n, n1 = at_risk.sum(), (at_risk & group).sum()
        d = np.sum((time == t) & event)
        d1 = np.sum((time == t) & event & group)
        observed_minus_expected += d1 - d * n1 / n
        if n > 1:
            variance += d * (n1 / n) * (1 - n1 / n) * (n - d) / (n - 1)
    if variance <= 0:
        return float("nan")
    return float(chi2.sf(observed_minus_expected**2 / variance, df=1))
