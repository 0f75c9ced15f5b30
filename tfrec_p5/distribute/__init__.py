"""Run training on TensorFlow's own distributed engine (``tf.distribute``).

Why a module: the models (``train_rating``, ``train_unified``, ``pretrain``) should not each
know how a ``MultiWorkerMirroredStrategy`` wants its data or how a
``ParameterServerStrategy`` wants a ``DatasetCreator``. They ask this module three things —
which strategy (``resolve_strategy``), which scope to build variables in (``scope``) and
what to hand ``model.fit`` (``fit_input``) — and the rest of the code is unchanged. The
default strategy is exactly the single-process path (no scope entered, same datasets, same
numerics).

    from tfrec_p5.distribute import resolve_strategy
    strategy = resolve_strategy("multi_worker")        # reads TF_CONFIG
    trained = train_rating(train, None, config, strategy=strategy)

Names (``--strategy`` on the CLI):

* ``default``: one process, no ``tf.distribute`` wrapper at all.
* ``mirrored``: ``MirroredStrategy``, all local devices (GPUs) of one machine.
* ``multi_worker``: ``MultiWorkerMirroredStrategy``; every worker runs the *same* command
  with its own ``TF_CONFIG`` (``{"cluster": {"worker": [...]}, "task": {"type": "worker",
  "index": i}}``). Synchronous data parallelism: each global batch is split across the
  workers, gradients are all-reduced, weights stay identical. Worker 0 (or ``chief``)
  exports; the others export to a temporary folder that is then removed, as the TF guide
  asks (saving may run collective ops, so every worker must call it).
* ``parameter_server``: ``ParameterServerStrategy``. ``TF_CONFIG`` names ``chief`` (the
  coordinator that runs the Python program), ``worker`` and ``ps`` tasks. Workers and
  parameter servers only run a ``tf.distribute.Server`` (``serve_forever``; the CLI does
  this itself when ``TF_CONFIG`` says the task is a worker or ps). Large variables —
  embedding tables — are split across the parameter servers by a
  ``MinSizePartitioner``, which is what makes a table larger than one machine's memory
  possible. Training is asynchronous; ``model.fit`` gets a ``DatasetCreator``.

Global batch size: ``batch_size`` in every config is the *global* batch. With
``multi_worker`` each of ``W`` workers computes on ``batch_size / W`` rows of the very batch
a single process would see (``batched_dataset(distributed=True)``), so the updates match
a single-process run up to float summation order; rating losses are averaged over the
global batch (``make_losses_distributable``). Two known differences: retrieval's in-batch
negatives are per replica (as in TFRS: each replica scores its queries against its own
slice of the batch, plus the whole catalog with ``full_softmax``), and the last, partial
batch of an epoch is split as evenly as ``tf.distribute`` can, each replica averaging its
slice over ``rows × replicas`` (Keras's rule), which weighs that one step's rows slightly
differently when the split is uneven.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

import tensorflow as tf

log = logging.getLogger(__name__)

STRATEGIES = ("default", "mirrored", "multi_worker", "parameter_server")
"""The names ``resolve_strategy`` (and ``--strategy``) accept; see the module docstring."""
DEFAULT_MIN_SHARD_BYTES = 256 << 10
"""``MinSizePartitioner``'s default: variables smaller than this stay in one piece."""

_CACHE: dict[tuple, tf.distribute.Strategy] = {}
_ACTIVE: list[tf.distribute.Strategy] = []


def tf_config() -> dict[str, Any]:
    """The parsed ``TF_CONFIG`` environment variable (``{}`` when unset)."""
    raw = os.environ.get("TF_CONFIG", "").strip()
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except ValueError as err:
        raise ValueError(f"TF_CONFIG is not valid JSON: {err}") from err
    if not isinstance(value, dict):
        raise ValueError("TF_CONFIG must be a JSON object with 'cluster' and 'task'")
    return value


def task_type() -> str | None:
    """This process's ``TF_CONFIG`` task type (``chief``, ``worker``, ``ps``) or ``None``."""
    return (tf_config().get("task") or {}).get("type")


def is_default(strategy: tf.distribute.Strategy | None) -> bool:
    """Whether ``strategy`` is TF's default (no-op) strategy or ``None``."""
    return strategy is None or type(strategy).__name__ == "_DefaultDistributionStrategy"


def is_parameter_server(strategy: tf.distribute.Strategy | None) -> bool:
    """Whether ``strategy`` is a ``ParameterServerStrategy``: its ``model.fit`` wants a
    ``DatasetCreator`` and its trained tables are sharded (see ``unsharded_copy``)."""
    return isinstance(strategy, tf.distribute.ParameterServerStrategy)


def resolve_strategy(name_or_strategy: str | tf.distribute.Strategy | None = None, *,
                     min_shard_bytes: int = DEFAULT_MIN_SHARD_BYTES,
                     max_shards: int | None = None) -> tf.distribute.Strategy:
    """A ``tf.distribute.Strategy`` from a name (``STRATEGIES``), or the one given.

    ``None`` means the strategy currently in scope (``tf.distribute.get_strategy()``),
    else the one set with ``use_strategy``, else the default strategy, so code called
    inside either picks it up without an argument. ``multi_worker`` and ``parameter_server`` read
    the cluster from ``TF_CONFIG``; each is created once per process (TensorFlow allows
    one collective / cluster setup per process), later calls return the same object.

    ``min_shard_bytes`` / ``max_shards`` (``parameter_server``): a variable is split into
    ``min(max_shards or #ps, size // min_shard_bytes)`` shards across the parameter
    servers (``tf.distribute.experimental.partitioners.MinSizePartitioner``).

        strategy = resolve_strategy("parameter_server", min_shard_bytes=1 << 20)
    """
    if name_or_strategy is None:
        if not tf.distribute.has_strategy() and _ACTIVE:
            return _ACTIVE[-1]
        return tf.distribute.get_strategy()
    if isinstance(name_or_strategy, tf.distribute.Strategy):
        return name_or_strategy
    name = str(name_or_strategy).strip().lower().replace("-", "_")
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name_or_strategy!r}; use one of "
                         f"{', '.join(STRATEGIES)}")
    if name == "default":
        return tf.distribute.get_strategy()
    key = (name, min_shard_bytes, max_shards, os.environ.get("TF_CONFIG", ""))
    if key in _CACHE:
        return _CACHE[key]
    if name == "mirrored":
        strategy = tf.distribute.MirroredStrategy()
    elif name == "multi_worker":
        if not tf_config().get("cluster"):
            log.warning("multi_worker without TF_CONFIG: training as a single worker")
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    else:
        strategy = _parameter_server(min_shard_bytes, max_shards)
    _CACHE[key] = strategy
    return strategy


def _parameter_server(min_shard_bytes: int, max_shards: int | None
                      ) -> tf.distribute.ParameterServerStrategy:
    config = tf_config()
    cluster = config.get("cluster") or {}
    if not cluster.get("ps") or not cluster.get("worker"):
        raise ValueError("parameter_server needs TF_CONFIG with 'worker' and 'ps' tasks "
                         "(and a 'chief' for the coordinator)")
    kind = (config.get("task") or {}).get("type")
    if kind in ("worker", "ps"):
        raise ValueError(f"this process is a {kind} task: it serves, it does not train; "
                         "call tfrec_p5.distribute.serve_forever() (the CLI does)")
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    partitioner = tf.distribute.experimental.partitioners.MinSizePartitioner(
        min_shard_bytes=int(min_shard_bytes), max_shards=int(max_shards or len(cluster["ps"])))
    return tf.distribute.ParameterServerStrategy(resolver, variable_partitioner=partitioner)


def serve_forever() -> None:
    """Run this ``worker`` / ``ps`` task's ``tf.distribute.Server`` until killed.

    For ``parameter_server`` clusters: the chief runs the training program, every other
    task runs this (the same ``tfrec-p5 train --strategy parameter_server`` command does
    it when ``TF_CONFIG`` names a worker or ps task). Never returns.
    """
    os.environ.setdefault("GRPC_FAIL_FAST", "use_caller")  # as the TF PS guide asks
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    server = tf.distribute.Server(resolver.cluster_spec(), job_name=resolver.task_type,
                                  task_index=resolver.task_id, protocol="grpc", start=True)
    log.info("serving %s:%s", resolver.task_type, resolver.task_id)
    server.join()


def is_server_task(strategy_name: str | None) -> bool:
    """True when this process is a ``worker`` / ``ps`` of a ``parameter_server`` cluster."""
    return (str(strategy_name or "").replace("-", "_") == "parameter_server"
            and task_type() in ("worker", "ps"))


@contextlib.contextmanager
def use_strategy(strategy: tf.distribute.Strategy | str | None) -> Iterator[
        tf.distribute.Strategy]:
    """Make ``strategy`` what ``resolve_strategy(None)`` returns inside the block, without
    entering ``strategy.scope()`` (so serving objects built there stay plain TF objects).

    Why: the CLI's task functions call ``train_rating`` / ``train_unified`` without a
    ``strategy`` argument; this hands them the ``--strategy`` choice.

        with use_strategy("multi_worker"):
            result = task.train(request)
    """
    resolved = resolve_strategy(strategy)
    _ACTIVE.append(resolved)
    try:
        yield resolved
    finally:
        _ACTIVE.pop()


def scope(strategy: tf.distribute.Strategy | None):
    """``strategy.scope()``, or a no-op context for the default strategy (unchanged path)."""
    return contextlib.nullcontext() if is_default(strategy) else strategy.scope()


def num_workers(strategy: tf.distribute.Strategy | None) -> int:
    """Worker processes taking part (1 for default / mirrored)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or is_default(strategy):
        return 1
    spec = resolver.cluster_spec().as_dict()
    return max(1, len(spec.get("worker", [])) + (0 if is_parameter_server(strategy)
                                                 else len(spec.get("chief", []))))


def is_chief(strategy: tf.distribute.Strategy | None = None) -> bool:
    """Whether this process writes the artifacts (exports, backbones, metrics).

    Single process: yes. ``multi_worker``: the ``chief`` task, or worker 0 when the
    cluster has no chief. ``parameter_server``: the coordinator (the only process that
    runs the program).
    """
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or is_default(strategy) or is_parameter_server(strategy):
        return True
    spec = resolver.cluster_spec().as_dict()
    if not spec:
        return True
    kind, index = resolver.task_type, resolver.task_id
    if kind in (None, "chief"):
        return True
    return kind == "worker" and "chief" not in spec and int(index or 0) == 0


@contextlib.contextmanager
def write_dir(path: str | os.PathLike,
              strategy: tf.distribute.Strategy | None = None) -> Iterator[str]:
    """Where this process should write ``path``'s contents: ``path`` on the chief, a
    temporary folder (removed on exit) on the other workers.

    Why: with ``multi_worker`` every worker must run the save (it may use collective ops),
    but only one may write to the shared destination (TF's multi-worker saving guide).

        with write_dir("saved_models/demo", strategy) as out:
            export(module, out)
    """
    if is_chief(strategy):
        yield os.fspath(path)
        return
    tmp = tempfile.mkdtemp(prefix="tfrec_p5-worker-")
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def steps_per_execution(strategy: tf.distribute.Strategy | None, requested: int) -> int:
    """``requested``, except 1 under ``MultiWorkerMirroredStrategy`` with several workers.

    Why: Keras runs ``steps_per_execution > 1`` as a ``tf.while_loop`` over train steps;
    the all-gather of sparse (``IndexedSlices``) embedding gradients inside it loses its
    cross-worker ordering between iterations ("Shape mismatch in the collective
    instance", measured on TF 2.21 with the retrieval model). One step per call keeps
    every collective in order; the per-step overhead is small next to the all-reduce.
    """
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and \
            num_workers(strategy) > 1 and requested > 1:
        log.info("multi_worker: steps_per_execution %d -> 1", requested)
        return 1
    return int(requested)


# ---------------------------------------------------------------------- data
def fit_input(strategy: tf.distribute.Strategy | None,
              build: Callable[..., tf.data.Dataset],
              steps: int | None = None) -> tuple[Any, int | None]:
    """``(x, steps_per_epoch)`` for ``model.fit`` under ``strategy``.

    ``build(**kwargs)`` makes the training dataset (the package's builders take
    ``distributed=`` / ``input_context=``, see ``tfrec_p5.data.pipeline``):

    * default: ``build()`` as is, ``steps_per_epoch=None`` (Keras counts the batches);
    * mirrored / multi_worker: ``build(distributed=True)``, the same global batches with
      ``AutoShardPolicy.DATA``; Keras splits each across replicas and workers;
    * parameter_server: a ``tf.keras.utils.experimental.DatasetCreator`` calling
      ``build(input_context=ctx)`` on every worker (rows sharded by worker, repeated) and
      ``steps_per_epoch`` = the batches of one pass (``steps`` or ``build()``'s size).
      The dataset function runs on the workers: in-memory tensors it captures are sent
      with it, so for data that does not fit in a graph read files in ``build``.

        x, steps = fit_input(strategy, lambda **kw: pointwise_dataset(t, v, 512, **kw))
        model.fit(x, steps_per_epoch=steps, epochs=3)
    """
    if is_default(strategy):
        return build(), None
    if is_parameter_server(strategy):
        if steps is None:
            steps = int(build().cardinality().numpy())
        creator = tf.keras.utils.experimental.DatasetCreator(
            lambda ctx: build(input_context=ctx))
        return creator, max(1, steps)
    return build(distributed=True), None


def unsharded_copy(model: tf.keras.Model, build: Callable[[], tf.keras.Model],
                   create_variables: Callable[[tf.keras.Model], None] | None = None,
                   probe: Callable[[tf.keras.Model], tf.Tensor] | None = None
                   ) -> tf.keras.Model:
    """A single-process copy of a ``parameter_server``-trained ``model``.

    Why: the trained model's embedding tables are ``ShardedVariable``s living on the
    parameter servers. Serving wants plain variables on one machine, and on TF 2.21 a
    SavedModel of a table split into *uneven* shards (121 rows on 2 servers) restores the
    second shard's rows at the wrong offsets (measured: exported predictions differ from
    the trained model for every row of shard 2). So after training we write the weights
    to a checkpoint (sliced variables are stored as slices of one full tensor), build the
    same architecture with ``build()`` outside the strategy, and restore into it.

    ``create_variables(copy)`` builds a subclassed model's variables (restoration of
    the checkpoint happens as they are created); functional models need none.
    ``probe(m)`` (inference on a fixed batch) must give the same result on both models,
    else ``RuntimeError``: the copy is checked, not assumed.
    """
    with tempfile.TemporaryDirectory(prefix="tfrec_p5-unshard-") as tmp:
        path = tf.train.Checkpoint(model=model).write(os.path.join(tmp, "model"))
        copy = build()
        status = tf.train.Checkpoint(model=copy).read(path)
        if create_variables is not None:
            create_variables(copy)
        status.expect_partial().assert_existing_objects_matched()
    if probe is not None:
        diff = float(tf.reduce_max(tf.abs(probe(model) - probe(copy))))
        if not diff <= 1e-5:
            raise RuntimeError(f"the single-process copy of the parameter-server model "
                               f"differs from it by {diff}")
    return copy


# ---------------------------------------------------------------------- losses
class GlobalBatchMean:
    """A Keras loss averaged over the *global* batch: ``sum(per-example) / (rows × R)``.

    Why: Keras refuses ``SUM_OVER_BATCH_SIZE`` losses inside a ``tf.distribute`` replica
    outside ``compile`` (each replica would average its own slice, and the summed
    gradients would be ``R`` times too large). This is ``tf.nn.compute_average_loss``'s
    rule, usable in any context; with one replica it is the plain mean. Assumes equal
    per-replica slices (the last, partial batch may be split unevenly).
    """

    def __init__(self, loss: tf.keras.losses.Loss) -> None:
        config = {**loss.get_config(), "reduction": tf.keras.losses.Reduction.NONE}
        self.per_example = type(loss).from_config(config)
        self.name = getattr(loss, "name", "loss")

    def __call__(self, y_true, y_pred, sample_weight=None) -> tf.Tensor:
        values = self.per_example(y_true, y_pred, sample_weight=sample_weight)
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        rows = tf.cast(tf.size(values) * replicas, values.dtype)
        return tf.math.divide_no_nan(tf.reduce_sum(values), rows)


def make_losses_distributable(model: tf.keras.Model) -> int:
    """Swap mean-reduced losses of the model's ``tfrs.tasks.Ranking`` tasks for
    ``GlobalBatchMean``; returns how many were swapped.

    Only for non-default strategies (the single-process path keeps its losses). Sum-reduced
    losses (``tfrs.tasks.Retrieval``) are already correct: summing over replicas gives
    the global sum.
    """
    import tensorflow_recommenders as tfrs

    swapped = 0
    reducing = (tf.keras.losses.Reduction.AUTO, tf.keras.losses.Reduction.SUM_OVER_BATCH_SIZE)
    for module in (model, *model.submodules):
        if isinstance(module, tfrs.tasks.Ranking):
            loss = getattr(module, "_loss", None)
            if isinstance(loss, tf.keras.losses.Loss) and loss.reduction in reducing:
                module._loss = GlobalBatchMean(loss)
                swapped += 1
    return swapped


__all__ = ["DEFAULT_MIN_SHARD_BYTES", "STRATEGIES", "GlobalBatchMean", "fit_input",
           "is_chief", "is_default", "is_parameter_server", "is_server_task",
           "make_losses_distributable", "num_workers", "resolve_strategy", "scope",
           "serve_forever", "steps_per_execution", "task_type", "tf_config",
           "unsharded_copy", "use_strategy", "write_dir"]
