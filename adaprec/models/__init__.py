"""Model zoo: small ``nn.Module``s built from keyword arguments only, so Hydra can instantiate
them by ``_target_``."""
from adaprec.models.cnn import SmallCNN
from adaprec.models.gpt import GPT, CausalAttentionCore
from adaprec.models.mlp import MLP
from adaprec.models.regressor import RegressorMLP
from adaprec.models.resnet import BasicBlock, resnet18

__all__ = ["MLP", "RegressorMLP", "SmallCNN", "resnet18", "BasicBlock", "GPT", "CausalAttentionCore"]
