import sys

from vlkit.cli import main

sys.exit(main())
