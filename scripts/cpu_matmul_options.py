"""`python -m embeddinggemma.compile_options` from a source checkout."""

from embeddinggemma.compile_options import main

raise SystemExit(main())
