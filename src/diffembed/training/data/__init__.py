"""Training data builders (`diffembed data pairs`): real text no one here wrote -> training pairs.

One module per source (apt_descriptions, rst_sections, man_pages), pairs.py for the rules every
source shares (limits, dedup, dev split, writing), reserved.py for the evaluation-only sources that
are refused. ``build_pairs`` runs them together.
"""

from diffembed.training.data.build import SOURCES, build_pairs

__all__ = ["SOURCES", "build_pairs"]
