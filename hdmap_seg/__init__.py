"""hdmap_seg: Twins segmentation of survey-drive frames into HD-map layers (README.md, docs/architecture.md)."""

import os

# albumentations asks PyPI for a newer release whenever it is imported (a 2 s timeout and a warning when
# offline): batch jobs on cluster nodes without internet would pay that in every process and DataLoader worker.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
