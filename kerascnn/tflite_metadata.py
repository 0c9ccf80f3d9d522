"""Standard TFLite Metadata in kerascnn's `.tflite` files, so MediaPipe Tasks runs them as they are.

`write_metadata` gives a flatbuffer what MediaPipe Tasks' `ImageClassifier` (and Android Studio's
model binding) read: name, description, version, author and licence; the input as an RGB image
with `NormalizationOptions` mean 0, std 1 (the file takes raw 0..255 pixels; rescaling is inside
the model) and pixel stats as the file's own quantization gives them; the output as class scores
with the class names in a `labels.txt` associated file (`TENSOR_AXIS_LABELS`), packed into the
file as a zip member after the flatbuffer, the way the TFLite Metadata format defines. It is
MediaPipe Model Maker's own route (`metadata_writers`): the tables come from MediaPipe's
`metadata_info` containers, MediaPipe's `MetadataPopulator` validates them against the model, packs
the labels and stamps the minimum parser version.

The route around mediapipe 1.2.3's missing piece: its `metadata` module imports
`mediapipe.tasks.cc.metadata.python._pywrap_metadata_version`, a compiled module the wheel does not
ship, for one function, `GetMinimumMetadataParserVersion` (which schema version a reader needs).
`_install_parser_version_shim` registers a pure-Python module under that name before the import,
only when the real one is missing; it applies the rules of MediaPipe's `metadata_version.cc`
(the newest schema member the metadata uses decides). Everything else is MediaPipe's own code, and
the tests read the files back with MediaPipe's `MetadataDisplayer` and run them in `ImageClassifier`.

`read_class_names` reads the labels back for `kerascnn.load` without importing MediaPipe (which
would import TensorFlow): the metadata schema MediaPipe generated is a plain flatbuffers module.
"""

from __future__ import annotations

import functools
import importlib.util
import io
import sys
import tempfile
import types
import zipfile
from pathlib import Path

import flatbuffers
import numpy as np

METADATA_FIELD = "TFLITE_METADATA"  # the `metadata` entry name the TFLite Metadata format uses
PACKED_LABELS = "labels.txt"  # the associated file inside each .tflite (Model Maker uses the same name)
PIXEL_RANGE = (0.0, 255.0)  # every kerascnn artifact takes raw pixels
_SHIM_PACKAGE = "mediapipe.tasks.cc.metadata.python"
_SHIM_MODULE = f"{_SHIM_PACKAGE}._pywrap_metadata_version"
_INTEGER_TYPES = {3: np.uint8, 9: np.int8, 7: np.int16}  # TFLite TensorType UINT8, INT8, INT16


def _minimum_parser_version(metadata_buffer: bytes) -> str:
    """The oldest metadata parser version that understands every field of `metadata_buffer`.

    The rules of MediaPipe's `metadata_version.cc`: 1.0.0, raised by each schema member added later
    that the metadata uses (vocabulary files 1.0.1, subgraph process units and tokenizers 1.1.0,
    tensor groups 1.2.0, regex tokenizers 1.2.1, audio 1.3.0, ScaNN index files 1.4.0, file
    versions 1.4.1, custom metadata 1.5.0).
    """
    from mediapipe.tasks.metadata import metadata_schema_py_generated as fb

    metadata = fb.ModelMetadataT.InitFromObj(fb.ModelMetadata.GetRootAsModelMetadata(bytearray(metadata_buffer), 0))
    found = [(1, 0, 0)]
    unit_versions = {fb.ProcessUnitOptions.BertTokenizerOptions: (1, 1, 0),
                     fb.ProcessUnitOptions.SentencePieceTokenizerOptions: (1, 1, 0),
                     fb.ProcessUnitOptions.RegexTokenizerOptions: (1, 2, 1)}

    def files(items):
        for item in items or []:
            found.extend([(1, 0, 1)] * (item.type == fb.AssociatedFileType.VOCABULARY)
                         + [(1, 4, 0)] * (item.type == fb.AssociatedFileType.SCANN_INDEX_FILE)
                         + [(1, 4, 1)] * (item.version is not None))

    def units(items):
        found.extend(unit_versions.get(item.optionsType, (1, 0, 0)) for item in items or [])

    for subgraph in metadata.subgraphMetadata or []:
        for tensor in (subgraph.inputTensorMetadata or []) + (subgraph.outputTensorMetadata or []):
            files(tensor.associatedFiles)
            units(tensor.processUnits)
            if tensor.content and tensor.content.contentPropertiesType == fb.ContentProperties.AudioProperties:
                found.append((1, 3, 0))
        files(subgraph.associatedFiles)
        for process_units in (subgraph.inputProcessUnits, subgraph.outputProcessUnits):
            if process_units is not None:  # present, even empty, as in the C++ rules
                found.append((1, 1, 0))
                units(process_units)
        if subgraph.inputTensorGroups is not None or subgraph.outputTensorGroups is not None:
            found.append((1, 2, 0))
        if subgraph.customMetadata is not None:
            found.append((1, 5, 0))
    files(metadata.associatedFiles)
    return ".".join(map(str, max(found)))


def _install_parser_version_shim() -> None:
    """Register the module mediapipe 1.2.3's wheel lacks (see the module docstring), if it is missing."""
    if _SHIM_MODULE in sys.modules:
        return
    try:
        if importlib.util.find_spec(_SHIM_MODULE) is not None:
            return  # a wheel that ships the compiled module: use it
    except ModuleNotFoundError:  # the parent packages do not exist either
        pass
    for package in ("mediapipe.tasks.cc", "mediapipe.tasks.cc.metadata", _SHIM_PACKAGE):
        if package not in sys.modules:
            module = types.ModuleType(package)
            module.__path__ = []
            sys.modules[package] = module
    shim = types.ModuleType(_SHIM_MODULE, "kerascnn's Python version of GetMinimumMetadataParserVersion")
    shim.GetMinimumMetadataParserVersion = _minimum_parser_version
    sys.modules[_SHIM_MODULE] = shim
    sys.modules[_SHIM_PACKAGE]._pywrap_metadata_version = shim


def metadata_modules():
    """MediaPipe's (metadata, metadata_info, generated schema) modules, with the shim in place."""
    _install_parser_version_shim()
    from mediapipe.tasks.metadata import metadata_schema_py_generated as fb
    from mediapipe.tasks.python.metadata import metadata
    from mediapipe.tasks.python.metadata.metadata_writers import metadata_info

    return metadata, metadata_info, fb


def _tensor_details(flatbuffer: bytes, which: str) -> tuple[int, int, tuple[float, int] | None]:
    """(TFLite tensor type, last dimension, (scale, zero point) or None) of the model's only input or output."""
    from ai_edge_litert import schema_py_generated as schema

    subgraph = schema.Model.GetRootAs(flatbuffer, 0).Subgraphs(0)
    tensor = subgraph.Tensors(subgraph.Inputs(0) if which == "input" else subgraph.Outputs(0))
    quantization = tensor.Quantization()
    has_scale = quantization is not None and quantization.ScaleLength() == 1
    return (tensor.Type(), int(tensor.ShapeAsNumpy()[-1]),
            (float(quantization.Scale(0)), int(quantization.ZeroPoint(0))) if has_scale else None)


def _quantization_note(quantization: tuple[float, int] | None) -> str:
    if quantization is None:
        return ""
    scale, zero_point = quantization
    return f" Quantized: real value = {scale:.6g} x (q - {zero_point})."


def write_metadata(flatbuffer: bytes, class_names: list[str], *, name: str, description: str, version: str,
                   author: str = "", license: str = "", gray_inside: bool = False) -> bytes:
    """`flatbuffer` with standard TFLite Metadata and the class names packed as `labels.txt`.

    Args:
        flatbuffer: a converted single-input, single-output image classifier.
        class_names: names in output index order.
        name, description, version, author, license: the model's general information; empty author
            or license strings are left out.
        gray_inside: the file takes an RGB image and converts it to gray itself (said in the input's
            description). A file with a 1-channel input is described as a GRAYSCALE image.

    Example:
        with_metadata = write_metadata(converter.convert(), ["cat", "dog"], name="pets", description="...",
                                       version="1")
    """
    metadata, metadata_info, fb = metadata_modules()
    input_type, channels, input_quantization = _tensor_details(flatbuffer, "input")
    output_type, _, output_quantization = _tensor_details(flatbuffer, "output")
    gray = channels == 1
    image = metadata_info.InputImageTensorMd(
        name="image", norm_mean=[0.0], norm_std=[1.0], tensor_type=input_type,
        color_space_type=fb.ColorSpaceType.GRAYSCALE if gray else fb.ColorSpaceType.RGB,
        description=(f"{'Gray' if gray else 'RGB'} image, raw pixels 0..255 (no normalisation: mean 0, std 1)"
                     + (", converted to gray inside the model" if gray_inside else "") + "."
                     + _quantization_note(input_quantization))).create_metadata()
    if input_quantization is not None:  # pixel range as the file's own quantization stores it
        scale, zero_point = input_quantization
        info = np.iinfo(_INTEGER_TYPES[input_type])
        image.stats.min, image.stats.max = [[float(np.clip(round(p / scale + zero_point), info.min, info.max))]
                                            for p in PIXEL_RANGE]
    scores = metadata_info.ClassificationTensorMd(
        name="probabilities", label_files=[metadata_info.LabelFileMd(PACKED_LABELS)], tensor_type=output_type,
        description="Probability of each class, in the order of labels.txt." + _quantization_note(output_quantization),
    ).create_metadata()
    subgraph = fb.SubGraphMetadataT()
    subgraph.inputTensorMetadata, subgraph.outputTensorMetadata = [image], [scores]
    general = metadata_info.GeneralMd(name=name, version=version, description=description, author=author or None,
                                      licenses=license or None).create_metadata()
    general.subgraphMetadata = [subgraph]
    builder = flatbuffers.Builder(0)
    builder.Finish(general.Pack(builder), metadata.MetadataPopulator.METADATA_FILE_IDENTIFIER)
    # On a file of our own: the in-memory variant (with_model_buffer) deletes its temporary file in a
    # __del__ that fails when it runs at interpreter exit.
    with tempfile.TemporaryDirectory(prefix="kerascnn-metadata-") as folder:
        model_file = Path(folder) / "model.tflite"
        model_file.write_bytes(flatbuffer)
        populator = metadata.MetadataPopulator.with_model_file(str(model_file))
        populator.load_metadata_buffer(builder.Output())
        populator.load_associated_file_buffers({PACKED_LABELS: ("\n".join(class_names) + "\n").encode("utf-8")})
        populator.populate()
        return model_file.read_bytes()


@functools.lru_cache(maxsize=1)
def _schema():
    """MediaPipe's generated metadata schema (a plain flatbuffers module), loaded from its file when
    MediaPipe itself is not imported: `import mediapipe` imports all of MediaPipe Tasks and TensorFlow."""
    if "mediapipe" in sys.modules:
        from mediapipe.tasks.metadata import metadata_schema_py_generated

        return metadata_schema_py_generated
    spec = importlib.util.find_spec("mediapipe")
    path = Path(spec.origin).parent / "tasks" / "metadata" / "metadata_schema_py_generated.py"
    module_spec = importlib.util.spec_from_file_location("kerascnn._tflite_metadata_schema", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def read_class_names(model_buffer: bytes) -> list[str]:
    """The class names in a `.tflite` file's standard metadata (the output's TENSOR_AXIS_LABELS file,
    without a locale), or [] when it has none."""
    from ai_edge_litert import schema_py_generated as schema

    try:
        model = schema.Model.GetRootAs(model_buffer, 0)
        entries = [model.Metadata(i) for i in range(model.MetadataLength())]
        buffers = [model.Buffers(e.Buffer()).DataAsNumpy() for e in entries if e.Name() == METADATA_FIELD.encode()]
        if not buffers or not isinstance(buffers[0], np.ndarray):
            return []
        fb = _schema()
        metadata = fb.ModelMetadata.GetRootAs(buffers[0].tobytes(), 0)
        scores = metadata.SubgraphMetadata(0).OutputTensorMetadata(0)
        files = [scores.AssociatedFiles(i) for i in range(scores.AssociatedFilesLength())]
        names = [f.Name().decode() for f in files
                 if f.Type() == fb.AssociatedFileType.TENSOR_AXIS_LABELS and not f.Locale()]
        if not names:
            return []
        with zipfile.ZipFile(io.BytesIO(model_buffer)) as packed:
            return packed.read(names[0]).decode("utf-8").splitlines()
    except (ValueError, IndexError, AttributeError, KeyError, zipfile.BadZipFile, UnicodeDecodeError):
        return []  # a file from elsewhere with partial or odd metadata: fall back to labels.txt beside it
