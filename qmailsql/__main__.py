import sys

from qmailsql.cli import main

sys.exit(main())
