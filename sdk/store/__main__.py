"""``python -m engrain.store --schema-doc > docs/SCHEMA.md``."""

import sys

from engrain.store.schema import main

sys.exit(main())
