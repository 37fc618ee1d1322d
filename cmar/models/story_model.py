"""StoryModel: k frames (image + caption) -> the caption of frame k+1, and its image embedding.

Data flow for a :class:`cmar.data.Batch` of B windows, k context frames, d = d_model::

    context images (B, k, 3, S, S) --image_encoder--> regions (B*k, R, d), image (B*k, d)
                                   [--region_encoder: self-attention among a frame's regions]
                                   [--look_ahead here with model.look_ahead_turn=false]
    context tokens (B, k, Lc)      --text_encoder---> tokens  (B*k, Lc, d), text (B*k, d)
    fusion per frame (concat | cross | cmar)        -> frame (B*k, d), refined tokens
    story_encoder over the k frames                 -> story (B, k, d), summary (B, d)
    look_ahead (default; model.look_ahead=false skips it): each fused region (the encoder's
     where the fusion returns none) points at where it goes next, its pointer reading its
     frame's story state, and reads what lies there -> the regions the memory holds
    memory = story states [+ fused words and regions of every context frame]
             [+ target-frame regions if grounded | + predicted next-frame regions]
    next_regions(context regions, frame k's)        -> predicted regions of frame k+1 (B, R, d),
                                                       read by the region encoder for the memory
    decoder(target_in (B, L), memory)               -> logits (B, L, V)
    next_frame(summary)                             -> predicted image embedding (B, d)

Letterbox padding: :meth:`StoryModel.region_mask` turns each frame's content box
(``Batch.context_content``, ``target_content``) into a mask (N, R) of the regions that see
picture. A region wholly in the padding is no key of any attention (region encoder, fusion,
decoder memory), no part of any pooled vector (both InfoNCE terms, the frame vector) and gets
0 weight in the attention maps. Square frames keep every region: mask None, unmasked code.

``forward`` returns the logits and the loss terms (caption cross-entropy, alignment InfoNCE of
the image and text vectors from before fusion, next-frame InfoNCE; the grounding loss, the
dense next-frame loss of :mod:`cmar.models.imagine`, the describe loss of
:mod:`cmar.models.describe`, the look-ahead and move losses of
:mod:`cmar.models.look_ahead` where their weights ask); the trainer weights them.
``components=`` replaces any part: ``StoryModel(cfg, ..., components={"fusion": MyFusion(...)})``.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass, field

import torch
from torch import nn

from cmar.models.describe import RegionDescriber
from cmar.models.fusion import FusedFrame
from cmar.models.hf.loading import hf_source
from cmar.models.image_encoder import RegionEncoder, region_grid, region_mask, takes
from cmar.models.imagine import NextRegions, next_regions_loss
from cmar.models.look_ahead import LookAhead, look_ahead_loss, move_loss
from cmar.models.losses import grounding_loss, info_nce, token_nll
from cmar.models.registry import DECODERS, FUSIONS, IMAGE_ENCODERS, count_parameters
from cmar.models.sequence import StoryEncoder, TextEncoder
from cmar.settings import ModelConfig, check_model

PARTS = ("image_encoder", "text_encoder", "fusion", "story_encoder", "decoder", "next_frame")
FRAME_POSITIONS = 32  # rows of the frame-position table unless data.k needs more
MEMORY_KINDS = 4  # story state, caption token, context-frame region, target-frame region


def pretrained_builders(cfg: ModelConfig, vocab_size: int, image_size: int, max_len: int,
                        pad_id: int, bos_id: int, eos_id: int, unk_id: int | None) -> dict:
    """Builders of the parts the config names ``hf:<source>`` (:mod:`cmar.models.hf`)."""
    from cmar.models import hf

    checkpointing = cfg.gradient_checkpointing
    builders = {}
    if source := hf_source(cfg.image_encoder):
        builders["image_encoder"] = lambda: hf.HFImageEncoder(
            source, cfg.d_model, image_size, cfg.freeze_image_encoder, checkpointing)
    if source_text := hf_source(cfg.text_encoder):
        builders["text_encoder"] = lambda: hf.HFTextEncoder(
            source_text, cfg.d_model, cfg.freeze_text_encoder, checkpointing)
    if source_decoder := hf_source(cfg.decoder):
        builders["decoder"] = lambda: hf.HFDecoder(
            source_decoder, vocab_size, cfg.d_model, pad_id, bos_id, eos_id, unk_id, max_len,
            cfg.freeze_decoder, checkpointing)
    return builders


class NextFrameHead(nn.Module):
    """Story summary (B, d) -> predicted embedding of frame k+1's image (B, d)."""

    def __init__(self, d_model: int, dropout: float = 0.1):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(d_model, 2 * d_model), nn.GELU(),
                                 nn.Dropout(dropout), nn.Linear(2 * d_model, d_model))

    def forward(self, summary: torch.Tensor) -> torch.Tensor:
        return self.mlp(summary)


@dataclass
class Encoded:
    memory: torch.Tensor  # (B, M, d)
    memory_mask: torch.Tensor  # (B, M) True on real entries
    memory_ids: torch.Tensor  # (B, M) the context token an entry holds, [PAD] for the others
    summary: torch.Tensor  # (B, d)
    fused: FusedFrame  # per context frame, N = B * k
    image: torch.Tensor  # (B*k, d) each context image's vector, before fusion
    text: torch.Tensor  # (B*k, d) each context caption's vector, before fusion: the alignment
    #                     loss compares these two (fused vectors would see the other modality,
    #                     making it trivial)
    target: tuple[torch.Tensor, torch.Tensor] | None = None  # target frame (regions, global),
    #                                                           encoded in grounded mode
    region_mask: torch.Tensor | None = None  # (B*k, R) True on context regions that see
    #                                          picture; None: every region does
    target_region_mask: torch.Tensor | None = None  # (B, R) the same of the target frame,
    #                                                 grounded mode only
    regions: torch.Tensor | None = None  # (B*k, R, d) each context frame's regions from the
    #                                      image encoder (before fusion; after the look-ahead)
    predicted: torch.Tensor | None = None  # (B, R, d) the predicted regions of frame k+1,
    #                                        as the image encoder gives them (before the region
    #                                        encoder, which then reads them for the memory)
    newest: torch.Tensor | None = None  # (B, R, d) frame k's regions from the image encoder,
    #                                     what the prediction starts from
    true_grid: tuple[torch.Tensor, torch.Tensor] | None = None  # the true frame k+1 from the
    #                               image encoder, when teacher forcing (model.teacher_regions)
    #                               encoded it: regions (B, R, d), vector (B, d)
    pointer: torch.Tensor | None = None  # (B*k, R, R) the look-ahead's logits: where each
    #                                      context region's content goes in the next frame


@dataclass
class Imagined:
    """What :meth:`StoryModel.imagine` gives (all None when the model does not imagine)."""

    memory: torch.Tensor | None = None  # (B, R, d) what the decoder memory holds of frame k+1
    mask: torch.Tensor | None = None  # (B, R) True on its real entries
    predicted: torch.Tensor | None = None  # (B, R, d) the prediction, image encoder's space
    newest: torch.Tensor | None = None  # (B, R, d) frame k's regions it started from
    true_grid: tuple[torch.Tensor, torch.Tensor] | None = None  # the true frame k+1, when
    #                                                              teacher forcing encoded it


@dataclass
class ModelOutput:
    logits: torch.Tensor  # (B, L, V)
    losses: dict[str, torch.Tensor] = field(default_factory=dict)  # caption, align, next
    next_pred: torch.Tensor | None = None  # (B, d) predicted next-frame embedding
    next_true: torch.Tensor | None = None  # (B, d) encoder embedding of the true next frame
    attention: torch.Tensor | None = None  # (B, k, rounds, Lc, R) word -> region weights
    encoded: Encoded | None = None  # the memory and fused frames this output came from


class StoryModel(nn.Module):
    def __init__(self, cfg: ModelConfig, vocab_size: int, image_size: int, mode: str = "next",
                 max_len: int = 40, pad_id: int = 0, bos_id: int = 1, eos_id: int = 2,
                 max_frames: int = FRAME_POSITIONS, components: dict | None = None,
                 unk_id: int | None = 3):
        super().__init__()
        self.cfg, self.mode, self.max_len = cfg, mode, max_len
        self.init_args = dict(vocab_size=vocab_size, image_size=image_size, mode=mode,
                              max_len=max_len, pad_id=pad_id, bos_id=bos_id, eos_id=eos_id,
                              max_frames=max_frames, unk_id=unk_id)  # what save_model stores
        self.pad_id, self.bos_id, self.eos_id = pad_id, bos_id, eos_id
        d, drop = cfg.d_model, cfg.dropout
        components = dict(components or {})
        unknown = set(components) - set(PARTS)
        if unknown:
            raise KeyError(f"unknown components {sorted(unknown)}; parts are {PARTS}")
        check_model(cfg, fusion_given="fusion" in components)  # as load_config does
        budget = count_parameters(FUSIONS.build("cmar", d_model=d, n_heads=cfg.n_heads,
                                                rounds=cfg.cmar_rounds, dropout=drop))
        builders = {
            "image_encoder": lambda: IMAGE_ENCODERS.build(
                cfg.image_encoder, d_model=d, image_size=image_size,
                freeze=cfg.freeze_image_encoder, pretrained=cfg.pretrained),
            "text_encoder": lambda: TextEncoder(vocab_size, d, cfg.text_encoder,
                                                cfg.encoder_layers, drop, cfg.n_heads, pad_id),
            "fusion": lambda: FUSIONS.build(cfg.fusion, d_model=d, n_heads=cfg.n_heads,
                                            rounds=cfg.cmar_rounds, dropout=drop, budget=budget),
            "story_encoder": lambda: StoryEncoder(d, cfg.story_encoder, cfg.encoder_layers, drop,
                                                  cfg.n_heads),
            "decoder": lambda: DECODERS.build(cfg.decoder, vocab_size=vocab_size, d_model=d,
                                              n_heads=cfg.n_heads, n_layers=cfg.decoder_layers,
                                              dropout=drop, pad_id=pad_id, bos_id=bos_id,
                                              eos_id=eos_id, unk_id=unk_id, max_len=max_len,
                                              **({"copy": True} if cfg.copy_tokens else {})),
            "next_frame": lambda: NextFrameHead(d, drop),
            **pretrained_builders(cfg, vocab_size, image_size, max_len, pad_id, bos_id, eos_id,
                                  unk_id),
        }
        for part in PARTS:  # `is None`, not `or`: a given module may be falsy (empty, or __len__)
            given = components.get(part)
            setattr(self, part, builders[part]() if given is None else given)
        # optional, after any image encoder (model.region_layers; None keeps old checkpoints)
        self.region_encoder = (RegionEncoder(d, cfg.region_layers, cfg.n_heads, drop)
                               if cfg.region_layers else None)
        # which context frame a token is from: one row per frame, so max_frames >= data.k
        self.frame_position = nn.Embedding(max_frames, d)
        self.memory_kind = nn.Embedding(MEMORY_KINDS, d)
        # optional, built only when asked (older checkpoints hold neither)
        self.next_regions = (NextRegions(d, cfg.n_heads, 2, drop, max_frames,
                                         cfg.predict_regions_motion)
                             if cfg.predict_regions else None)
        self.describer = (RegionDescriber(vocab_size, d, drop)  # training-only supervision
                          if cfg.w_describe > 0 else None)
        self.look_ahead = (LookAhead(d, self.grid(), drop, cfg.look_ahead_turn,
                                     move=cfg.w_move > 0)
                           if cfg.look_ahead else None)
        self.encoder_region_kind = (nn.Parameter(torch.zeros(d))
                                    if cfg.memory_region_source == "both" else None)
        if cfg.learn_temperature:  # log(1 / temperature) of the alignment and next losses
            start = math.log(1 / cfg.infonce_temperature)
            self.infonce_log_scale = nn.Parameter(torch.full((2,), start))

    def temperatures(self) -> tuple[float | torch.Tensor, float | torch.Tensor]:
        """The temperatures of the alignment and next-frame InfoNCE losses: the configured
        one, or the learned ones (never below 0.01, as in CLIP)."""
        if not self.cfg.learn_temperature:
            return self.cfg.infonce_temperature, self.cfg.infonce_temperature
        scale = self.infonce_log_scale.clamp(max=math.log(100)).exp()
        return 1 / scale[0], 1 / scale[1]

    def parameter_counts(self) -> dict[str, int]:
        counts = {part: count_parameters(getattr(self, part)) for part in PARTS}
        for extra in ("region_encoder", "next_regions", "describer", "look_ahead"):
            if getattr(self, extra) is not None:
                counts[extra] = count_parameters(getattr(self, extra))
        counts["total"] = count_parameters(self)
        return counts

    def grid(self) -> tuple[int, int]:
        """The (rows, cols) of the image encoder's regions (it must name a grid)."""
        grid = region_grid(self.image_encoder)
        if grid is None:
            raise ValueError(f"{type(self.image_encoder).__name__} names no grid of regions: "
                             "model.look_ahead needs one (give the encoder a `grid` or "
                             "`n_regions`, or set model.look_ahead=false)")
        return grid

    def region_mask(self, content: torch.Tensor | None) -> torch.Tensor | None:
        """Content boxes (..., 4) (``Batch.context_content`` / ``target_content``, frame
        pixels) -> bool (..., R), True on the regions of the image encoder's grid that see any
        picture (:func:`cmar.models.image_encoder.region_mask`). None, the unmasked path, when
        there are no boxes (batches of frames that fill their square carry none: see
        :func:`cmar.data.batches.fills_frame`) or when the encoder names no grid. Nothing here
        reads a tensor's value, so the host never waits on the device."""
        grid = None if content is None else region_grid(self.image_encoder)
        if grid is None:
            return None
        return region_mask(content, self.init_args["image_size"], grid)

    def encode_frames(self, images: torch.Tensor | None, features: torch.Tensor | None,
                      flat: bool = False, region_mask: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """Regions (N, R, d) and a vector (N, d) of frames given as images (N, 3, S, S) or
        as cached backbone features (N, C, h, w), whichever is not None; ``flat``: the
        frames come as (B, k, ...) and N = B * k. The region encoder, if any, comes last.
        ``region_mask`` (N, R) (see :meth:`region_mask`): the regions the vector pools and
        the region encoder reads (an image encoder pools them only if it takes the mask)."""
        return self.refine(self.encode_grid(images, features, flat, region_mask), region_mask)

    def encode_grid(self, images: torch.Tensor | None, features: torch.Tensor | None,
                    flat: bool = False, region_mask: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The image encoder's own output, before the region encoder: regions (N, R, d) and
        their mean (N, d); arguments as in :meth:`encode_frames`."""
        method = (self.image_encoder.from_features if features is not None
                  else self.image_encoder.forward)
        extra = ({"region_mask": region_mask}
                 if region_mask is not None and takes(method, "region_mask") else {})
        if features is not None:
            return self.image_encoder.from_features(
                features.flatten(0, 1) if flat else features, **extra)
        return self.image_encoder(images.flatten(0, 1) if flat else images, **extra)

    def refine(self, encoded: tuple[torch.Tensor, torch.Tensor],
               region_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The region encoder, if any, over an image encoder's (regions (N, R, d), vector
        (N, d)): it returns new ones; without one, ``encoded`` unchanged."""
        if self.region_encoder is None:
            return encoded
        if region_mask is None:
            return self.region_encoder(encoded[0])
        return self.region_encoder(encoded[0], region_mask)

    def fusion_mask(self, keep: torch.Tensor | None) -> dict:
        """The fusion's ``region_mask`` argument; none when every region is kept or when its
        ``forward`` takes none (it then reads padding regions, with a warning)."""
        if keep is None:
            return {}
        if takes(self.fusion.forward, "region_mask"):
            return {"region_mask": keep}
        warnings.warn(f"{type(self.fusion).__name__}.forward takes no region_mask: it reads "
                      "the regions that lie wholly in letterbox padding (see the fusion "
                      "contract in cmar/models/fusion.py)", stacklevel=3)
        return {}

    def encode(self, batch, return_attention: bool = False) -> Encoded:
        b, k = batch.context_tokens.shape[:2]
        frames = self.frame_position.num_embeddings
        if k > frames:
            raise ValueError(f"this model holds positions for {frames} context frames "
                             f"(max_frames), the batch has k = {k}: build it with "
                             "max_frames >= data.k (build_model does)")
        keep = self.region_mask(getattr(batch, "context_content", None))  # (B, k, R) or None
        keep = None if keep is None else keep.flatten(0, 1)  # (B*k, R)
        regions, image = self.encode_frames(batch.context_images, batch.context_features,
                                            flat=True, region_mask=keep)  # (B*k, R, d), (B*k, d)
        pointer = None
        if self.look_ahead is not None and not self.cfg.look_ahead_turn:  # each region also
            regions, pointer = self.look_ahead(regions, keep)  # reads where it is going next
        mask = batch.context_mask.flatten(0, 1)  # (B*k, Lc)
        tokens, text = self.text_encoder(batch.context_tokens.flatten(0, 1), mask)
        fused = self.fusion(regions, image, tokens, text, mask, return_attention,
                            **self.fusion_mask(keep))
        story, summary = self.story_encoder(fused.frame.view(b, k, -1))  # (B, k, d), (B, d)
        if self.look_ahead is not None and self.cfg.look_ahead_turn:  # whose turn is next
            # the fused regions; the encoder's where a fusion returns none (it refined none)
            base = regions if fused.regions is None else fused.regions  # (B*k, R, d)
            looked, pointer = self.look_ahead(base, keep, story.flatten(0, 1))
            fused = dataclasses.replace(fused, regions=looked)  # what the memory holds
        kinds = self.memory_kind.weight
        parts = [story + kinds[0]]
        masks = [torch.ones(b, k, dtype=torch.bool, device=story.device)]
        if self.cfg.memory_tokens:
            where = self.frame_position.weight[:k].repeat_interleave(mask.shape[1], 0)
            parts.append(fused.tokens.reshape(b, -1, story.shape[-1]) + where + kinds[1])
            masks.append(mask.reshape(b, -1))
        if self.cfg.memory_regions:
            for held, extra in self.memory_regions(fused, regions):
                r = held.shape[1]
                where = self.frame_position.weight[:k].repeat_interleave(r, 0)
                parts.append(held.reshape(b, k * r, -1) + where + kinds[2] + extra)
                masks.append(torch.ones(b, k * r, dtype=torch.bool, device=story.device)
                             if keep is None else keep.reshape(b, k * r))  # padding out
        target = target_keep = None
        imagined = Imagined()
        if self.next_regions is not None:  # imagine frame k+1, then let the decoder read it
            imagined = self.imagine(batch, fused, regions, story, keep)
            parts.append(imagined.memory + kinds[3])  # where grounded mode puts the real frame
            masks.append(imagined.mask)
        if self.mode == "grounded":  # the target frame's image joins the memory
            target_keep = self.region_mask(getattr(batch, "target_content", None))  # (B, R)
            target = self.encode_frames(batch.target_image, batch.target_features,
                                        region_mask=target_keep)
            target_regions = target[0]  # (B, R, d)
            parts.append(target_regions + kinds[3])
            masks.append(torch.ones(target_regions.shape[:2], dtype=torch.bool,
                                    device=story.device) if target_keep is None else target_keep)
        memory = torch.cat(parts, 1)
        ids = torch.full(memory.shape[:2], self.pad_id, dtype=torch.long, device=memory.device)
        if self.cfg.memory_tokens:  # the word entries follow the k story states
            ids[:, k:k + mask.numel() // b] = batch.context_tokens.reshape(b, -1)
        return Encoded(memory, torch.cat(masks, 1), ids, summary, fused, image, text, target,
                       keep, target_keep, regions, imagined.predicted, imagined.newest,
                       imagined.true_grid, pointer)

    def imagine(self, batch, fused: FusedFrame, regions: torch.Tensor, story: torch.Tensor,
                keep: torch.Tensor | None) -> Imagined:
        """The predicted regions of frame k+1 (:mod:`cmar.models.imagine`) and what the
        decoder memory holds of them: ``regions`` (B*k, R, d) the context frames' regions from
        the image side, ``story`` (B, k, d) the story states, ``keep`` (B*k, R) or None."""
        b, k = story.shape[:2]
        reads = self.cfg.predict_regions_from
        source = (fused.regions if reads in ("fused", "story") and fused.regions is not None
                  else regions)
        frames_keep = None if keep is None else keep.view(b, k, -1)
        last_keep = None if keep is None else frames_keep[:, -1]  # frame k's picture area
        newest = self.newest_grid(batch, last_keep)[0]  # (B, R, d) frame k, before the
        #                                                 region encoder
        predicted = self.next_regions(source.view(b, k, *source.shape[1:]), newest, frames_keep,
                                      story if reads == "story" else None)  # (B, R, d)
        read, true_grid = predicted, None
        if self.training and self.cfg.teacher_regions > 0:  # teacher forcing: some windows
            # read the true frame k+1 instead (never in evaluation)
            true_grid = self.encode_grid(batch.target_image, batch.target_features,
                                         region_mask=self.region_mask(
                                             getattr(batch, "target_content", None)))
            chosen = torch.rand(b) < self.cfg.teacher_regions  # (B,) the global generator
            read = torch.where(chosen.to(predicted.device)[:, None, None], true_grid[0],
                               predicted)
        held, _ = self.refine((read, read.mean(1)), last_keep)  # as a real frame's would be
        mask = (torch.ones(held.shape[:2], dtype=torch.bool, device=held.device)
                if last_keep is None else last_keep)
        return Imagined(held, mask, predicted, newest, true_grid)

    def newest_grid(self, batch, keep: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The image encoder's own output (:meth:`encode_grid`) for each window's newest
        context frame (frame k): regions (B, R, d), vector (B, d); ``keep`` (B, R) its
        regions that see picture, or None."""
        images, features = batch.context_images, batch.context_features
        return self.encode_grid(None if images is None else images[:, -1],
                                None if features is None else features[:, -1],
                                region_mask=keep)

    def memory_regions(self, fused: FusedFrame, regions: torch.Tensor
                       ) -> list[tuple[torch.Tensor, torch.Tensor | float]]:
        """The context regions (B*k, R, d) the memory holds (``model.memory_region_source``),
        each with what is added to tell it apart: the fused ones, the encoder's (a visual
        route the captions cannot flood), or both (the encoder's then carry a learned
        offset). A fusion that returns no regions leaves the fused ones out, unless the
        look-ahead follows the story encoder (``model.look_ahead_turn``): it then refines the
        encoder's regions, and those stand in for the fused ones."""
        source = self.cfg.memory_region_source
        out = []
        if source in ("fused", "both") and fused.regions is not None:
            out.append((fused.regions, 0.0))
        if source == "encoder":
            out.append((regions, 0.0))
        elif source == "both":
            out.append((regions, self.encoder_region_kind))
        return out

    def forward(self, batch, return_attention: bool = False) -> ModelOutput:
        ground = self.cfg.w_ground > 0 and batch.context_boxes is not None
        enc = self.encode(batch, return_attention or ground)
        logits = self.decoder(batch.target_in, enc.memory, enc.memory_mask,
                              **self.copy_from(enc))  # (B, L, V)
        per_token = token_nll(logits, batch.target_out)  # (B, L)
        caption = (per_token * batch.target_mask).sum() / batch.target_mask.sum()
        # The target of the next-frame losses (already encoded in grounded mode).
        target_keep = (enc.target_region_mask if enc.target is not None
                       else self.region_mask(getattr(batch, "target_content", None)))
        true_grid = enc.true_grid
        if enc.target is not None:
            next_true = enc.target[1]
        else:
            if true_grid is None:
                true_grid = self.encode_grid(batch.target_image, batch.target_features,
                                             region_mask=target_keep)
            next_true = self.refine(true_grid, target_keep)[1]
        next_pred = self.next_frame(enc.summary)
        losses = {"caption": caption, **self.contrastive_losses(batch, enc, next_pred, next_true)}
        if enc.predicted is not None and self.cfg.w_regions > 0:
            losses["regions"] = next_regions_loss(enc.predicted, true_grid[0], enc.newest,
                                                  target_keep)
        if self.describer is not None and batch.context_descriptions is not None:
            losses["describe"] = self.describer.loss(
                self.looked_regions(enc), batch.context_entity_boxes.flatten(0, 1),
                batch.context_descriptions.flatten(0, 1),
                batch.context_description_mask.flatten(0, 1), self.init_args["image_size"],
                enc.region_mask)
        if (enc.pointer is not None and self.cfg.w_look_ahead > 0
                and batch.context_move_from is not None):
            losses["look_ahead"] = look_ahead_loss(
                enc.pointer, batch.context_move_from.flatten(0, 1),
                batch.context_move_to.flatten(0, 1), self.init_args["image_size"],
                enc.region_mask)
        if (self.look_ahead is not None and self.look_ahead.move is not None
                and batch.context_move_from is not None):
            losses["move"] = move_loss(
                self.look_ahead.move(self.looked_regions(enc)),
                batch.context_move_from.flatten(0, 1), batch.context_move_to.flatten(0, 1),
                self.init_args["image_size"], enc.region_mask)
        attention = enc.fused.attention
        if attention is not None:
            b, k = batch.context_tokens.shape[:2]
            attention = attention.view(b, k, *attention.shape[1:])
        if ground:
            if attention is None:
                raise ValueError("model.w_ground > 0, but this fusion returns no "
                                 "word-to-region attention")
            losses["ground"] = grounding_loss(attention, batch.context_boxes,
                                              batch.context_mask, self.init_args["image_size"])
        return ModelOutput(logits, losses, next_pred, next_true, attention, enc)

    def looked_regions(self, enc: Encoded) -> torch.Tensor:
        """The context regions (B*k, R, d) the describe and move losses read: the
        image side's (after any look-ahead), or, when the look-ahead follows the story encoder
        (``model.look_ahead_turn``), the fused regions it refined, so that describing where a
        character faces, or how far it goes, trains the pointer and its glimpse either way."""
        if self.look_ahead is not None and self.cfg.look_ahead_turn:
            return enc.fused.regions
        return enc.regions

    def copy_from(self, enc: Encoded) -> dict:
        """The decoder's ``memory_ids`` argument when it copies (``model.copy_tokens``); none
        otherwise, so a custom decoder without that argument still fits."""
        return {"memory_ids": enc.memory_ids} if self.cfg.copy_tokens else {}

    def contrastive_losses(self, batch, enc: Encoded, next_pred: torch.Tensor,
                           next_true: torch.Tensor) -> dict[str, torch.Tensor]:
        """The alignment InfoNCE over the batch's context frames (image i with caption i) and
        the next-frame InfoNCE (prediction i with the encoded frame k+1 of window i); a frame
        that two overlapping windows share is never its own negative."""
        context_ids, target_ids = batch.frame_ids(batch.context_tokens.shape[1])
        context_ids = context_ids.flatten()  # (B*k,) the order of enc.fused
        align_tau, next_tau = self.temperatures()
        align = info_nce(enc.image, enc.text, align_tau, context_ids)
        context = enc.image  # (B*k, d) the context frames, in the target's space
        if self.cfg.next_target == "detached":
            next_true, context = next_true.detach(), context.detach()
        story = self.cfg.next_negatives == "story"
        following = info_nce(next_pred, next_true, next_tau, target_ids,
                             context if story else None, context_ids if story else None)
        return {"align": align, "next": following}

    @torch.no_grad()
    def generate(self, batch, strategy: str = "greedy", max_len: int | None = None,
                 **options) -> torch.Tensor:
        """Free-running captions as token ids (B, T), in eval mode (no dropout); options as in
        :meth:`cmar.models.decoding.Decoding.generate`."""
        was_training = self.training
        self.eval()
        try:
            enc = self.encode(batch)
            return self.decoder.generate(enc.memory, enc.memory_mask, strategy,
                                         max_len or self.max_len, **options,
                                         **self.copy_from(enc))
        finally:
            self.train(was_training)
