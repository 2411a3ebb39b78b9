"""Panoptic evaluation (PQ / SQ / RQ, mIoU) and submission formats."""
