"""Built-in training configs: `vlkit train --config NAME` runs NAME.py from this folder."""
