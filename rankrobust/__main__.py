"""`python -m rankrobust ...` is the `rankrobust` command."""
from rankrobust.cli import main

raise SystemExit(main())
