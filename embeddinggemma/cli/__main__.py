"""`python -m embeddinggemma.cli ARGS`: the `embeddinggemma` command."""

from embeddinggemma.cli import main

raise SystemExit(main())
