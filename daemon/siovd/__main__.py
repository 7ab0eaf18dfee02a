import sys

from siovd.host.main import main

sys.exit(main())
