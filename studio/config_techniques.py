"""The settings of the training techniques for likeness (pivotal tuning, face-weighted loss, aspect-ratio
buckets), as field groups that :mod:`studio.config`'s sections inherit; they are ordinary keys of
those sections (``lora.train_text_embeddings``, ``train.text_embeddings_lr``,
``data.mask_weight``...). The README's Training section says what each is for and costs."""

from __future__ import annotations

from pydantic import BaseModel, Field


class PivotalLoraFields(BaseModel):
    train_text_embeddings: bool = Field(False, description="Pivotal tuning: the dataset trigger "
                                        "becomes new tokens (<s0><s1>) whose embeddings train "
                                        "with the LoRA (written as RUN/embeddings.safetensors).")
    num_new_tokens: int = Field(2, ge=1, le=16, description="New tokens that replace the trigger "
                                "(pivotal tuning), inserted in both tokenizers.")


class PivotalTrainFields(BaseModel):
    text_embeddings_lr: float = Field(3e-4, gt=0, description="Learning rate of the new token "
                                      "embeddings (pivotal tuning; Prodigy uses learning_rate).")
    text_embeddings_frac: float = Field(0.5, gt=0, le=1, description="Fraction of the steps during "
                                        "which the new token embeddings train; then they stay.")


class LikenessDataFields(BaseModel):
    mask_weight: float = Field(1.0, ge=0, le=1, description="Loss weight outside each image's "
                               "face mask (masks/ of a prepared dataset): 1.0 = off, 0.3 "
                               "concentrates the loss on face and hair.")
    buckets: bool = Field(False, description="Aspect-ratio buckets: group images by shape into "
                          "SDXL's resolutions (about resolution^2 pixels, sides multiples of 64) "
                          "instead of square crops; each batch comes from one bucket.")
