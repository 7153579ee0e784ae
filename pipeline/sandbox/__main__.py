"""`python -m codeground.pipeline.sandbox serve ...`: the sandbox service without the full CLI."""

from .service import main

raise SystemExit(main())
