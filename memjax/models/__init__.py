"""memjax's models: any Flax model trains as an ensemble, named by `ModelConfig.kind`.

- `memjax.models.registry`: the registry (`register_model`, `build_network`, the built-in
  names mlp, cnn / paper-cnn, resnet9, resnet18, and `package.module:factory` for a model
  written outside memjax);
- `memjax.models.base`: the paper's MLP and CNN, the convolution forms,
  `ComputeDtypeBatchNorm`, the per-member regularizers and the precision helpers
  (`in_compute_dtype`, `computing_in`);
- `memjax.models.network`: `Network` (a module's pure init / apply, with per-channel input
  normalization, and the checks of a module written outside memjax);
- `memjax.models.resnet`: ResNet-9 (Page's fast CIFAR-10 ResNet) and ResNet-18 (CIFAR).

Every public name is importable from memjax.models.
"""
from memjax.models.base import (COMPUTE_DTYPES, CONV_FORMS, MLP, REGULARIZERS, ApplyFn,
                                ComputeDtypeBatchNorm, PaperCNN, Regularization, Variables,
                                as_float, computing_in, im2col_conv, in_compute_dtype)
from memjax.models.network import Network
from memjax.models.registry import (BUILD_OPTIONS, ModelEntry, build_network, check_kind,
                                    is_factory_path, model_entry, plan_kind, register_model,
                                    registered_models)
from memjax.models.resnet import BasicBlock, ConvBN, ResNet9, ResNet18

__all__ = ["COMPUTE_DTYPES", "CONV_FORMS", "MLP", "REGULARIZERS", "ApplyFn",
           "ComputeDtypeBatchNorm", "Network", "PaperCNN", "Regularization", "Variables",
           "as_float", "computing_in", "im2col_conv", "in_compute_dtype", "BUILD_OPTIONS",
           "ModelEntry", "build_network", "check_kind", "is_factory_path", "model_entry",
           "plan_kind", "register_model", "registered_models", "BasicBlock", "ConvBN",
           "ResNet9", "ResNet18"]
