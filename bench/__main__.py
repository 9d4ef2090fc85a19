import sys

from bench import run

sys.exit(run.main())
