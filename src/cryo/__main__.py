import sys

from cryo.cli import main

sys.exit(main())
