"""Model zoo: small, constructor-kwargs-only ``nn.Module``s that Hydra instantiates by ``_target_``."""
from adaprec.models.cnn import SmallCNN
from adaprec.models.gpt import GPT, CausalAttentionCore
from adaprec.models.mlp import MLP
from adaprec.models.regressor import RegressorMLP
from adaprec.models.resnet import BasicBlock, resnet18

__all__ = ["MLP", "RegressorMLP", "SmallCNN", "resnet18", "BasicBlock", "GPT", "CausalAttentionCore"]
