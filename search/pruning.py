"""A stopped trial reads as stopped in the Optuna study too: ASHA's early stops as PRUNED.

Tune tells its searcher that a trial ASHA stopped "completed" with its last result, and Ray's
OptunaSearch then records it COMPLETE, as if its value after one or two epochs were a full
run's. `PruningOptunaSearch` records a trial that ended without error before the run's last
epoch as PRUNED, with that last result as its last intermediate value and the epoch it reached
as a user attribute (`stopped_at_epoch`): TPE treats it as the pruned trial it is, and
optuna-dashboard, the search view (analysis.search_view) and the console say the same.
"""

from __future__ import annotations

import warnings

from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

STOPPED_ATTR = "stopped_at_epoch"


class PruningOptunaSearch(OptunaSearch):
    """OptunaSearch that tells Optuna a trial stopped before `max_epochs` as PRUNED."""

    def __init__(self, *args, max_epochs: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.max_epochs = max_epochs

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        result = result or {}
        epoch = result.get("epoch", result.get("training_iteration"))
        value = result.get(self.metric) if isinstance(self.metric, str) else None
        stopped = (not error and self.max_epochs is not None and isinstance(epoch, (int, float))
                   and epoch < self.max_epochs and value is not None)
        if not stopped or trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return super().on_trial_complete(trial_id, result, error)
        ot_trial = self._ot_trials[trial_id]
        with warnings.catch_warnings():  # the epoch may already be reported (on_trial_result)
            warnings.simplefilter("ignore")
            ot_trial.report(float(value), int(epoch))
        ot_trial.set_user_attr(STOPPED_ATTR, int(epoch))
        self._ot_study.tell(ot_trial, state=TrialState.PRUNED)
        self._completed_trials.add(trial_id)
