"""``python -m trainer clip ...`` / ``python -m trainer combiner ...``."""
import sys

from trainer.train import main

sys.exit(main())
