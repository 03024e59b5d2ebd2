"""`distface train` whose chief evaluates for longer than MultiWorkerMirrored's coordination service waits for a
silent worker (about 10 s without heartbeats): a worker that exited after training would be reported as crashed."""
import sys
import time

from distface.eval import records
from distface.train import main

CHIEF_EVALUATION_SECONDS = 15
_evaluate = records.Evaluator.__call__  # only the chief evaluates


def _slow_evaluation(self, *args, **kwargs):
    time.sleep(CHIEF_EVALUATION_SECONDS)
    return _evaluate(self, *args, **kwargs)


records.Evaluator.__call__ = _slow_evaluation
sys.exit(main())
