"""``python -m valleys``: the ``valleys`` command (also what ``torchrun -m valleys`` runs)."""

from valleys.cli import main

raise SystemExit(main())
