"""The served model's versions: find, load, warm up, swap in, unload, and answer through batchers.

A serving root holds integer version folders (`<root>/<version>/saved_model.pb`), the layout
`kerascnn export --serving-root` and TF Serving use. `ModelStore` loads the newest `keep_versions`
that load and pass a warm-up call, and a watcher thread polls the root: a new version is loaded and
warmed up beside the served ones, then swapped in under a lock, so a request either gets the old
version or the new one, never a half-loaded one. A request holds its version (`acquire`) until it
is answered; a version dropped from the served set finishes those requests, then stops its
batchers. A version that fails to load or warm up is logged, reported by the status API as END with
its error (as TF Serving does), and not served; the others keep serving.

Model names and versions from requests are only compared with the served name and looked up among
loaded versions; only folders directly inside the root (after resolving links) are ever loaded.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import threading
from pathlib import Path

import numpy as np

from kerascnn.errors import KerasCNNError
from kerascnn.rundir import CONFIG_FILE, LABELS_FILE, SAVED_MODEL_DIR
from kerascnn.serve.batching import Batcher
from kerascnn.serve.metrics import Metrics
from kerascnn.serve.status import invalid, not_found
from kerascnn.serve.tensors import check_image, check_shape

log = logging.getLogger(__name__)
PREDICT_METHOD, CLASSIFY_METHOD = "tensorflow/serving/predict", "tensorflow/serving/classify"
DEFAULT_SIGNATURE = "serving_default"
INIT_OP = "__saved_model_init_op"
IMAGE_FEATURE = "image"  # the bytes feature of the classify signature's tf.Example (kerascnn.export)


class ServeSetupError(KerasCNNError):
    """A path or option `kerascnn serve` cannot start with."""


@dataclasses.dataclass(frozen=True)
class ServeOptions:
    """How the server batches, limits and watches.

    Attributes:
        max_batch_size: most rows merged into one model call (default 32).
        batch_timeout_ms: longest wait for more requests after the first of a batch (default 0:
            merge only requests already waiting, so a lone client never waits).
        keep_versions: newest versions kept loaded and addressable (default 1, TF Serving's `latest`).
        poll_seconds: how often the serving root is checked for new versions (default 1).
        max_body_bytes: largest request body; bigger ones get 413 (default 16 MiB).
        max_image_pixels: largest width x height of an encoded image, checked before decoding (default 4096**2).
    """

    max_batch_size: int = 32
    batch_timeout_ms: float = 0.0
    keep_versions: int = 1
    poll_seconds: float = 1.0
    max_body_bytes: int = 16 * 1024 * 1024
    max_image_pixels: int = 4096 * 4096

    def __post_init__(self):
        for name in ("max_batch_size", "keep_versions", "max_body_bytes", "max_image_pixels"):
            if getattr(self, name) < 1:
                raise ServeSetupError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.batch_timeout_ms < 0 or self.poll_seconds <= 0:
            raise ServeSetupError("--batch-timeout-ms must be >= 0 and --poll-seconds > 0")


def serving_root(path: str | Path) -> tuple[Path, str]:
    """(root of version folders, default model name) for a run directory or a serving root."""
    path = Path(path)
    if not path.is_dir():
        raise ServeSetupError(f"{str(path)!r} is not a folder; pass a run directory (saved_models/<run>) or a serving "
                              f"root written by `kerascnn export --serving-root`")
    if (path / CONFIG_FILE).is_file():
        return path / SAVED_MODEL_DIR, path.name
    if (path / "saved_model.pb").is_file():
        raise ServeSetupError(f"{str(path)!r} is one SavedModel version; pass the folder above it "
                              f"({str(path.parent)!r}), whose integer subfolders are the versions")
    return path, path.name


def version_folders(root: Path) -> dict[int, Path]:
    """Integer-named subfolders of `root` holding a saved_model.pb, never a link leading outside it."""
    if not root.is_dir():
        return {}
    resolved_root = root.resolve()
    found = {}
    for child in root.iterdir():
        if child.name.isdigit() and (child / "saved_model.pb").is_file():
            if child.resolve().parent != resolved_root:
                log.warning("skipping %s: it links outside the serving root", child)
                continue
            found[int(child.name)] = child
    return found


def _tiny_png() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (8, 8)).save(buffer, "PNG")
    return buffer.getvalue()


class Servable:
    """One loaded version: its signatures (callable and as SignatureDef protos), class names, batchers."""

    def __init__(self, name: str, version: int, path: Path, options: ServeOptions, metrics: Metrics):
        import tensorflow as tf
        from tensorflow.core.protobuf import saved_model_pb2

        self.name, self.version, self.path, self.options = name, version, path, options
        graph = saved_model_pb2.SavedModel.FromString((path / "saved_model.pb").read_bytes())
        self.signature_defs = dict(graph.meta_graphs[0].signature_def)
        self.loaded = tf.saved_model.load(str(path))
        self.functions = {name: self.loaded.signatures[name] for name in self.signature_defs if name != INIT_OP}
        self._specs = {name: self._read_specs(name) for name in self.functions}
        labels = path / "assets.extra" / LABELS_FILE
        self.class_names = labels.read_text(encoding="utf-8").splitlines() if labels.is_file() else []
        self.batchers = {name: Batcher(self._caller(name), options.max_batch_size, options.batch_timeout_ms,
                                       metrics.batch, f"batcher-{version}-{name}") for name in self.functions}
        self._in_flight = 0
        self._idle = threading.Condition()

    def _caller(self, signature: str):
        import tensorflow as tf

        function = self.functions[signature]

        def call(inputs):
            outputs = function(**{name: tf.constant(value) for name, value in inputs.items()})
            return {name: tensor.numpy() for name, tensor in outputs.items()}

        return call

    def input_specs(self, signature: str) -> dict[str, tuple[np.dtype, list[int] | None]]:
        """Input name -> (numpy dtype, shape with -1 for any size, or None for any shape)."""
        self.signature(signature)
        return self._specs[signature or DEFAULT_SIGNATURE]

    def _read_specs(self, signature: str) -> dict[str, tuple[np.dtype, list[int] | None]]:
        import tensorflow as tf

        specs = {}
        for name, info in self.signature_defs[signature].inputs.items():
            dtype = tf.as_dtype(info.dtype)
            shape = None if info.tensor_shape.unknown_rank else [d.size for d in info.tensor_shape.dim]
            specs[name] = (np.dtype(object) if dtype == tf.string else np.dtype(dtype.as_numpy_dtype), shape)
        return specs

    def signature(self, name: str):
        name = name or DEFAULT_SIGNATURE
        if name not in self.functions:
            raise invalid(f'Serving signature name: "{name}" not found in signature def (this model has '
                          f'{", ".join(sorted(self.functions))})')
        return self.signature_defs[name]

    def check(self, signature: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """`inputs` checked against the signature (names, dtypes, shapes, images before decoding)."""
        definition, specs = self.signature(signature), self.input_specs(signature)
        if set(inputs) != set(specs):
            raise invalid(f"signature {signature or DEFAULT_SIGNATURE!r} takes inputs {sorted(specs)}, got "
                          f"{sorted(inputs)}")
        checked = {}
        for name, value in inputs.items():
            dtype, shape = specs[name]
            if value.dtype != dtype:
                raise invalid(f"input {name!r} must be {'strings' if dtype == object else dtype.name}, got "
                              f"{'strings' if value.dtype == object else value.dtype.name}")
            check_shape(value, shape, name)
            if value.ndim == 0:
                raise invalid(f"input {name!r} needs a batch dimension")
            checked[name] = value
            if dtype == object:
                self._check_strings(definition.method_name, name, value)
        return checked

    def _check_strings(self, method: str, name: str, values: np.ndarray) -> None:
        import tensorflow as tf

        limit = self.options.max_image_pixels
        for index, value in enumerate(values.reshape(-1)):
            where = f"input {name!r} item {index}"
            if method == CLASSIFY_METHOD:
                try:
                    example = tf.train.Example.FromString(value)
                except Exception:
                    raise invalid(f"{where} is not a serialized tf.Example") from None
                images = example.features.feature[IMAGE_FEATURE].bytes_list.value
                if len(images) != 1:
                    raise invalid(f"{where}: the example needs exactly one encoded image in bytes feature "
                                  f"{IMAGE_FEATURE!r}, got {len(images)}")
                check_image(images[0], limit, where)
            else:
                check_image(value, limit, where)

    def submit(self, signature: str, inputs: dict[str, np.ndarray]):
        """A Future of the outputs of `signature` on checked `inputs` (merged with others by its batcher)."""
        checked = self.check(signature, inputs)
        return self.batchers[signature or DEFAULT_SIGNATURE].submit(checked)

    def submit_async(self, signature: str, inputs: dict[str, np.ndarray]):
        """`submit` for a coroutine: an awaitable of the outputs (see `Batcher.submit_async`)."""
        checked = self.check(signature, inputs)
        return self.batchers[signature or DEFAULT_SIGNATURE].submit_async(checked)

    def classify_signature(self, signature: str) -> str:
        """The signature for a Classify request, checked as TF Serving's classifier.cc does."""
        definition = self.signature(signature)
        if definition.method_name != CLASSIFY_METHOD:
            classify = [n for n, d in self.signature_defs.items() if d.method_name == CLASSIFY_METHOD]
            hint = f"; this model's classify signature is {classify[0]!r}" if classify else ""
            raise invalid(f"Expected classification signature method_name to be {CLASSIFY_METHOD}. Was: "
                          f"{definition.method_name}{hint}")
        if "inputs" not in definition.inputs or not {"classes", "scores"} & set(definition.outputs):
            raise invalid("classification signature must take 'inputs' and return 'classes' and/or 'scores'")
        return signature or DEFAULT_SIGNATURE

    def warm_up(self) -> None:
        """Call every signature once on a tiny input (the check a new version passes before it is served)."""
        png = _tiny_png()
        for name, definition in self.signature_defs.items():
            if name == INIT_OP:
                continue
            if definition.method_name == CLASSIFY_METHOD:
                import tensorflow as tf

                example = tf.train.Example(features=tf.train.Features(feature={
                    IMAGE_FEATURE: tf.train.Feature(bytes_list=tf.train.BytesList(value=[png]))}))
                inputs = {"inputs": np.array([example.SerializeToString()], dtype=object)}
            else:
                inputs = {}
                for input_name, (dtype, shape) in self.input_specs(name).items():
                    shape = [1 if d == -1 else d for d in (shape or [1])]
                    inputs[input_name] = np.full(shape, png, dtype=object) if dtype == object else np.zeros(shape, dtype)
            outputs = self.batchers[name].submit(inputs).result()
            for output_name, value in outputs.items():
                if value.dtype.kind == "f" and not np.all(np.isfinite(value)):
                    raise ValueError(f"signature {name!r} output {output_name!r} is not finite on a blank image")

    @contextlib.contextmanager
    def hold(self):
        with self._idle:
            self._in_flight += 1
        try:
            yield self
        finally:
            with self._idle:
                self._in_flight -= 1
                self._idle.notify_all()

    def retire(self) -> None:
        """Wait for the requests holding this version, then stop its batchers."""
        with self._idle:
            self._idle.wait_for(lambda: self._in_flight == 0)
        for batcher in self.batchers.values():
            batcher.close()


@dataclasses.dataclass
class VersionState:
    state: str  # AVAILABLE | END (unloaded, or failed with `error`)
    error: str = ""


class ModelStore:
    """The versions of one model under a serving root, kept current by a watcher thread.

    Example:
        store = ModelStore("saved_models/demo/saved_model", "demo")
        store.start()
        with store.acquire("demo", None) as servable:
            outputs = servable.submit("serving_default", {"images": pixels}).result()
    """

    def __init__(self, root: Path, name: str, options: ServeOptions | None = None, metrics: Metrics | None = None):
        self.root, self.name = Path(root), name
        self.options, self.metrics = options or ServeOptions(), metrics or Metrics()
        self.metrics.loaded_versions = lambda: {self.name: sorted(self._servables)}
        self._servables: dict[int, Servable] = {}
        self._states: dict[int, VersionState] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    def start(self, watch: bool = True) -> None:
        """Load the newest versions that load; ServeSetupError when none does."""
        self.refresh()
        if not self._servables:
            failures = "; ".join(f"version {v}: {s.error}" for v, s in sorted(self._states.items()) if s.error)
            raise ServeSetupError(f"no servable version in {str(self.root)!r}" + (
                f" ({failures})" if failures else "; export one with `kerascnn export RUN --serving-root "
                                                  f"{self.root}` or train a run"))
        if watch:
            self._watcher = threading.Thread(target=self._watch, name="version-watcher", daemon=True)
            self._watcher.start()

    def _watch(self) -> None:
        while not self._stop.wait(self.options.poll_seconds):
            try:
                self.refresh()
            except Exception:  # the watcher must outlive one bad scan (e.g. the root briefly unreadable)
                log.exception("checking %s for new versions failed", self.root)

    def refresh(self) -> None:
        """Load versions newer than the served ones (newest first, up to keep_versions), swap, unload old ones."""
        on_disk = version_folders(self.root)
        newest_served = max(self._servables, default=0)
        candidates = sorted((v for v in on_disk if v > newest_served and v not in self._states), reverse=True)
        loaded = []
        for version in candidates[: self.options.keep_versions]:
            servable = self._load(version, on_disk[version])
            if servable:
                loaded.append(servable)
        if not self._servables and not loaded:  # at start-up, fall back to older versions that do load
            for version in candidates[self.options.keep_versions:]:
                servable = self._load(version, on_disk[version])
                if servable:
                    loaded.append(servable)
                    break
        gone = [v for v in self._servables if v not in on_disk]
        with self._lock:
            for servable in loaded:
                self._servables[servable.version] = servable
                self._states[servable.version] = VersionState("AVAILABLE")
            newest = sorted(self._servables, reverse=True)
            retired = [self._servables.pop(v) for v in newest[self.options.keep_versions:]]
            retired += [self._servables.pop(v) for v in gone if v in self._servables and len(self._servables) > 1]
            for servable in retired:
                self._states[servable.version] = VersionState("END")
        for servable in loaded:
            log.info("serving %s version %d from %s", self.name, servable.version, servable.path)
        for servable in retired:
            log.info("unloading %s version %d", self.name, servable.version)
            threading.Thread(target=servable.retire, name=f"retire-{servable.version}", daemon=True).start()

    def _load(self, version: int, path: Path) -> Servable | None:
        try:
            servable = Servable(self.name, version, path, self.options, self.metrics)
            servable.warm_up()
            return servable
        except Exception as exc:
            from kerascnn.errors import first_line

            message = f"{type(exc).__name__}: {first_line(exc)}"
            log.error("version %d of %s failed to load and is not served: %s", version, self.name, message)
            with self._lock:
                self._states[version] = VersionState("END", message)
            return None

    def versions(self) -> list[int]:
        with self._lock:
            return sorted(self._servables)

    def _check_name(self, name: str, label: str | None) -> None:
        if name != self.name:
            raise not_found(f"Servable not found for request: Latest({name}) (this server serves {self.name!r})")
        if label:
            raise invalid(f"Unrecognized servable version label: {label}")

    @contextlib.contextmanager
    def acquire(self, name: str, version: int | None, label: str | None = None):
        """The requested (default newest) loaded version, held until the block ends; NOT_FOUND otherwise."""
        self._check_name(name, label)
        with self._lock:
            if version is None:
                servable = self._servables[max(self._servables)] if self._servables else None
            else:
                servable = self._servables.get(version)
            if servable is None:
                what = f"Specific({name}, {version})" if version is not None else f"Latest({name})"
                raise not_found(f"Servable not found for request: {what}")
            held = servable.hold()
            held.__enter__()
        try:
            yield servable
        finally:
            held.__exit__(None, None, None)

    def status(self, name: str, version: int | None, label: str | None = None):
        """GetModelStatusResponse for all known versions, newest first, or one version."""
        from tensorflow_serving.apis import get_model_status_pb2

        if name != self.name:
            raise not_found(f"Could not find any versions of model {name}")
        if label:
            raise invalid(f"Unrecognized servable version label: {label}")
        with self._lock:
            states = dict(self._states)
        if version is not None:
            if version not in states:
                raise not_found(f"Could not find version {version} of model {name}")
            states = {version: states[version]}
        response = get_model_status_pb2.GetModelStatusResponse()
        for number, state in sorted(states.items(), reverse=True):
            entry = response.model_version_status.add()
            entry.version = number
            entry.state = get_model_status_pb2.ModelVersionStatus.State.Value(state.state)
            entry.status.SetInParent()
            if state.error:
                entry.status.error_code = 2  # UNKNOWN, as TF Serving reports a load failure
                entry.status.error_message = state.error
        return response

    def metadata(self, name: str, version: int | None, label: str | None = None):
        """GetModelMetadataResponse with the `signature_def` map, as TF Serving's GetModelMetadataImpl."""
        from tensorflow_serving.apis import get_model_metadata_pb2

        with self.acquire(name, version, label) as servable:
            response = get_model_metadata_pb2.GetModelMetadataResponse()
            response.model_spec.name = self.name
            response.model_spec.version.value = servable.version
            signatures = get_model_metadata_pb2.SignatureDefMap()
            for key, definition in servable.signature_defs.items():
                signatures.signature_def[key].CopyFrom(definition)
            response.metadata["signature_def"].Pack(signatures)
            return response

    def close(self) -> None:
        """Stop watching, finish the requests in flight and stop every batcher."""
        self._stop.set()
        if self._watcher:
            self._watcher.join()
        with self._lock:
            servables, self._servables = list(self._servables.values()), {}
        for servable in servables:
            servable.retire()


def classifications(outputs: dict[str, np.ndarray]) -> list[list[tuple[str, float]]]:
    """[[(label, score), ...] per example] from a classify signature's `classes` and/or `scores`."""
    scores, classes = outputs.get("scores"), outputs.get("classes")
    rows = len(scores if scores is not None else classes)
    result = []
    for i in range(rows):
        count = scores.shape[1] if scores is not None else classes.shape[1]
        labels = [c.decode("utf-8", "replace") for c in classes[i]] if classes is not None else [""] * count
        values = [float(s) for s in scores[i]] if scores is not None else [0.0] * count
        result.append(list(zip(labels, values)))
    return result

