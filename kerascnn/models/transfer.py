"""Transfer learning over `keras.applications` backbones (and kerascnn's own `cnn`): the course notes' four cases.

The backbone table maps a name to a row (constructor, `preprocess_input`, default and minimum input
size, channels, named cut points). `kerascnn backbones` and the model builder read the same table.

A transfer model takes raw pixels (0..255, the dataset's own channels) like every kerascnn model:
inside it, grayscale becomes 3 channels, images are resized up to the backbone's minimum size, and
the backbone's `preprocess_input` is done by Keras' own layers (`Rescaling`, and a frozen 1x1
`Conv2D` for the RGB->BGR swap of the "caffe" mode), so artifacts need no client-side preprocessing
and `.keras` files load in plain Keras, safe_mode included, without importing kerascnn.

Strategies (the course notes' four cases, chosen by dataset size and similarity to the pre-training data):
    feature_extraction  small, similar: backbone frozen, new head (pooling, dropout, softmax).
    truncate            small, different: backbone cut at an early layer (`cut_at`), frozen, new head.
    fine_tune           large, similar: head first, then the top `unfreeze` layers at learning rate x 0.1,
                        BatchNormalization kept in inference mode; both phases in one history.
    from_scratch        large, different: the same architecture with random weights, all trainable.

Example:
    model = build_transfer_model("mobilenet_v2", (8, 8, 1), 10, weights="none", alpha=0.35)
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import re
from pathlib import Path
from typing import Callable

import keras
import numpy as np

from kerascnn.config import ModelConfig
from kerascnn.errors import ConfigError, ModelLoadError, first_line, suggest
from kerascnn.models.autoencoder import autoencoder_backbone
from kerascnn.safety import load_keras_model

DEFAULT_UNFREEZE = 20  # as in the Keras fine-tuning guide: the top 20 layers
BACKBONE_LAYER = "backbone"
POOL_LAYER = "pool"  # the head's first layer: everything after it trains, everything up to it is the feature network
CNN_FEATURES_LAYER = "conv_dropout"  # the `cnn` builder's last feature map, before Flatten and the dense head
HEAD_OPTIONS = {"dropout": 0.2, "size": None, "pooling": None}
# How the head turns the backbone's feature maps into a vector: Keras applications' own `pooling="avg"`,
# "max", or Flatten, which keeps the layout of the small maps of a (truncated) cnn on 28x28 images.
POOLING_LAYERS = {"avg": keras.layers.GlobalAveragePooling2D, "max": keras.layers.GlobalMaxPooling2D,
                  "flatten": keras.layers.Flatten}
# Constructor arguments kerascnn sets itself; every other keyword (alpha, minimalistic, ...) is a model option.
MANAGED_ARGUMENTS = {"include_top", "weights", "input_tensor", "input_shape", "pooling", "classes",
                     "classifier_activation", "name", "include_preprocessing", "dropout_rate"}


@dataclasses.dataclass(frozen=True)
class Backbone:
    """One row of the backbone table.

    Attributes:
        constructor: builds the headless network: `(include_top=False, weights=..., input_shape=..., **options)`.
        preprocess_input: the backbone's own input preprocessing; None where the network rescales itself.
        default_size: the side its ImageNet weights were trained at (None: the images' own size).
        min_size: the smallest side it accepts; smaller images are resized up inside the model.
        channels: input channels it expects (None: the images' own).
        cut_points: suggested `cut_at` layers for truncation, early to late (ends of the stride 4/8/16 stages).
        imagenet: whether `weights="imagenet"` exists for it.
        pooling: the head's default pooling (avg | max | flatten), as the network's own top does it.
        preprocessing: `keras.applications.imagenet_utils.preprocess_input`'s mode for this network
            (caffe | tf | torch), or None where the network rescales raw pixels itself.
    """

    constructor: Callable
    preprocess_input: Callable | None
    default_size: int | None
    min_size: int
    channels: int | None
    cut_points: tuple[str, ...]
    imagenet: bool = True
    pooling: str = "avg"
    preprocessing: str | None = None

    def options(self) -> dict:
        """Keyword options a config may pass to the constructor, with their defaults."""
        parameters = inspect.signature(self.constructor).parameters.values()
        return {p.name: p.default for p in parameters if p.name not in MANAGED_ARGUMENTS}


def cnn_backbone(include_top=False, weights=None, input_shape=None, filters=(16, 32, 64), conv_dropout=0.25,
                 kernel_initializer="glorot_uniform"):
    """kerascnn's `cnn` builder without its dense head: the feature maps at its `conv_dropout` layer.

    Its pre-trained weights come from a kerascnn run (`weights=PATH`), never from ImageNet.
    """
    from kerascnn.models.sequential import cnn

    full = cnn(input_shape, 2, filters=filters, conv_dropout=conv_dropout, kernel_initializer=kernel_initializer)
    return keras.Model(full.inputs[0], full.get_layer(CNN_FEATURES_LAYER).output, name="cnn_features")


_apps = keras.applications
# The `mode` each module's preprocess_input passes to imagenet_utils.preprocess_input; the modules not
# listed (mobilenet_v3, efficientnet, efficientnet_v2, convnext) rescale inside the network and their
# preprocess_input returns its input. A test compares the layers built from these with preprocess_input.
PREPROCESSING_MODES = {_apps.vgg16: "caffe", _apps.vgg19: "caffe", _apps.resnet: "caffe", _apps.densenet: "torch",
                       **{module: "tf" for module in (_apps.resnet_v2, _apps.inception_v3, _apps.inception_resnet_v2,
                                                      _apps.xception, _apps.mobilenet, _apps.mobilenet_v2,
                                                      _apps.nasnet)}}
# imagenet_utils' constants: the ImageNet channel means (caffe: BGR, 0..255; torch: RGB, 0..1) and stds.
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
TORCH_MEAN, TORCH_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _row(constructor, module, default_size, min_size=32, cut_points=()):
    return Backbone(constructor, module.preprocess_input, default_size, min_size, 3, tuple(cut_points),
                    preprocessing=PREPROCESSING_MODES.get(module))


_EFFICIENTNET_CUTS = ("block3a_expand_activation", "block4a_expand_activation", "block6a_expand_activation")
_RESNET_CUTS = {50: ("conv2_block3_out", "conv3_block4_out", "conv4_block6_out"),
                101: ("conv2_block3_out", "conv3_block4_out", "conv4_block23_out"),
                152: ("conv2_block3_out", "conv3_block8_out", "conv4_block36_out")}

BACKBONES: dict[str, Backbone] = {
    "vgg16": _row(_apps.VGG16, _apps.vgg16, 224, cut_points=("block2_pool", "block3_pool", "block4_pool")),
    "vgg19": _row(_apps.VGG19, _apps.vgg19, 224, cut_points=("block2_pool", "block3_pool", "block4_pool")),
    "resnet50": _row(_apps.ResNet50, _apps.resnet, 224, cut_points=_RESNET_CUTS[50]),
    "resnet101": _row(_apps.ResNet101, _apps.resnet, 224, cut_points=_RESNET_CUTS[101]),
    "resnet152": _row(_apps.ResNet152, _apps.resnet, 224, cut_points=_RESNET_CUTS[152]),
    "resnet50_v2": _row(_apps.ResNet50V2, _apps.resnet_v2, 224, cut_points=_RESNET_CUTS[50]),
    "resnet101_v2": _row(_apps.ResNet101V2, _apps.resnet_v2, 224, cut_points=_RESNET_CUTS[101]),
    "resnet152_v2": _row(_apps.ResNet152V2, _apps.resnet_v2, 224, cut_points=_RESNET_CUTS[152]),
    "inception_v3": _row(_apps.InceptionV3, _apps.inception_v3, 299, 75, ("mixed2", "mixed7")),
    "inception_resnet_v2": _row(_apps.InceptionResNetV2, _apps.inception_resnet_v2, 299, 75,
                                ("mixed_5b", "mixed_6a", "mixed_7a")),
    "xception": _row(_apps.Xception, _apps.xception, 299, 71, ("block2_pool", "block3_pool", "block4_pool")),
    "densenet121": _row(_apps.DenseNet121, _apps.densenet, 224, cut_points=("pool2_relu", "pool3_relu", "pool4_relu")),
    "densenet169": _row(_apps.DenseNet169, _apps.densenet, 224, cut_points=("pool2_relu", "pool3_relu", "pool4_relu")),
    "densenet201": _row(_apps.DenseNet201, _apps.densenet, 224, cut_points=("pool2_relu", "pool3_relu", "pool4_relu")),
    "mobilenet": _row(_apps.MobileNet, _apps.mobilenet, 224,
                      cut_points=("conv_pw_3_relu", "conv_pw_5_relu", "conv_pw_11_relu")),
    "mobilenet_v2": _row(_apps.MobileNetV2, _apps.mobilenet_v2, 224,
                         cut_points=("block_3_expand_relu", "block_6_expand_relu", "block_13_expand_relu")),
    "mobilenet_v3_small": _row(_apps.MobileNetV3Small, _apps.mobilenet_v3, 224,
                               cut_points=("expanded_conv_project_bn", "expanded_conv_2_add", "expanded_conv_7_add")),
    "mobilenet_v3_large": _row(_apps.MobileNetV3Large, _apps.mobilenet_v3, 224,
                               cut_points=("expanded_conv_2_add", "expanded_conv_5_add", "expanded_conv_11_add")),
    **{f"efficientnet_b{i}": _row(getattr(_apps, f"EfficientNetB{i}"), _apps.efficientnet, size,
                                  cut_points=_EFFICIENTNET_CUTS)
       for i, size in enumerate((224, 240, 260, 300, 380, 456, 528, 600))},
    **{f"efficientnet_v2_{variant.lower()}": _row(getattr(_apps, f"EfficientNetV2{variant}"), _apps.efficientnet_v2,
                                                  size, cut_points=_EFFICIENTNET_CUTS)
       for variant, size in (("B0", 224), ("B1", 240), ("B2", 260), ("B3", 300), ("S", 384), ("M", 480),
                             ("L", 480))},
    **{f"convnext_{variant.lower()}": _row(getattr(_apps, f"ConvNeXt{variant}"), _apps.convnext, 224, cut_points=tuple(
        f"convnext_{variant.lower()}_downsampling_block_{i}" for i in range(3)))
       for variant in ("Tiny", "Small", "Base", "Large", "XLarge")},
    "nasnet_mobile": _row(_apps.NASNetMobile, _apps.nasnet, 224,
                          cut_points=("reduction_concat_stem_2", "reduction_concat_reduce_4")),
    "nasnet_large": _row(_apps.NASNetLarge, _apps.nasnet, 331,
                         cut_points=("reduction_concat_stem_2", "reduction_concat_reduce_6")),
    "cnn": Backbone(cnn_backbone, None, None, 1, None, ("pool_0", "pool_1"), imagenet=False, pooling="flatten"),
    # The encoder of a `kerascnn autoencode` run (weights=RUN/model.keras; its `filters` option must match).
    "autoencoder": Backbone(autoencoder_backbone, None, None, 1, None, ("encode_0",), imagenet=False,
                            pooling="flatten"),
}


def list_backbones() -> list[dict]:
    """The backbone table as plain rows (what `kerascnn backbones --json` prints)."""
    return [{"name": name, "default_size": row.default_size, "min_size": row.min_size, "channels": row.channels,
             "constructor": f"{row.constructor.__module__.replace('.src', '')}.{row.constructor.__name__}",
             "preprocess_input": (f"{row.preprocess_input.__module__.replace('.src', '')}.preprocess_input"
                                  if row.preprocess_input else None),
             "imagenet": row.imagenet, "pooling": row.pooling, "cut_points": list(row.cut_points),
             "options": sorted(row.options())}
            for name, row in BACKBONES.items()]


def get_backbone(name: str) -> Backbone:
    if name not in BACKBONES:
        hint = suggest(name, BACKBONES)
        raise ConfigError(f"unknown backbone {name!r}{hint}; run `kerascnn backbones` for the {len(BACKBONES)} names")
    return BACKBONES[name]


def check_backbone_options(backbone: str, options: dict) -> None:
    """Refuse options that neither the head nor the backbone's constructor takes, suggesting the nearest."""
    row = get_backbone(backbone)
    valid = sorted({**HEAD_OPTIONS, **row.options()})
    for key in options:
        if key not in valid:
            hint = suggest(key, valid, cutoff=0.6)
            raise ConfigError(f"backbone {backbone!r} has no option {key!r}{hint}; options: {', '.join(valid)}")
    size = options.get("size")
    if size is not None and (not isinstance(size, int) or size < row.min_size):
        raise ConfigError(f"model.options.size {size!r} is below {backbone}'s minimum input size {row.min_size}; "
                          f"raise it or leave it unset to resize images up to the minimum")
    dropout = options.get("dropout", HEAD_OPTIONS["dropout"])
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"model option dropout must be in [0, 1), got {dropout}")
    pooling = options.get("pooling") or row.pooling
    if pooling not in POOLING_LAYERS:
        raise ConfigError(f"model option pooling must be one of {', '.join(POOLING_LAYERS)}, got {pooling!r}")


FROZEN_STRATEGIES = ("feature_extraction", "truncate", "fine_tune")  # keep (some of) the backbone's weights


def check_transfer(backbone: str, transfer: str | None, weights: str | None) -> None:
    """Refuse a strategy that would freeze a randomly initialised backbone (a model stuck near chance).

    feature_extraction and truncate freeze the whole backbone, fine_tune its BatchNormalization and
    all but the top layers: with `weights="none"` they would train a head over random features.
    Called by the runner before any data is read, and by `build_transfer_model`.
    """
    transfer = transfer or "feature_extraction"
    if transfer in FROZEN_STRATEGIES and weights == "none":
        raise ConfigError(f"model.transfer = {transfer} keeps the backbone's weights, but model.weights = none makes "
                          f"them random: the model would stay near chance; train {backbone!r} from random weights "
                          f"with --transfer from_scratch, or pass pre-trained weights with --weights PATH "
                          f"(or imagenet)")


def preprocessing_layers(mode: str | None, channels: int) -> list[keras.layers.Layer]:
    """Keras layers computing `imagenet_utils.preprocess_input(x, mode=mode)` on raw 0..255 pixels.

    tf: x / 127.5 - 1. torch: (x / 255 - mean) / std per RGB channel. caffe: RGB -> BGR, then minus
    the BGR mean; the swap is a frozen 1x1 Conv2D holding a permutation (exact: one product by 1.0,
    two by 0.0), because Keras has no channel-reversal layer that the legacy .h5 format can store.
    """
    if mode == "tf":
        return [keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="preprocess")]
    if mode == "torch":
        scale = [1 / (255 * std) for std in TORCH_STD]
        offset = [-mean / std for mean, std in zip(TORCH_MEAN, TORCH_STD)]
        return [keras.layers.Rescaling(scale, offset=offset, name="preprocess")]
    if mode == "caffe":
        swap = keras.layers.Conv2D(channels, 1, name="preprocess", trainable=False)
        swap.build((None, None, None, channels))
        swap.set_weights([np.eye(channels, dtype="float32")[::-1].reshape(1, 1, channels, channels),
                          -np.asarray(CAFFE_MEAN_BGR, "float32")[:channels]])
        return [swap]
    return []


def keras_cache_dir() -> Path:
    """Where keras.applications caches downloaded weights (`$KERAS_HOME/models`, default ~/.keras/models)."""
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models"


def _construct(name: str, row: Backbone, input_shape: tuple[int, int, int], weights: str | None,
               options: dict) -> keras.Model:
    """The headless network, with ImageNet weights through keras.applications' own download-and-cache path."""
    try:
        return row.constructor(include_top=False, weights=weights, input_shape=input_shape, **options)
    except ValueError as exc:  # keras.applications validates sizes and options with ValueError
        raise ConfigError(f"cannot build backbone {name!r} for input {input_shape}: {first_line(exc)}") from None
    except Exception as exc:  # keras.utils.get_file raises a bare Exception when the download fails
        if weights != "imagenet":
            raise
        match = re.search(r"https?://\S+/([^/\s:]+)", str(exc))  # get_file's "URL fetch failure on URL: ..."
        file = match.group(1) if match else "the weights file"
        reason = first_line(exc).split(" -- ")[-1]
        raise ModelLoadError(f"ImageNet weights for {name!r} are not in the Keras cache and could not be downloaded "
                             f"({reason}); put {file} into {keras_cache_dir()} or pass --weights PATH "
                             f"(or --weights none)") from None


def _saved_backbone(path: Path) -> keras.Model:
    """The feature network inside a kerascnn `.keras` model: its `backbone` layer, or a `cnn` cut at its head."""
    model = load_keras_model(path)
    names = {layer.name for layer in model.layers}
    if BACKBONE_LAYER in names:
        return model.get_layer(BACKBONE_LAYER)
    if CNN_FEATURES_LAYER in names and isinstance(model, keras.Sequential):
        return keras.Model(model.inputs[0], model.get_layer(CNN_FEATURES_LAYER).output)
    raise ModelLoadError(f"{str(path)!r} holds no backbone (neither a layer {BACKBONE_LAYER!r} nor a kerascnn `cnn` "
                         f"model); pass a model.keras from a `cnn` or transfer run")


def _load_weights(network: keras.Model, name: str, path: Path) -> None:
    """Load a local weights file into `network`, refusing one of another architecture in one line."""
    if not path.is_file():
        raise ModelLoadError(f"weights file {str(path)!r} does not exist; pass a .keras model from a kerascnn run, "
                             f"a .weights.h5/.h5 file, imagenet or none")
    try:
        if path.suffix == ".keras":
            saved = _saved_backbone(path)
            had, has = saved.input_shape[-1], network.input_shape[-1]
            if had != has:
                mode = {1: "grayscale", 3: "rgb"}.get(had)
                raise ModelLoadError(f"weights file {str(path)!r} was trained on {had}-channel images but these are "
                                     f"{has}-channel; " + (f"set data.color_mode = {mode} to decode them as the "
                                     f"weights expect, or " if mode else "") + "pass weights trained on "
                                     f"{has}-channel images")
            network.set_weights(saved.get_weights())
        elif path.suffix in (".h5", ".hdf5"):
            network.load_weights(path)
        else:
            raise ModelLoadError(f"weights file {str(path)!r} must end in .keras, .weights.h5 or .h5")
    except (ValueError, KeyError, OSError) as exc:
        raise ModelLoadError(f"weights file {str(path)!r} does not fit backbone {name!r} "
                             f"({first_line(exc)[:160]}); pass weights saved from the same architecture") from None


def _cut(network: keras.Model, name: str, row: Backbone, cut_at: int | str) -> keras.KerasTensor:
    """The output tensor of the layer `cut_at` (a name, or an index into `network.layers`)."""
    if isinstance(cut_at, int):
        if not 1 <= cut_at < len(network.layers):
            raise ConfigError(f"model.cut_at index {cut_at} is outside {name}'s layers 1..{len(network.layers) - 1}")
        layer = network.layers[cut_at]
    else:
        names = [layer.name for layer in network.layers]
        if cut_at not in names:
            hint = suggest(cut_at, names, cutoff=0.6)
            raise ConfigError(f"backbone {name!r} has no layer {cut_at!r}{hint}; cut points: "
                              f"{', '.join(row.cut_points)} (or a layer index)")
        layer = network.get_layer(cut_at)
    if len(layer.output.shape) != 4:
        raise ConfigError(f"layer {layer.name!r} of {name!r} outputs {tuple(layer.output.shape)}, not a feature map; "
                          f"cut at a convolutional layer such as {', '.join(row.cut_points)}")
    return layer.output


def build_backbone(name: str, input_shape: tuple[int, int, int], weights: str = "none", cut_at: int | str | None = None,
                   **options) -> keras.Model:
    """The headless feature network named `backbone`, with weights loaded and cut at `cut_at` if given.

    Args:
        name: a name from the backbone table.
        input_shape: (height, width, channels) the network sees (after resizing and channel adaptation).
        weights: "imagenet" (download-and-cache), "none" (random) or the path of a local weights file.
        cut_at: a layer name or index to truncate at (default: the whole network).
        **options: constructor options, e.g. alpha=0.35 for mobilenet_v2.
    """
    row = get_backbone(name)
    if weights == "imagenet" and not row.imagenet:
        raise ConfigError(f"backbone {name!r} has no ImageNet weights; pass --weights PATH (a model.keras from a "
                          f"kerascnn run) or --weights none")
    network = _construct(name, row, input_shape, "imagenet" if weights == "imagenet" else None, options)
    if weights not in ("imagenet", "none"):
        _load_weights(network, name, Path(weights))
    output = network.output if cut_at is None else _cut(network, name, row, cut_at)
    return keras.Model(network.input, output, name=BACKBONE_LAYER)


def network_input_shape(row: Backbone, image_shape: tuple[int, int, int], size: int | None) -> tuple[int, int, int]:
    """What the backbone sees: `size` (or the images raised to the minimum side), in its own channels."""
    height, width, channels = image_shape
    if size is not None:
        height = width = size
    height, width = max(height, row.min_size), max(width, row.min_size)
    wanted = row.channels or channels
    if channels not in (1, wanted):
        raise ConfigError(f"images have {channels} channels but the backbone takes {wanted}; use 1- or "
                          f"{wanted}-channel images")
    return height, width, wanted


def build_transfer_model(backbone: str, input_shape, num_classes: int, transfer: str = "feature_extraction",
                         weights: str | None = None, cut_at: int | str | None = None, **options) -> keras.Model:
    """A classifier over a pre-trained backbone, taking raw pixels and returning probabilities.

    Args:
        backbone: a name from `kerascnn backbones`, e.g. "mobilenet_v2".
        input_shape: (height, width, channels) of the raw images.
        num_classes: number of output probabilities.
        transfer: feature_extraction | truncate | fine_tune | from_scratch (default feature_extraction).
            fine_tune builds the same model as feature_extraction; `fine_tune()` trains it in two phases.
        weights: "imagenet", "none" or a local file (default: imagenet, or none for from_scratch).
        cut_at: the layer (name or index) truncate cuts at; required for truncate only.
        **options: `dropout` before the output layer (default 0.2); `size`, the side the backbone sees
            (default: the image size raised to the backbone's minimum); `pooling` of the feature maps,
            avg | max | flatten (default: the table's, avg for keras.applications, flatten for cnn);
            and the backbone constructor's own options (e.g. alpha=0.35).

    Example:
        model = build_transfer_model("cnn", (28, 28, 1), 5, "truncate", "run/model.keras", cut_at="pool_1")
    """
    ModelConfig(backbone=backbone, transfer=transfer, weights=weights, cut_at=cut_at, options=options)  # validates
    check_backbone_options(backbone, options)
    check_transfer(backbone, transfer, weights)
    weights = weights or ("none" if transfer == "from_scratch" else "imagenet")
    backbone_options = dict(options)
    dropout, size, pooling = (backbone_options.pop(key, default) for key, default in HEAD_OPTIONS.items())
    row = get_backbone(backbone)
    input_shape = tuple(int(s) for s in input_shape)
    seen_shape = network_input_shape(row, input_shape, size)
    network = build_backbone(backbone, seen_shape, weights, cut_at, **backbone_options)
    pretrained = transfer != "from_scratch"
    network.trainable = not pretrained

    images = keras.Input(input_shape, name="images")
    x = images
    if input_shape[-1] != seen_shape[-1]:
        x = keras.layers.Concatenate(name="gray_to_rgb")([x] * seen_shape[-1])
    if input_shape[:2] != seen_shape[:2]:
        x = keras.layers.Resizing(*seen_shape[:2], name="resize")(x)
    for layer in preprocessing_layers(row.preprocessing, seen_shape[-1]):
        x = layer(x)
    # training=False asks for inference mode, but Keras 3.15's fit still passes training=True into this nested
    # call (Dropout inside the backbone is active); BatchNormalization stays in inference mode because fine_tune
    # keeps it frozen (a frozen BatchNormalization always runs in inference mode).
    x = network(x, training=False) if pretrained else network(x)
    x = POOLING_LAYERS[pooling or row.pooling](name=POOL_LAYER)(x)
    x = keras.layers.Dropout(dropout, name="head_dropout")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="probabilities")(x)
    return keras.Model(images, outputs, name=f"{backbone}_{transfer}")


def build_from_config(config, input_shape, num_classes: int) -> keras.Model:
    """`build_transfer_model` from a ModelConfig whose `backbone` is set."""
    return build_transfer_model(config.backbone, input_shape, num_classes, config.transfer or "feature_extraction",
                                config.weights, config.cut_at, **config.options)


def unfreeze_top(model: keras.Model, layers: int = DEFAULT_UNFREEZE) -> int:
    """Make the top `layers` layers of the model's backbone trainable, BatchNormalization excepted.

    Returns the number of layers made trainable.
    """
    network = model.get_layer(BACKBONE_LAYER)
    network.trainable = True
    body = [layer for layer in network.layers if not isinstance(layer, keras.layers.InputLayer)]
    top = body[-layers:] if layers > 0 else []
    for layer in body:
        layer.trainable = layer in top and not isinstance(layer, keras.layers.BatchNormalization)
    return sum(layer.trainable for layer in body)
