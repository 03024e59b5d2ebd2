"""`distface train` on a worker whose clock runs an hour ahead of the chief's (TF_CONFIG's task index 1): a run
folder it chose itself would carry another time than the chief's."""
import json
import os
import sys
import time

from distface.train import main
from distface.training import run_folder

if json.loads(os.environ["TF_CONFIG"])["task"]["index"] == 1:
    run_folder.time = type("SkewedClock", (), {"time": staticmethod(lambda: time.time() + 3600),
                                               "localtime": staticmethod(time.localtime),
                                               "strftime": staticmethod(time.strftime)})
sys.exit(main())
