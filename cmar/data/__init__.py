"""The data layer: sources -> validated stories -> windows -> padded batches.

Names others rely on: :func:`split_frames`, :func:`make_shapestories`, :func:`load_stories`.
"""

from cmar.data.batches import Batch, Collate, WindowDataset, make_loader
from cmar.data.images import ImageStore, image_transform
from cmar.data.loading import STORYREASONING_HUB_ID, carve_split, load_stories, open_source
from cmar.data.markup import (
    Mention,
    Segment,
    apply_caption_policy,
    frame_entities,
    parse_boxes,
    parse_segments,
    parse_tables,
    split_frames,
)
from cmar.data.prepare import StoryData, load_split, prepare_data
from cmar.data.shapes_oracle import oracle_predictions
from cmar.data.shapes_world import Knobs
from cmar.data.shapestories import make_shapestories, shapestories_on_disk
from cmar.data.story import LoadReport, Story, StoryList
from cmar.data.tokenizer import decode, encode, load_tokenizer, save_tokenizer, train_tokenizer
from cmar.data.windows import MODES, Window, make_windows, window_id

__all__ = [
    "Batch", "Collate", "ImageStore", "Knobs", "LoadReport", "MODES", "Mention",
    "STORYREASONING_HUB_ID", "Segment", "Story", "StoryData", "StoryList", "Window",
    "WindowDataset", "apply_caption_policy", "carve_split", "decode", "encode", "frame_entities",
    "image_transform", "load_split", "load_stories", "load_tokenizer", "make_loader",
    "make_shapestories", "make_windows", "open_source", "oracle_predictions", "parse_boxes",
    "parse_segments", "parse_tables", "prepare_data", "save_tokenizer", "shapestories_on_disk",
    "split_frames", "train_tokenizer", "window_id",
]
