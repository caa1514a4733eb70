"""Parameter importance of a study: Optuna's fANOVA evaluator over its ended trials.

fANOVA (Hutter et al., 2014) fits a random forest from parameters to objective and splits
its variance among the parameters. With 32 trees of depth 6 (seeded: the same trials give
the same answer) it takes ~0.3 s for 16 trials and ~2.5 s for 1,000 on one core, and ranks
a deciding parameter first from ~8 trials, where PED-ANOVA (faster) often needs several
dozen. Optuna and scikit-learn import no torch, so the API can compute it.

The trials counted are those that ended with a value: succeeded ones at their best value of
the objective, and pruned ones at their best value before they stopped. A parameter that
only some trials have (inside an option of a conditional choice) is left out.
"""

import warnings
from typing import TYPE_CHECKING, Any

from core import space as search

if TYPE_CHECKING:
    from optuna.distributions import BaseDistribution

EVALUATOR = "fanova"
MIN_TRIALS = 8


def _distribution(p: search.Param) -> "BaseDistribution":
    # Optuna (and scikit-learn, which its fANOVA imports) load on the first request: seconds
    # the API's start does not wait for.
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if p.kind == "choice":  # by option index: any JSON values, one category each
        return CategoricalDistribution(list(range(len(p.options))))
    if p.kind == "int":
        return IntDistribution(int(p.low), int(p.high), step=p.step, log=p.log)
    return FloatDistribution(p.low, p.high, log=p.log)


def importances(
    space: dict[str, Any], trials: list[tuple[dict[str, Any], float]], mode: str
) -> dict[str, float]:
    """{parameter: importance} (summing to 1, most important first) from (point, value)
    pairs: a point is a trial's raw point ({name: value; a choice's option index})."""
    import optuna
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances
    from optuna.trial import TrialState, create_trial

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    params = search.parse(space)
    names = [p.name for p in params if all(p.name in point for point, _ in trials)]
    study = optuna.create_study(direction="minimize" if mode == "min" else "maximize")
    for point, value in trials:
        active = list(search.active(params, point))
        study.add_trial(
            create_trial(
                state=TrialState.COMPLETE,
                value=value,
                params={p.name: point[p.name] for p in active},
                distributions={p.name: _distribution(p) for p in active},
            )
        )
    evaluator = FanovaImportanceEvaluator(n_trees=32, max_depth=6, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # experimental-feature warnings
        found = get_param_importances(study, evaluator=evaluator, params=names)
    return {name: round(float(value), 6) for name, value in found.items()}
