"""tf.distribute for kerascnn: choose a strategy, know this worker's role, train where `fit` cannot.

Strategies (`train.strategy`, `--strategy`):
    auto          mirrored with 2+ GPUs, multi_worker when TF_CONFIG names 2+ tasks, else default
    default       TensorFlow's default strategy: one device, `model.fit` as usual
    mirrored      MirroredStrategy over all local GPUs (needs a GPU)
    multi_worker  MultiWorkerMirroredStrategy over the cluster in TF_CONFIG
    tpu           TPUStrategy over the TPU found by TPUClusterResolver

`train.batch_size` is the batch of one replica; the global batch is that times
`strategy.num_replicas_in_sync`.

With TF 2.21 / Keras 3.15, `model.fit` under MultiWorkerMirroredStrategy fails ("Attempt to convert
a value (PerReplica ...) to a Tensor", keras-team/keras#20585), while Keras' own `model.train_step`
run by `strategy.run` trains correctly. `fit_distributed` is therefore a small copy of fit's epoch
loop around `train_step`/`test_step`, with the same callbacks (checkpoints, early stopping, CSV
history, TensorBoard, BackupAndRestore) and the same History. `FIT_IS_BROKEN` lists the strategies
that take it; when upstream is fixed, emptying that tuple switches them back to `model.fit`.

Example:
    strategy = make_strategy("auto")
    with strategy.scope():
        model = build_model("resnet_small", (28, 28, 1), 10)
"""

from __future__ import annotations

import contextlib
import json
import os

import keras
import tensorflow as tf

from kerascnn.config import STRATEGIES
from kerascnn.errors import ConfigError, first_line

TF_CONFIG_EXAMPLE = ('TF_CONFIG=\'{"cluster": {"worker": ["host1:2222", "host2:2222"]}, '
                     '"task": {"type": "worker", "index": 0}}\'')


def tf_config() -> dict | None:
    """The parsed TF_CONFIG environment variable (None when unset), checked for a usable cluster and task."""
    raw = os.environ.get("TF_CONFIG", "").strip()
    if not raw:
        return None
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"TF_CONFIG is not valid JSON ({exc.msg} at position {exc.pos}); "
                          f"expected e.g. {TF_CONFIG_EXAMPLE}") from None
    cluster = config.get("cluster") if isinstance(config, dict) else None
    task = config.get("task") if isinstance(config, dict) else None
    if not isinstance(cluster, dict) or not any(isinstance(cluster.get(k), list) and cluster[k]
                                                for k in ("chief", "worker")):
        raise ConfigError(f"TF_CONFIG must list the cluster's workers under cluster.worker; "
                          f"expected e.g. {TF_CONFIG_EXAMPLE}")
    if not isinstance(task, dict) or not isinstance(task.get("index", 0), int):
        raise ConfigError(f"TF_CONFIG must say which task this process is (task.type and task.index); "
                          f"expected e.g. {TF_CONFIG_EXAMPLE}")
    kind, index = task.get("type"), task.get("index", 0)
    if kind not in ("chief", "worker") or not 0 <= index < len(cluster.get(kind) or []):
        raise ConfigError(f"TF_CONFIG task {kind}:{index} is not in its cluster "
                          f"({', '.join(f'{k}: {len(v)}' for k, v in cluster.items())})")
    return config


def cluster_size(config: dict | None) -> int:
    """Number of chief and worker tasks in a TF_CONFIG (0 without one)."""
    if not config:
        return 0
    return sum(len(config["cluster"].get(kind) or []) for kind in ("chief", "worker"))


def resolve_strategy(name: str = "auto") -> str:
    """The concrete strategy `name` stands for: `auto` becomes mirrored (2+ GPUs), multi_worker (a
    TF_CONFIG cluster of 2+ tasks) or default; other names are returned as they are."""
    if name not in STRATEGIES:
        raise ConfigError(f"unknown strategy {name!r}; choose from {', '.join(STRATEGIES)}")
    if name != "auto":
        return name
    if len(tf.config.list_physical_devices("GPU")) > 1:
        return "mirrored"
    return "multi_worker" if cluster_size(tf_config()) > 1 else "default"


def make_strategy(name: str = "auto") -> tf.distribute.Strategy:
    """The tf.distribute strategy called `name` (see the module docstring), or a ConfigError saying why not.

    Call it before TensorFlow runs anything else in the process: MultiWorkerMirroredStrategy must
    configure the runtime's collective ops at start-up.
    """
    name = resolve_strategy(name)
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        if not tf.config.list_physical_devices("GPU"):
            raise ConfigError("strategy 'mirrored' needs a GPU and TensorFlow sees none; use --strategy default "
                              "(auto picks mirrored only with 2+ GPUs)")
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        if tf_config() is None:
            raise ConfigError(f"strategy 'multi_worker' needs the TF_CONFIG environment variable naming the "
                              f"cluster and this worker, e.g. {TF_CONFIG_EXAMPLE}")
        try:
            return tf.distribute.MultiWorkerMirroredStrategy()
        except RuntimeError as exc:
            raise ConfigError(f"strategy 'multi_worker' must be created before TensorFlow runs anything in the "
                              f"process ({first_line(exc)}); start a fresh process, e.g. the CLI") from None
    return _tpu_strategy()


def _tpu_strategy() -> tf.distribute.Strategy:
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, RuntimeError, tf.errors.OpError) as exc:
        raise ConfigError(f"strategy 'tpu' found no TPU ({first_line(exc)}); run on a TPU VM or use --strategy auto") from None
    return tf.distribute.TPUStrategy(resolver)


def strategy_name(strategy: tf.distribute.Strategy) -> str:
    """The `train.strategy` name of a strategy object (what `auto` resolved to)."""
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return "multi_worker"
    if isinstance(strategy, tf.distribute.MirroredStrategy):
        return "mirrored"
    if isinstance(strategy, tf.distribute.TPUStrategy):
        return "tpu"
    return "default"


def worker_task(strategy: tf.distribute.Strategy) -> tuple[str, int] | None:
    """(task type, index) of this process in a multi-worker cluster; None on a single machine."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type or not resolver.cluster_spec().as_dict():
        return None
    return resolver.task_type, int(resolver.task_id)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True for the process that writes the run directory: the chief task, else worker 0, else the only one."""
    task = worker_task(strategy)
    if task is None:
        return True
    kind, index = task
    has_chief = bool(strategy.cluster_resolver.cluster_spec().as_dict().get("chief"))
    return kind == "chief" or (kind == "worker" and index == 0 and not has_chief)


def global_batch_size(strategy: tf.distribute.Strategy, per_replica: int) -> int:
    """Examples per training step over all replicas."""
    return per_replica * strategy.num_replicas_in_sync


@contextlib.contextmanager
def precision(policy: str):
    """Build layers under the Keras dtype policy `policy` (float32, mixed_bfloat16, mixed_float16: the
    mixed ones keep float32 variables).

    The policy is global in Keras and read when a layer is created, so it is set for the block only.
    """
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def check_float32_output(model: keras.Model, input_shape: tuple[int, int, int], name: str, policy: str) -> None:
    """Refuse a model built under a mixed `policy` whose probabilities are not float32 (a float16 or
    bfloat16 softmax rounds small probabilities to 0 and makes the loss unstable)."""
    dtype = keras.backend.standardize_dtype(model(keras.ops.zeros((1, *input_shape)), training=False).dtype)
    if dtype != "float32":
        raise ConfigError(f"model {name!r} computes its probabilities in {dtype} under {policy}; give its "
                          f"output layer dtype='float32' or train with --set train.precision=float32")


# Strategies whose `model.fit` fails in TF 2.21 / Keras 3.15 (keras-team/keras#20585).
FIT_IS_BROKEN = (tf.distribute.MultiWorkerMirroredStrategy,)


def needs_custom_loop(strategy: tf.distribute.Strategy) -> bool:
    """Whether `fit_distributed` must stand in for `model.fit` under `strategy`."""
    return isinstance(strategy, FIT_IS_BROKEN)


def distribute_dataset(strategy: tf.distribute.Strategy, dataset: tf.data.Dataset, make_batches,
                       global_batch: int, repeat: bool = False):
    """Shard unbatched `dataset` by worker before `make_batches(shard, per_replica_batch)` runs.

    Each worker reads, shuffles and augments only its own shard (`tf.data.Dataset.shard` in
    `distribute_datasets_from_function`). Training streams repeat, so every worker takes the same
    number of full steps and no replica ever gets an empty batch (BatchNormalization would turn it into NaN).
    """

    def worker_batches(context: tf.distribute.InputContext) -> tf.data.Dataset:
        shard = dataset.shard(context.num_input_pipelines, context.input_pipeline_id)
        batched = make_batches(shard, context.get_per_replica_batch_size(global_batch))
        return batched.repeat() if repeat else batched

    return strategy.distribute_datasets_from_function(worker_batches)


def _replicated_step(strategy: tf.distribute.Strategy, step, jit_compile: bool):
    """One `strategy.run` of a Keras step function, its logs averaged over replicas (as fit does)."""
    if jit_compile:
        step = tf.function(step, jit_compile=True, reduce_retracing=True)

    @tf.function(reduce_retracing=True)
    def replicated(batch):
        logs = strategy.run(step, args=(batch,))
        return {name: strategy.reduce(tf.distribute.ReduceOp.MEAN, value, axis=None) for name, value in logs.items()}

    return replicated


def _float_logs(logs: dict) -> dict:
    return {name: float(value) for name, value in logs.items()}


def _local_replicas(strategy: tf.distribute.Strategy) -> int:
    resolver = getattr(strategy, "cluster_resolver", None)
    workers = sum(len(tasks) for kind, tasks in resolver.cluster_spec().as_dict().items()
                  if kind in ("chief", "worker")) if resolver is not None else 0
    return strategy.num_replicas_in_sync // max(1, workers)


def _replica_sum(strategy: tf.distribute.Strategy, variables: list, weight: float):
    """A function returning, for each variable, the sum over all replicas of `weight * value` (float64)."""

    @tf.function
    def replica_sum():
        def replica():
            context = tf.distribute.get_replica_context()
            return context.all_reduce(tf.distribute.ReduceOp.SUM, [tf.cast(v, tf.float64) * weight for v in variables])

        return strategy.experimental_local_results(strategy.run(replica))[0]

    return replica_sum


def _assign(variables: list, values) -> None:
    for variable, value in zip(variables, values):
        variable.assign(tf.cast(value, variable.dtype))


def sync_from_chief(strategy: tf.distribute.Strategy, variables) -> None:
    """Give every replica the chief's values of `variables`: after a restore from backup only the chief
    has loaded state (its run directory holds the backup), and this makes the whole cluster agree."""
    variables = [v for v in variables if tf.as_dtype(v.dtype).is_floating or tf.as_dtype(v.dtype).is_integer]
    weight = 1.0 / _local_replicas(strategy) if is_chief(strategy) else 0.0
    _assign(variables, _replica_sum(strategy, variables, weight)())


def moving_statistics_averager(strategy: tf.distribute.Strategy, model: keras.Model):
    """A function that averages non-trainable float variables (BatchNormalization's moving mean and
    variance) over replicas.

    Keras 3 creates them with aggregation NONE, so each replica updates only its own copy from its
    own batches and the copies drift apart; averaging once an epoch keeps checkpoints and the
    chief's export independent of which replica wrote them.
    """
    variables = [v for v in model.non_trainable_variables if tf.as_dtype(v.dtype).is_floating]
    if not variables or strategy.num_replicas_in_sync == 1:
        return lambda: None
    replica_sum = _replica_sum(strategy, variables, 1.0 / strategy.num_replicas_in_sync)
    return lambda: _assign(variables, replica_sum())


def fit_distributed(model: keras.Model, x, validation_data=None, epochs: int = 1, steps_per_epoch: int = 1,
                    callbacks=(), verbose: int = 1, initial_epoch: int = 0) -> keras.callbacks.History:
    """`model.fit` for distributed datasets, built from Keras' own `train_step` and `test_step`.

    Args:
        model: a compiled model built under its strategy's scope.
        x: a repeating distributed training dataset (see `distribute_dataset(..., repeat=True)`).
        validation_data: a finite distributed dataset evaluated after every epoch, or None.
        epochs: last epoch (exclusive), as in fit.
        steps_per_epoch: training steps per epoch (all workers take the same number).
        callbacks: Keras callbacks; BackupAndRestore's restored state is shared by the chief with all workers.
        verbose: 0 silent, 1 progress bar, 2 one line per epoch.
        initial_epoch: epoch to start from (BackupAndRestore may move it on).

    Returns:
        The History callback, as `model.fit` returns it.
    """
    strategy = model.distribute_strategy
    with strategy.scope():  # as in fit: optimizer variables and callbacks' saves need it
        return _fit_loop(model, strategy, x, validation_data, epochs, steps_per_epoch, callbacks, verbose,
                         initial_epoch)


def _fit_loop(model, strategy, x, validation_data, epochs, steps_per_epoch, callbacks, verbose, initial_epoch):
    callback_list = keras.callbacks.CallbackList(list(callbacks), add_history=True, add_progbar=verbose != 0,
                                                 model=model, verbose=verbose, epochs=epochs, steps=steps_per_epoch)
    jit = bool(model.jit_compile)
    train_step = _replicated_step(strategy, model.train_step, jit)
    test_step = _replicated_step(strategy, model.test_step, jit)
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    model.stop_training = False
    callback_list.on_train_begin()
    # BackupAndRestore (in on_train_begin) restored weights and `_initial_epoch` on the chief only.
    start = tf.Variable(model._initial_epoch or initial_epoch, dtype=tf.int64, trainable=False)
    sync_from_chief(strategy, [*model.variables, *model.optimizer.variables, start])
    average_moving_statistics = moving_statistics_averager(strategy, model)
    iterator = iter(x)
    logs: dict = {}
    for epoch in range(int(start.numpy()), epochs):
        model.reset_metrics()
        callback_list.on_epoch_begin(epoch)
        for step in range(steps_per_epoch):
            callback_list.on_train_batch_begin(step)
            batch_logs = _float_logs(train_step(next(iterator)))
            callback_list.on_train_batch_end(step, batch_logs)
            if model.stop_training:
                break
        logs = _float_logs(model.get_metrics_result())
        average_moving_statistics()
        if validation_data is not None:
            model.reset_metrics()
            callback_list.on_test_begin()  # as in fit: e.g. the averaged (EMA) weights are swapped in here
            for batch in validation_data:
                test_step(batch)
            callback_list.on_test_end()
            logs.update({f"val_{name}": value for name, value in _float_logs(model.get_metrics_result()).items()})
        callback_list.on_epoch_end(epoch, logs)
        if model.stop_training:
            break
    model.optimizer.finalize_variable_values(model.trainable_variables)  # as in fit: EMA weights written in
    callback_list.on_train_end(logs)
    model._initial_epoch = None
    return model.history
