"""`python3 -m forkwarden_wsgi MODULE:CALLABLE`: see the package's documentation."""

from . import main

main()
