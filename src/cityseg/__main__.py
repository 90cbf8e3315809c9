import sys

from cityseg.cli import main

sys.exit(main())
