"""TF Serving's JSON <-> tensor mapping (`util/json_tensor.cc`), and the image checks made before decoding.

Requests: `instances` (row format: a list, of values for one input or of `{name: value}` objects)
or `inputs` (columnar: one value or a `{name: value}` object), never both; strings may be
`{"b64": "..."}`. Responses: `predictions` (rows; objects when the signature has several outputs) or
`outputs` (columns), output names ending in `_bytes` written as `{"b64": ...}`. Classify requests
are `{"examples": [{feature: value|list}], "context": {...}}`, turned into serialized tf.Example
with the context merged in, as TF Serving does.

Bodies are parsed with orjson (several times faster than the json module on the nested number lists
of a request); what it refuses goes to Python's json module, which also parses the NaN/Infinity tokens
TF Serving accepts and words the error. The messages follow json_tensor.cc where the same check exists
there.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import warnings

import numpy as np
import orjson
from PIL import Image

from kerascnn.serve.status import invalid

IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "GIF")
BYTES_SUFFIX = "_bytes"


def parse_body(body: bytes) -> dict:
    """The request's JSON object; INVALID_ARGUMENT for an empty body, bad JSON or a non-object."""
    if not body:
        raise invalid("JSON Parse error: The document is empty")
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:  # NaN/Infinity, or not JSON: the json module parses it or says what is wrong
        document = _json_with_nan(body)
    if not isinstance(document, dict):
        raise invalid(f"JSON Value: {_short(document)} Is not object")
    name = document.get("signature_name", "")
    if not isinstance(name, str):
        raise invalid(f"JSON Value: {_short(document)} not formatted correctly. 'signature_name' key must be a "
                      f"string value.")
    return document


def _json_with_nan(body: bytes):
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        position = f" at offset: {exc.pos}" if isinstance(exc, json.JSONDecodeError) else ""
        raise invalid(f"JSON Parse error: {exc.msg if hasattr(exc, 'msg') else exc}{position}") from None


def _short(value, limit: int = 200) -> str:
    text = json.dumps(value)
    return text if len(text) <= limit else text[:limit] + "..."


def is_b64(value) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def decode_b64(value) -> bytes:
    if not is_b64(value):
        raise invalid(f"JSON Value: {_short(value)} not formatted correctly for base64 data")
    try:
        return base64.b64decode(value["b64"], validate=True)
    except (binascii.Error, ValueError):
        raise invalid("Unable to base64 decode") from None


def _strings(value):
    """Nested lists of str / {"b64"} as nested lists of bytes."""
    if isinstance(value, list):
        return [_strings(v) for v in value]
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, dict):
        return decode_b64(value)
    raise invalid(f"JSON Value: {_short(value)} Type: {type(value).__name__} is not of expected type: string")


def to_array(value, dtype: np.dtype, name: str) -> np.ndarray:
    """A JSON value as an array of `dtype`; INVALID_ARGUMENT for ragged lists or values of another type."""
    try:
        if dtype == np.object_:
            array = np.array(_strings(value), dtype=object)
            if array.dtype != object or any(not isinstance(v, bytes) for v in array.reshape(-1)):
                raise ValueError
            return array
        array = np.array(value)
    except ValueError:
        raise invalid(f"input {name!r}: the lists are not all of the same length (a tensor is rectangular)") \
            from None
    if array.dtype.kind not in "iuf" + ("b" if dtype == np.bool_ else ""):
        raise invalid(f"input {name!r}: JSON values of type {array.dtype.kind!r} ({_short(value, 60)}) are not of "
                      f"expected type: {np.dtype(dtype).name}")
    if np.dtype(dtype).kind in "iu" and array.dtype.kind == "f" and not np.all(np.mod(array, 1) == 0):
        raise invalid(f"input {name!r}: expected whole numbers for type {np.dtype(dtype).name}")
    return array.astype(dtype)


def check_shape(array: np.ndarray, shape: list[int] | None, name: str) -> None:
    """INVALID_ARGUMENT unless `array` has the signature's rank and every known dimension (-1 is any)."""
    if shape is None:
        return
    if array.ndim != len(shape) or any(want not in (-1, got) for want, got in zip(shape, array.shape)):
        wanted = "x".join("?" if d == -1 else str(d) for d in shape)
        raise invalid(f"input {name!r} has shape {list(array.shape)}, but the signature takes [{wanted}] "
                      f"(? = any size; the first dimension is the batch)")


def inputs_from_json(document: dict, input_specs: dict) -> tuple[dict[str, np.ndarray], str]:
    """(name -> batched array, "row" | "columnar") from a predict request, as FillPredictRequestFromJson.

    `input_specs` maps each signature input name to (numpy dtype, shape list or None).
    """
    instances, inputs = document.get("instances"), document.get("inputs")
    if "instances" in document and "inputs" in document:
        raise invalid(f"JSON Value: {_short(document)} Not formatted correctly expecting only one of 'inputs' or "
                      f"'instances' keys to exist ")
    names = sorted(input_specs)
    if "instances" in document:
        if not isinstance(instances, list):
            raise invalid(f"JSON Value: {_short(document)} Expecting 'instances' to be an list/array")
        if not instances:
            raise invalid(f"JSON Value: {_short(document)} No values in 'instances' array")
        objects = isinstance(instances[0], dict) and not is_b64(instances[0])
        if not objects and len(names) > 1:
            raise invalid("instances is a plain list, but expecting list of objects as multiple input tensors "
                          "required as per tensorinfo_map")
        columns = {name: [] for name in names}
        for index, item in enumerate(instances):
            is_object = isinstance(item, dict) and not is_b64(item)
            if objects != is_object:
                raise invalid(f"Expecting {'object but got list' if objects else 'value/list but got object'} "
                              f"at item {index} of input list")
            if objects:
                if set(item) != set(names):
                    raise invalid(f"Failed to process element: {index} of 'instances' list. JSON object: "
                                  f"{_short(item)} keys must be equal to: {','.join(names)}")
                for name in names:
                    columns[name].append(item[name])
            else:
                columns[names[0]].append(item)
        arrays, layout = {name: to_array(columns[name], input_specs[name][0], name) for name in names}, "row"
    elif "inputs" in document:
        if isinstance(inputs, dict) and not is_b64(inputs):
            missing = [name for name in names if name not in inputs]
            if missing:
                raise invalid(f"Missing named input: {missing[0]} in 'inputs' object.")
            arrays = {name: to_array(inputs[name], input_specs[name][0], name) for name in names}
        elif len(names) > 1:
            raise invalid("inputs is a plain value/list, but expecting an object as multiple input tensors required "
                          "as per tensorinfo_map")
        else:
            arrays = {names[0]: to_array(inputs, input_specs[names[0]][0], names[0])}
        layout = "columnar"
    else:
        raise invalid("Missing 'inputs' or 'instances' key")
    for name, array in arrays.items():
        check_shape(array, input_specs[name][1], name)
    return arrays, layout


def _json_values(name: str, array: np.ndarray):
    if array.dtype == object:
        if name.endswith(BYTES_SUFFIX):
            return np.vectorize(lambda b: {"b64": base64.b64encode(b).decode("ascii")}, otypes=[object])(array).tolist()
        return np.vectorize(lambda b: b.decode("utf-8", "replace"), otypes=[object])(array).tolist()
    return array.tolist()


def outputs_to_json(outputs: dict[str, np.ndarray], layout: str) -> dict:
    """The predict response: `predictions` (row) or `outputs` (columnar), as MakeJsonFromTensors."""
    names = sorted(outputs)
    values = {name: _json_values(name, outputs[name]) for name in names}
    if layout == "columnar":
        return {"outputs": values[names[0]] if len(names) == 1 else values}
    if len(names) == 1:
        return {"predictions": values[names[0]]}
    rows = len(values[names[0]])
    return {"predictions": [{name: values[name][i] for name in names} for i in range(rows)]}


def _feature(name: str, value):
    """A tf.train.Feature from a JSON value or list (AddValueToFeature: one kind per feature)."""
    import tensorflow as tf

    items = value if isinstance(value, list) else [value]
    kinds = set()
    for item in items:
        if isinstance(item, bool) or (isinstance(item, int) and not isinstance(item, bool)):
            kinds.add("int64")
        elif isinstance(item, float):
            kinds.add("float")
        elif isinstance(item, str) or is_b64(item):
            kinds.add("bytes")
        else:
            raise invalid(f"Feature: {name} has element with unexpected JSON type: {type(item).__name__}")
    if len(kinds) > 1:
        raise invalid(f"Unexpected element type in feature: {name} expecting type: {sorted(kinds)[0]}")
    kind = kinds.pop() if kinds else "bytes"
    if kind == "bytes":
        return tf.train.Feature(bytes_list=tf.train.BytesList(
            value=[decode_b64(v) if isinstance(v, dict) else v.encode("utf-8") for v in items]))
    if kind == "float":
        return tf.train.Feature(float_list=tf.train.FloatList(value=items))
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v) for v in items]))


def example_from_json(value, where: str):
    import tensorflow as tf

    if not isinstance(value, dict):
        raise invalid(f"Example must be JSON object but got JSON {type(value).__name__} ({where})")
    return tf.train.Example(features=tf.train.Features(feature={k: _feature(k, v) for k, v in value.items()}))


def examples_from_json(document: dict) -> list[bytes]:
    """Serialized tf.Example of a classify request (context merged into each), as FillClassificationRequestFromJson."""
    if "examples" not in document:
        raise invalid(f"JSON Value: {_short(document)} When method is classify, key 'examples' is expected and was "
                      f"not found")
    examples = document["examples"]
    if not isinstance(examples, list):
        raise invalid(f"JSON Value: {_short(document)} Expecting 'examples' value to be an list/array")
    if not examples:
        raise invalid(f"JSON Value: {_short(document)} 'examples' value is an empty array")
    context = example_from_json(document["context"], "context").SerializeToString() if "context" in document else b""
    # a serialized proto followed by another merges them: TF Serving joins context and example this way
    return [context + example_from_json(e, f"example {i}").SerializeToString() for i, e in enumerate(examples)]


def check_image(contents: bytes, max_pixels: int, where: str) -> None:
    """INVALID_ARGUMENT unless `contents` is a PNG/JPEG/BMP/GIF of at most `max_pixels` pixels.

    Only the header is read (PIL's `Image.open` is lazy), so a decompression bomb is refused before
    anything is decoded.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(contents)) as image:
                size, kind = image.size, image.format
    except Image.DecompressionBombError:
        size, kind = None, "too large"
    except Exception:  # PIL raises UnidentifiedImageError, SyntaxError, struct.error... for non-images
        raise invalid(f"{where}: the bytes are not a {'/'.join(IMAGE_FORMATS)} image") from None
    if kind not in IMAGE_FORMATS + ("too large",):
        raise invalid(f"{where}: {kind} images are not supported; send {'/'.join(IMAGE_FORMATS)}")
    if size is None or size[0] * size[1] > max_pixels:
        shown = f"{size[0]}x{size[1]} pixels" if size else "larger than PIL's decompression-bomb limit"
        raise invalid(f"{where}: the image is {shown}, over the limit of {max_pixels:,} pixels; send a "
                      f"smaller image (the server resizes it anyway) or start the server with a larger "
                      f"--max-image-pixels")
