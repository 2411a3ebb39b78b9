"""Names shared across the package: the keys of inputs, targets and model outputs.

One place defines the contract between the data pipeline, the model, the losses,
post-processing and evaluation, so that a key is never spelt twice.

Shapes use B = batch, H x W = crop size, h x w = H/4 x W/4 (the stride-4 mask
resolution), N = number of cluster centers (mask slots), M = max ground-truth masks,
C = number of classes (without the void / no-object class), D = embedding width.
"""

# Label conventions. Semantic train ids are 0..C-1; IGNORE_LABEL marks void pixels.
# A panoptic id is `semantic * label_divisor + instance`; for thing classes instance
# ids start at 1, and a thing pixel with instance 0 belongs to a crowd region.
IGNORE_LABEL = 255

# ---- Input features (keys of the dict the tf.data pipeline yields). ----
IMAGE = 'image'                      # float32 [B, H, W, 3], normalised to [-1, 1].
IMAGE_ID = 'image_id'                # string [B].
# Panoptic label in train ids, padded with IGNORE_LABEL * label_divisor. int32 [B, H, W].
PANOPTIC = 'panoptic'
SEMANTIC = 'semantic'                # int32 [B, H, W], IGNORE_LABEL on void / padding.
# Index of the ground-truth mask each pixel belongs to (into the M slots), -1 on
# void, crowd and padding. This is the per-pixel instance map of the instance
# discrimination loss; one_hot(MASK_INDEX, M) are the ground-truth masks.
MASK_INDEX = 'mask_index'            # int32 [B, H, W].
PIXEL_WEIGHT = 'pixel_weight'        # float32 [B, H, W]; 0 on void, crowd, padding.
GT_CLASSES = 'gt_classes'            # int32 [B, M]; C (no-object) on padded slots.
GT_IS_THING = 'gt_is_thing'          # float32 [B, M]; 1 for thing masks.
GT_VALID = 'gt_valid'                # float32 [B, M]; 1 for real masks, 0 for padding.
# Eval only: where the (possibly resized) image sits inside the padded crop, and
# its size on disk, to map predictions back to the original image.
VALID_SIZE = 'valid_size'            # int32 [B, 2] (height, width).
ORIGINAL_SIZE = 'original_size'      # int32 [B, 2] (height, width).
# Bad records the input pipeline skipped so far (`data/record_errors.py`).
SKIPPED_RECORDS = 'skipped_records'  # int64 [B].

# ---- Model outputs (keys of the dict a model returns). ----
CLASS_LOGITS = 'class_logits'        # float32 [B, N, C + 1]; last index = no-object.
MASK_LOGITS = 'mask_logits'          # float32 [B, h, w, N].
PIXEL_EMBEDDINGS = 'pixel_embeddings'    # float32 [B, h, w, D], L2-normalised.
SEMANTIC_LOGITS = 'semantic_logits'  # float32 [B, h, w, C]; training-only head.
# The Gaussian reference mask of every cluster center (CMT, training only):
# float32 [B, N, 5], decoded by `modeling.layers.reference_mask`.
REFERENCE_MASK_PARAMETERS = 'reference_mask_parameters'
# A list with one dict per transformer layer before the last, each holding
# CLASS_LOGITS, MASK_LOGITS (and REFERENCE_MASK_PARAMETERS) for deep supervision.
AUX_OUTPUTS = 'aux_outputs'
# RFN only: the dict of the first network's outputs (same keys, incl. AUX_OUTPUTS).
FIRST_NETWORK_OUTPUTS = 'first_network_outputs'
# Visualisation only (returned when asked): per layer, the clustering result
# (softmax over clusters) and the cross-attention map (softmax over pixels), both
# averaged over heads. Lists of float32 [B, h', w', N] with h' x w' the layer's size.
CLUSTERING_MAPS = 'clustering_maps'
ATTENTION_MAPS = 'attention_maps'

# ---- Post-processed predictions. ----
PANOPTIC_PRED = 'panoptic_pred'      # int32 [B, H, W], semantic * divisor + instance.
SEMANTIC_PRED = 'semantic_pred'      # int32 [B, H, W].
INSTANCE_PRED = 'instance_pred'      # int32 [B, H, W].
# Per cluster: the panoptic id of its segment (-1 if no pixel survives) and its
# class confidence (0 if none). int32 / float32 [B, N].
SEGMENT_PANOPTIC_IDS = 'segment_panoptic_ids'
SEGMENT_SCORES = 'segment_scores'
