"""The model family: grid ViT, 1D ViT and causal CNN tokenizers, keyed by config kind."""
from vitok.models.cnn import CNNTokenizer
from vitok.models.vit import ViTTokenizer
from vitok.models.vit1d import ViT1DTokenizer

MODEL_CLASSES = {"vit": ViTTokenizer, "vit1d": ViT1DTokenizer, "cnn": CNNTokenizer}

__all__ = ["CNNTokenizer", "MODEL_CLASSES", "ViT1DTokenizer", "ViTTokenizer"]
