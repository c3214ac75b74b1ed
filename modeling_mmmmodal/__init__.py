"""MMMModal: multi-image, multi-audio, multi-turn multimodal chat models for transformers.

>>> from modeling_mmmmodal import MMMModalConfig, MMMModalForConditionalGeneration, MMMModalProcessor
"""

from .configuration_mmmmodal import MMMModalConfig
from .modeling_mmmmodal import MMMModalForConditionalGeneration, MMMModalModel, MMMModalPreTrainedModel
from .processing_mmmmodal import MMMModalProcessor

__all__ = [
    "MMMModalConfig",
    "MMMModalForConditionalGeneration",
    "MMMModalModel",
    "MMMModalPreTrainedModel",
    "MMMModalProcessor",
]
