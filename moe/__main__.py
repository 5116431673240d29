import sys

from moe.cli.main import main

sys.exit(main())
