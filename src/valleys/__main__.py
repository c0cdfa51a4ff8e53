"""``python -m valleys``: the ``valleys`` command (also what ``torchrun -m valleys`` runs)."""

from valleys.commands.main import main

raise SystemExit(main())
