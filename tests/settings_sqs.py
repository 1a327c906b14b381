"""Worker subprocesses of the SNS/SQS tests: the run's own settings, with E008 silenced.

The test app registers an ordered handler (group ``sequence``), which a standard (not
FIFO) SQS transport refuses with the E008 system check; those tests never run that group.
"""

import importlib
import os

_base = importlib.import_module(os.environ["DJANGO_EVENTS_SQS_BASE_SETTINGS"])
globals().update({k: v for k, v in vars(_base).items() if k.isupper()})
SILENCED_SYSTEM_CHECKS = ["django_events.E008"]
