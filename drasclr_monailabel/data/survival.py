"""Synthetic survival outcomes that depend on emphysema severity, for testing survival probes.

Survival time is exponential with a hazard that rises with the true emphysema percentage
(proportional hazards, as in a Cox model) times a log-normal frailty (patients differ for reasons
the image does not show), and is right-censored by a uniform end of follow-up. A probe that reads
severity from the image should then reach a concordance index clearly above 0.5, but not 1.
"""

from __future__ import annotations

import numpy as np

BASELINE_MEDIAN_MONTHS = 150.0
HAZARD_RATIO_PER_PERCENT = 1.07  # about 2x the hazard per 10 % of lung with emphysema
FRAILTY_SIGMA = 0.4
FOLLOW_UP_MONTHS = (24.0, 120.0)


def synthetic_survival(severity_percent: float, rng: np.random.Generator) -> tuple[float, int]:
    """Draw (survival time in months, event) for a subject with the given emphysema percentage.

    ``event`` is 1 when death was observed before the end of follow-up, 0 when censored; the time
    is rounded to 0.1 month.
    """
    hazard = np.log(2.0) / BASELINE_MEDIAN_MONTHS * HAZARD_RATIO_PER_PERCENT**severity_percent
    hazard *= rng.lognormal(0.0, FRAILTY_SIGMA)
    death = rng.exponential(1.0 / hazard)
    censor = rng.uniform(*FOLLOW_UP_MONTHS)
    return round(float(min(death, censor)), 1), int(death <= censor)
