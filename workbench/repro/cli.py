"""Command line: `python -m workbench {datasets, reproduce, assets, mae, diffusion, bench, matrix, jobs}`."""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from workbench.core.scales import SCALES
from workbench.core.validation import WorkbenchError


def _datasets(args: argparse.Namespace) -> int:
    from workbench.core.data import describe_datasets

    rows = describe_datasets(args.root, download=args.download)
    for row in rows:
        status = "available" if row["available"] else "MISSING"
        print(f"{row['dataset']:14s} {status:9s} classes={row['classes']:<3} image={row['image']:8s} "
              f"train={row['train']:<6} test={row['test']:<6}")
        for split in ("train", "test"):
            print(f"    {split:5s} source: {row[f'{split} source']}")
    return 0 if all(row["available"] for row in rows) else 1


def _reproduce(args: argparse.Namespace) -> int:
    from workbench.repro.runner import reproduce

    report, runs = reproduce(args.papers or None, scale=args.scale, output_dir=args.output)
    for run in runs:
        print(f"{run.notebook}: {'ok' if run.ok else 'FAILED'} in {run.seconds / 60:.1f} min {run.error}")
    print(f"report: {report}")
    print(report.read_text())
    return 0 if all(run.ok for run in runs) else 1


def _assets(args: argparse.Namespace) -> int:
    from workbench.core.artefacts import ArtefactStore
    from workbench.core.attacks import InputAwareConfig
    from workbench.core.runtime import assets_root
    from workbench.core.training import artefact_address, get_or_train, get_or_train_input_aware
    from workbench.defenses.trap_replace import TrapConfig, get_or_trap, trap_address
    from workbench.repro.assets import COMMITTED_MODELS

    target_root = assets_root()
    if target_root is None:
        raise WorkbenchError("assets live in a checkout's data/assets/: run this from the repository")
    wanted = {name: make_config() for name, make_config in COMMITTED_MODELS.items()}
    addresses = {name: (trap_address(config) if isinstance(config, TrapConfig) else artefact_address(config))[:2]
                 for name, config in wanted.items()}
    for kind in ("models", "iab", "trap"):
        for stale in sorted((target_root / kind).glob("*")):
            if (kind, stale.name) not in addresses.values():
                print(f"stale: {stale} is no longer listed in COMMITTED_MODELS; remove it with `git rm -r {stale}`")
    for name, config in wanted.items():
        kind, key = addresses[name]
        committed = target_root / kind / key
        if committed.is_dir() and not args.force:
            print(f"{name}: committed at {committed}")
            continue
        with tempfile.TemporaryDirectory() as scratch:
            # --force: an empty store, so everything (dependencies such as LC's surrogate too) is trained anew;
            # otherwise the usual store, where dependencies are found in the cache or data/assets
            store = ArtefactStore(scratch, read_only_roots=[]) if args.force else ArtefactStore()
            if isinstance(config, InputAwareConfig):
                trained, _ = get_or_train_input_aware(config, store=store, progress=True)
            elif isinstance(config, TrapConfig):
                trained = get_or_trap(config, store=store, progress=True)
            else:
                trained = get_or_train(config, store=store, progress=True)
            if Path(trained.path) != committed:  # replaced atomically: never absent or half-copied
                ArtefactStore(target_root, read_only_roots=[]).adopt(kind, key, trained.path)
        summary = trained.summary
        asr = float("nan") if summary.asr is None else summary.asr
        print(f"{name}: test CA {summary.ca:.4f}, ASR {asr:.4f} -> {committed}")
    return 0


def _train_stages(kind: str, final: Any, train: Callable[[Any], tuple[Any, dict[str, Any]]],
                  save: Callable[[Any, Any, dict[str, Any], Any], Path], commit: bool) -> Any:
    """Train the stages of a pretrained model's recipe that are missing (each resumes after an interruption;
    earlier stages stay in the cache, `commit` writes the last one into data/assets). Returns the final
    stage's artefact store."""
    from workbench.core.artefacts import ArtefactStore, config_key
    from workbench.core.runtime import assets_root

    store = ArtefactStore(assets_root(), read_only_roots=[]) if commit else ArtefactStore()
    stages = final.stages()
    done = max((i for i, stage in enumerate(stages)
                if ArtefactStore().load(kind, config_key(stage.to_dict()), stage.to_dict()) is not None), default=-1)
    for stage in stages[done + 1:]:
        model, metrics = train(stage)
        path = save(model, stage, metrics, store if stage is final else ArtefactStore())
        print(f"{kind} stage ({stage.steps} steps): final training loss {metrics['final_loss']:.4f} -> {path}")
    return store


def _mae(args: argparse.Namespace) -> int:
    from workbench.core.artefacts import ArtefactStore, config_key
    from workbench.core.mae_training import (
        DEFAULT_MAE,
        held_out_evaluation,
        load_workbench_mae,
        save_workbench_mae,
        train_mae,
    )
    from workbench.repro.results import save_figure
    from workbench.viz.images import image_grid

    store = _train_stages("mae", DEFAULT_MAE, lambda stage: train_mae(stage, device=args.device), save_workbench_mae,
                          args.commit)
    found = ArtefactStore().load("mae", config_key(DEFAULT_MAE.to_dict()), DEFAULT_MAE.to_dict())
    mae = load_workbench_mae(device=args.device)
    errors, rows = held_out_evaluation(mae, DEFAULT_MAE.datasets)
    for name, error in errors.items():
        print(f"held-out {name} test images, 75 % random masks: masked-pixel MSE {error:.4f}")
    if found.metrics.get("held_out_masked_mse") != errors:  # record it with the weights (same tensors, same key)
        save_workbench_mae(mae, DEFAULT_MAE, {**found.metrics, "held_out_masked_mse": errors}, store)
    fig = image_grid(rows, ["test image", "75 % masked", "restored"], scale=0.9)
    print(f"restorations: {save_figure(fig, notebook='tiny_mae', name='restorations', scale='default')}")
    return 0


def _diffusion(args: argparse.Namespace) -> int:
    import torch

    from workbench.core.artefacts import ArtefactStore, config_key
    from workbench.core.data import load_splits
    from workbench.core.diffusion_training import (
        DEFAULT_DIFFUSION,
        held_out_denoising_error,
        load_workbench_diffusion,
        save_workbench_diffusion,
        train_diffusion,
    )
    from workbench.core.runtime import make_generator
    from workbench.defenses.baselines.diffpure import DiffPure
    from workbench.repro.results import save_figure
    from workbench.viz.images import image_grid

    store = _train_stages("diffusion", DEFAULT_DIFFUSION, lambda stage: train_diffusion(stage, device=args.device),
                          save_workbench_diffusion, args.commit)
    found = ArtefactStore().load("diffusion", config_key(DEFAULT_DIFFUSION.to_dict()), DEFAULT_DIFFUSION.to_dict())
    diffusion = load_workbench_diffusion(device=args.device)
    error = held_out_denoising_error(diffusion, DEFAULT_DIFFUSION.datasets[0])
    print(f"held-out {DEFAULT_DIFFUSION.datasets[0]} test images, noise at t* = 0.1: noise-prediction MSE {error:.4f}")
    if found.metrics.get("held_out_noise_mse_at_t_star") != error:  # recorded with the weights (same key)
        save_workbench_diffusion(diffusion, DEFAULT_DIFFUSION, {**found.metrics, "held_out_noise_mse_at_t_star": error},
                                 store)
    test = load_splits(DEFAULT_DIFFUSION.datasets[0]).test
    x = test.subset(torch.randperm(len(test), generator=make_generator(0))[:8]).float_images()
    rows = [x, *(DiffPure(diffusion, sampler=sampler).purify(x) for sampler in ("ddpm", "sde"))]
    fig = image_grid(rows, ["test", "DDPM", "SDE"], scale=0.9)  # DiffPure's two samplers at t* = 0.1
    print(f"purified images: {save_figure(fig, notebook='tiny_diffusion', name='diffpure', scale='default')}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from workbench.repro.bench import bench_bdmae, bench_train, train_table

    if args.method == "train":
        if args.loop_images is not None:
            raise WorkbenchError("--loop-images is an option of `bench bdmae`; `bench train` takes --models, "
                                 "--device, --batch and --steps")
        rows = bench_train(models=args.models, device=args.device, batch=128 if args.batch is None else args.batch,
                           steps=20 if args.steps is None else args.steps)
        first, last = rows[0], rows[-1]
        cpu = f" ({last['steps']} on the CPU)" if last["steps"] != first["steps"] else ""
        print(f"images/s of training steps (forward, backward, optimiser step) on this machine: batch "
              f"{first['batch']}, {first['steps']} timed{cpu} after {first['warmup']} untimed")
        print(train_table(rows).to_markdown(index=False, floatfmt=".4g"))
        return 0
    if args.models is not None or args.steps is not None:
        raise WorkbenchError("--models and --steps are options of `bench train`; `bench bdmae` takes --batch, "
                             "--loop-images and --device")
    batch = 64 if args.batch is None else args.batch
    numbers = bench_bdmae(batch=batch, loop_images=args.loop_images, device=args.device)
    print(f"BDMAE on {numbers['images']} triggered CIFAR-10 images ({numbers['device']}): "
          f"{numbers['restorations']} MAE restorations, {numbers['queries']} label queries")
    print(f"  batched (batch {batch}):   {numbers['batched_images_per_s']:8.2f} images/s")
    print(f"  one image at a time:     {numbers['loop_images_per_s']:8.2f} images/s "
          f"(batched is {numbers['speedup_over_loop']:.2f}x faster)")
    print(f"  compute floor:           {numbers['floor_images_per_s']:8.2f} images/s "
          f"(batched takes {numbers['batched_over_floor']:.2f}x the floor)")
    return 0


def _matrix(args: argparse.Namespace) -> int:
    from workbench.core.scales import resolve_scale
    from workbench.repro.matrix import build_matrix, default_folder

    scale = resolve_scale(args.scale)
    folder = args.output or default_folder(scale)
    _, figure = build_matrix(scale, subjects=args.models or None, defences=args.defences, folder=folder,
                                  seed=args.seed, device=args.device)
    print((Path(folder) / "matrix.md").read_text())
    print(f"tables: {folder}; heat map: {figure}")
    return 0


def _jobs(args: argparse.Namespace) -> int:
    from workbench.core.runtime import resolve_device
    from workbench.core.scales import resolve_scale
    from workbench.repro.jobs import PAPER_JOBS, check_run_options, collect, describe, plan, run

    scale = resolve_scale(args.scale)
    resolve_device(args.device)  # refused before planning, even when every job is cached
    options = {name: value for name, value in (("address", args.address), ("workers", args.workers),
                                               ("retries", args.retries), ("cluster", args.cluster),
                                               ("timeout_min", args.timeout_min), ("partition", args.partition))
               if value is not None}
    check_run_options(args.executor, args.threads, options)
    jobs = collect(args.papers or list(PAPER_JOBS), scale)
    if args.action == "plan":
        print(describe(jobs, plan(jobs), scale))
        return 0
    for done in run(jobs, executor=args.executor, device=args.device, threads=args.threads, **options):
        print(f"done: {done}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workbench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("datasets", help="list every dataset with its source, sizes and class count")
    p.add_argument("--root", help="offline-mirror folder (default: $WORKBENCH_DATA)")
    p.add_argument("--download", action="store_true", help="let torchvision download what no local source has")
    p.set_defaults(run=_datasets)
    p = sub.add_parser("reproduce", help="execute the paper notebooks with papermill and write a report")
    p.add_argument("papers", nargs="*", help="papers to run (default: all); e.g. quickstart")
    p.add_argument("--scale", choices=SCALES, default=None,
                   help="scale preset (default: $WORKBENCH_SCALE or cpu)")
    p.add_argument("--output", help="output folder (default: outputs/<scale>)")
    p.set_defaults(run=_reproduce)
    p = sub.add_parser("assets", help="train the small models committed under data/assets (if missing)")
    p.add_argument("--force", action="store_true", help="retrain from scratch and overwrite even if committed")
    p.set_defaults(run=_assets)
    p = sub.add_parser("mae", help="pretrain the workbench's tiny MAE (resumes after an interruption)")
    p.add_argument("--device", default="auto")
    p.add_argument("--commit", action="store_true", help="write into data/assets (committed) instead of the cache")
    p.set_defaults(run=_mae)
    p = sub.add_parser("diffusion", help="train the workbench's tiny diffusion model for DiffPure (resumes after an "
                                         "interruption)")
    p.add_argument("--device", default="auto")
    p.add_argument("--commit", action="store_true", help="write into data/assets (committed) instead of the cache")
    p.set_defaults(run=_diffusion)
    p = sub.add_parser("bench", help="throughput: bdmae (batched vs one-image loop vs compute floor) or train "
                                     "(training images/s per model and device, GPU fast path vs plain)")
    p.add_argument("method", choices=("bdmae", "train"))
    p.add_argument("--batch", type=int, default=None, help="batch size (default: 64 for bdmae, 128 for train)")
    p.add_argument("--loop-images", type=int, default=None,
                   help="bdmae: images timed in the one-at-a-time loop (default: all of the batch)")
    p.add_argument("--models", default=None,
                   help="train: comma-separated model names (default: lenet5,resnet_small,resnet18,wrn16_1)")
    p.add_argument("--steps", type=int, default=None, help="train: timed steps per model and path (default: 20)")
    p.add_argument("--device", default="auto")
    p.set_defaults(run=_bench)
    p = sub.add_parser("matrix", help="every detector, purifier and repair on the same models (three tables and "
                                      "a heat map)")
    p.add_argument("models", nargs="*", help="subjects: names (default: the scale's) or BackdoorBench "
                                             "attack_result.pt paths")
    p.add_argument("--scale", choices=SCALES, default=None,
                   help="scale preset (default: $WORKBENCH_SCALE or cpu)")
    p.add_argument("--defences", nargs="+", default=None, help="registered defence names (default: all)")
    p.add_argument("--output", help="folder of the tables and cells (default: outputs/<scale>/matrix)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.set_defaults(run=_matrix)
    p = sub.add_parser("jobs", help="the papers' cached work as a job graph: plan what is not cached (with keys, "
                                    "dependencies, resources and estimated GPU-hours) or run it on an engine (the "
                                    "notebooks then only load)")
    p.add_argument("action", choices=("plan", "run"))
    p.add_argument("papers", nargs="*", help="papers (default: all: quickstart, bdmae, restore, lred, trap_replace)")
    p.add_argument("--scale", choices=SCALES, default=None, help="scale preset (default: $WORKBENCH_SCALE or cpu)")
    p.add_argument("--executor", default="inline",
                   help="inline: one after the other here; ray: a Ray cluster; slurm: Slurm job arrays (submitit)")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads per job on every engine (default: this process's; the same number gives "
                        "the same bytes on every engine)")
    p.add_argument("--address", default=None, help="ray: join this cluster ('auto' or host:port) instead of a local "
                                                   "one")
    p.add_argument("--workers", type=int, default=None,
                   help="ray: slots of the local cluster (default: the cores); slurm: at most this many jobs at once")
    p.add_argument("--retries", type=int, default=None, help="ray: reruns of a job whose worker died (default 1)")
    p.add_argument("--cluster", choices=("slurm", "local"), default=None,
                   help="slurm: submitit's Slurm executor (default) or its local one (subprocesses, for trying it)")
    p.add_argument("--timeout-min", dest="timeout_min", type=int, default=None,
                   help="slurm: each job's time limit in minutes; a job that reaches it is requeued (default 1440)")
    p.add_argument("--partition", default=None, help="slurm: the partition")
    p.set_defaults(run=_jobs)
    args = parser.parse_args(argv)
    try:
        if getattr(args, "root", None) is not None and not Path(args.root).is_dir():
            raise WorkbenchError(f"--root {args.root} is not a folder: give the offline mirror's folder")
        return args.run(args)
    except WorkbenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
