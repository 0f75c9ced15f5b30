"""The RecBole side of ``benchmarks/peers_sequential.py``: train RecBole's SASRec with its
documented defaults on the split that ``peers_sequential.py`` wrote, and write what it
recommends after every epoch (no metric of ours is computed here).

Runs in a throwaway virtual environment holding RecBole and PyTorch (CPU), never in the
project's (RecBole is no dependency of tfrec_p5); see ``peers_sequential.py`` for the
install commands:

    /tmp/recbole/bin/python benchmarks/_recbole_worker.py JOB.json

``JOB.json``: ``{"data_dir": DIR, "split": NPZ, "out": NPZ, "threads": T, "k": K,
"epochs": null | N, "max_minutes": null | M}``. ``DIR/beauty/beauty.inter`` holds every
event (``user_id:token``, ``item_id:token``, ``timestamp:float`` = the event's position in
its user's sequence), so RecBole's sequential default ``eval_args`` (leave-one-out ``LS:
valid_and_test``, time order ``TO``, ``full`` ranking) cut the same split as ours.
``NPZ`` holds ``hist_u``, ``hist_i`` (each user's training + validation events: the test
inputs) as raw integer ids. ``epochs`` (smoke runs only) overrides RecBole's 300.

Configuration: RecBole's ``overall.yaml`` + ``SASRec.yaml`` + ``sample.yaml`` +
``quick_start_config/sequential.yaml`` as ``Config(model="SASRec")`` loads them, with only
what the data and the machine need: ``load_col`` adds ``timestamp`` (the default loads
user and item only, and time order needs it), ``train_neg_sample_args: None`` (RecBole
refuses negative sampling with SASRec's default ``loss_type: CE``, as its SASRec page
says), paths into ``DIR``, ``show_progress: False`` (no progress bar in the log).

After every epoch (RecBole's ``fit`` callback, called once its validation and checkpoint
are done) the model ranks every item for each user's test row (``full_sort_predict``,
the padding item and the user's training + validation items set to -inf) and the top
``K`` are kept; the time spent there is subtracted from the epoch's wall seconds.

Output ``NPZ``: ``epochs``, ``seconds`` (since ``fit`` started, the curve's own work
excluded), ``valid_score`` (RecBole's ``valid_metric``, MRR@10), ``best`` (RecBole's best
epoch flag), ``lists`` ``[epochs, users, K]`` raw item ids (int16) for ``users`` (raw
ids), ``valid_u``, ``valid_i``, ``test_u``, ``test_i`` (RecBole's own split, raw ids),
``fit_seconds``, ``prepare_seconds`` (dataset, loaders and model), ``capped``, and
``recbole_test`` (RecBole's own ``evaluate`` of the best checkpoint, its protocol: no
history masking) with its keys in ``recbole_test_keys``.

Imports only numpy, torch and recbole.
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np


class Capped(Exception):
    """Raised from the epoch callback once ``max_minutes`` of fitting have passed."""


def main(argv: list[str]) -> int:
    with open(argv[0], encoding="utf-8") as f:
        job = json.load(f)
    import torch

    torch.set_num_threads(job["threads"])
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.model.sequential_recommender import SASRec
    from recbole.trainer import Trainer
    from recbole.utils import init_logger, init_seed

    # Importing RecBole's sequential models runs sine.py's module-level
    # torch.autograd.set_detect_anomaly(True) (a debugging mode that slows every backward
    # pass several fold, whichever model trains); the peer trains without it.
    torch.autograd.set_detect_anomaly(False)

    settings = {"data_path": job["data_dir"],
                "checkpoint_dir": os.path.join(job["data_dir"], "saved"),
                "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
                "train_neg_sample_args": None, "show_progress": False}
    if job.get("epochs"):
        settings["epochs"] = job["epochs"]
    start = time.perf_counter()
    sys.argv = sys.argv[:1]  # RecBole's Config reads --key=value settings from argv
    # The class, not its name: looking a name up imports every RecBole model, some of
    # which need packages RecBole does not install (kmeans_pytorch).
    config = Config(model=SASRec, dataset="beauty", config_dict=settings)
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    init_seed(config["seed"], config["reproducibility"])  # as run_recbole does
    model = SASRec(config, train_data.dataset).to(config["device"])
    trainer = Trainer(config, model)
    prepare_seconds = time.perf_counter() - start

    users_tok = dataset.field2id_token[dataset.uid_field]
    items_tok = dataset.field2id_token[dataset.iid_field]
    item_raw = np.zeros(len(items_tok), np.int64)
    item_raw[1:] = items_tok[1:].astype(np.int64)  # index 0 is RecBole's padding
    item_id = {tok: i for i, tok in enumerate(items_tok)}
    user_id = {tok: i for i, tok in enumerate(users_tok)}
    split = np.load(job["split"])
    hist_u = np.array([user_id[str(u)] for u in split["hist_u"]])
    hist_i = np.array([item_id[str(i)] for i in split["hist_i"]])
    order = np.argsort(hist_u, kind="stable")
    hist_u, hist_i = hist_u[order], hist_i[order]
    starts = np.searchsorted(hist_u, np.arange(len(users_tok) + 1))

    def targets(loader) -> tuple[np.ndarray, np.ndarray]:
        inter = loader._dataset.inter_feat
        return (users_tok[inter[dataset.uid_field].numpy()].astype(np.int64),
                item_raw[inter[dataset.iid_field].numpy()])

    batches = []  # the test rows in the loader's order, with their history mask
    for interaction, _, _, _ in test_data:
        uid = interaction[dataset.uid_field].numpy()
        counts = starts[uid + 1] - starts[uid]
        rows = np.repeat(np.arange(len(uid)), counts)
        cols = np.concatenate([hist_i[starts[u]:starts[u + 1]] for u in uid])
        batches.append((interaction, uid, torch.from_numpy(rows), torch.from_numpy(cols)))
    test_users = np.concatenate([users_tok[b[1]].astype(np.int64) for b in batches])

    @torch.no_grad()
    def top_lists() -> np.ndarray:
        model.eval()
        out = []
        for interaction, _, rows, cols in batches:
            scores = model.full_sort_predict(interaction.to(config["device"]))
            scores[:, 0] = -np.inf
            scores[rows, cols] = -np.inf
            out.append(item_raw[torch.topk(scores, job["k"], dim=1).indices.numpy()])
        model.train()
        return np.concatenate(out).astype(np.int16)

    record = {"epochs": [], "seconds": [], "valid_score": [], "best": [], "lists": []}
    spent = 0.0
    fit_start = time.perf_counter()

    def on_epoch(epoch: int, valid_score: float) -> None:
        nonlocal spent
        now = time.perf_counter()
        record["epochs"].append(epoch + 1)
        record["seconds"].append(now - fit_start - spent)
        record["valid_score"].append(valid_score)
        record["best"].append(trainer.cur_step == 0)
        record["lists"].append(top_lists())
        print(f"sasrec epoch {epoch + 1}: {record['seconds'][-1]:.1f} s, valid "
              f"{config['valid_metric']} {valid_score:.4f}"
              + (" (best)" if record["best"][-1] else ""), flush=True)
        spent += time.perf_counter() - now
        if job.get("max_minutes") and record["seconds"][-1] > 60 * job["max_minutes"]:
            raise Capped

    capped = False
    try:
        trainer.fit(train_data, valid_data, saved=True, show_progress=False,
                    callback_fn=on_epoch)
    except Capped:
        capped = True
    fit_seconds = time.perf_counter() - fit_start - spent
    # RecBole's own test of the best checkpoint (as run_recbole does); its checkpoint holds
    # the Config object, so it is read with weights_only=False (torch >= 2.6's default
    # refuses it).
    checkpoint = torch.load(trainer.saved_model_file, map_location="cpu", weights_only=False)
    model.load_state_dict(checkpoint["state_dict"])
    result = trainer.evaluate(test_data, load_best_model=False)
    valid_u, valid_i = targets(valid_data)
    test_u, test_i = targets(test_data)
    np.savez(job["out"], **{k: np.asarray(v) for k, v in record.items()},
             users=test_users, valid_u=valid_u, valid_i=valid_i, test_u=test_u,
             test_i=test_i, fit_seconds=fit_seconds, prepare_seconds=prepare_seconds,
             capped=capped, recbole_test=np.array([float(v) for v in result.values()]),
             recbole_test_keys=np.array(list(result.keys())),
             settings=json.dumps({k: str(config[k]) for k in (
                 "epochs", "train_batch_size", "learning_rate", "loss_type", "n_layers",
                 "n_heads", "hidden_size", "inner_size", "hidden_dropout_prob",
                 "attn_dropout_prob", "MAX_ITEM_LIST_LENGTH", "stopping_step",
                 "valid_metric", "eval_args", "seed", "train_neg_sample_args", "device")}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
