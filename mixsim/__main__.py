"""``python -m mixsim`` is the ``mixsim`` command."""
from .cli import main

raise SystemExit(main())
