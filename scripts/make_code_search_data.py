"""`python -m embeddinggemma.train.code_search_data` from a source checkout."""

from embeddinggemma.train.code_search_data import main

raise SystemExit(main())
