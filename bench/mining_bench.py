"""Mining benchmark: do entropy, aldd, cald and diverse pick better images than random, and what does each cost?

A generated pool in the spirit of ../shared/mining.md §4 (4 classes at 55/30/12/3 %, so one rare class; 15 %
empty images; 20 % hard images with small low-contrast objects), a fixed test split, a seeded initial labelled
set. Every step runs the executor itself (`start.py`) on YMIR-style /in and /out folders:

  round 0   train YOLOv5n from scratch on the initial set (shared by all methods of a seed)
  round r   each method mines the unlabelled pool with its current model, the top `budget` images get their
            labels, and the model is fine-tuned (warm start) on the grown set; mAP@0.5 on the test split
  proxy     the round-0 model scores the whole pool (labels known): Spearman correlation between the mining
            score and the per-image detection error FN + FP (IoU 0.5, conf 0.25); also for ALDD at the input
            resolution (the reference image's computation), with its rank agreement with our default ALDD,
            and for CALD with images without detections held to every tenth place (cald_undetected_share 0.1)
  breakdown the round-0 and each method's final model on the test split: mAP@0.5 over the shifted and the
            unshifted images, AP@0.5 per class (where a method's mAP is won or lost)
  speed     images/s of plain inference, of mining with each algorithm, and of mining + inference in one run,
            from the executor's own timing line (the forward/score loop, without start-up); and the wall time of
            each whole task (start-up, the loop, a ranking that needs the whole pool, the outputs); with
            --speed-repeats N, the median of N runs, the tasks taking turns

With --shift, a share of the pool and of the test split lies on a second background (a domain shift) that the
initial set lacks; with --source N, round 0 fine-tunes a model trained once on N generated images without the
shift, as a YMIR user starts from pretrained weights, instead of training from scratch (--source-frequencies:
with its own class shares, as pretraining data need not share the target's rare class). With --target CLASS,
YMIR's own rare-class protocol (../shared/mining.md §2.3): a single-class detector of CLASS, the other shapes
unlabelled clutter, the test split and the initial set a quarter positive (YMIR's 1 : 3), the pool at the class's
natural rate (with star, 4 % of the images), so that what a method adds is mostly negatives unless it finds the
class; --round0-options then sets round 0's learning rate, since the source model's head does not fit one class.
Round 0 trains from scratch at lr0 0.02 (from the source model: at the fine-tuning options); the fine-tuning
rounds start from a trained model and use lr0 0.005 (at 0.02 a round's model first fell below the one it
started from; bench/RESULTS.md has both).
Each seed's results can be appended to a JSON-lines file (--record) and any set of such files summarised
together (--summarise), so seeds measured by separate runs combine into one table: per method the gain over
round 0 (final and mean over rounds), the paired difference to random per seed with a bootstrap interval over
seeds, and what each method selected (empty, hard and rare-class images, boxes per image). --methods picks the
methods run through the rounds (a variant such as cald@share0.1 too); runs of the same seed with different
--methods merge in the summary, since round 0 is deterministic.
By default the test split validates every epoch of every training and chooses its stage (the recorded protocols);
--val N draws a validation split of N images apart from it to do that, and scores the test split once per model:
on a large test split most of a round's time is validation (calibrated protocol, machine B: ~35 of an epoch's
~40 s validate its 300 test images), and the test split then no longer picks the stage it reports. --proxy run
scores the pool only with the --methods run (default: every algorithm and variant).

    .venv/bin/python bench/mining_bench.py [--seeds 1] [--first-seed 0] [--pool 360] [--initial 120]
                                           [--rounds 2] [--budget 60] [--skip-speed] [--speed-repeats N] [--record FILE]
                                           [--finetune-options "--hyp warmup_epochs=0 mosaic=0 lr0=0.02"]
                                           [--shift 0.3] [--source 360 --source-epochs 60 --source-cache DIR]
                                           [--source-frequencies 0.25,0.25,0.25,0.25]
                                           [--methods random,entropy,aldd,cald,cald@share0.1]
                                           [--target star --round0-options "--hyp lr0=0.02 ..."]
                                           [--val 60] [--proxy run]
    .venv/bin/python bench/mining_bench.py --summarise FILE [FILE ...]
    .venv/bin/python bench/mining_bench.py --calibrate [--first-seed 0]
    .venv/bin/python bench/mining_bench.py --round0-only [--seeds 3] [--round0-options=...] [...]
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from mining_eval import breakdown, image_errors, selection_stats, spearman
from mining_pool import CLASSES, FREQUENCIES, SIZE, draw, with_near_duplicates
from mining_report import METHODS, NAMES, VARIANTS, summarise
from mining_tasks import FINETUNE_OPTIONS, TRAIN_OPTIONS, mine, speed_section, train


def target_only(item, target: int):
    """The image as a single-class detector sees it: the target class's boxes (as class 0); the other shapes are
    unlabelled clutter."""
    return item._replace(boxes=[(0,) + tuple(b[1:]) for b in item.boxes if b[0] == target])


def seed_data(seed: int, args):
    """A seed's generated pool, test split and initial labelled set (indices into the pool; never a shifted image).
    With --target, YMIR's rare-class protocol (../shared/mining.md §2.3): one class is labelled, a quarter of the
    test split and of the initial set holds it (YMIR's 1 positive : 3 negatives), the pool holds it at its natural
    rate."""
    rng = np.random.default_rng(100 + seed)
    copies = round(args.duplicates * args.pool)
    pool = [draw(rng, args.shift) for _ in range(args.pool - copies)]
    test = test_like(rng, args, args.test)
    val = test_like(np.random.default_rng(300 + seed), args, args.val) if args.val else None
    if args.target is None:
        if copies:  # their own generator: the drawn images and the test split are those of a pool without copies
            pool = with_near_duplicates(np.random.default_rng(200 + seed), pool, copies)
        unshifted = np.array([i for i, item in enumerate(pool) if not item.shifted])
        return pool, test, set(rng.choice(unshifted, args.initial, replace=False).tolist()), val
    pool = [target_only(item, CLASSES.index(args.target)) for item in pool]
    positives = [i for i, item in enumerate(pool) if item.boxes and not item.shifted]
    negatives = [i for i, item in enumerate(pool) if not item.boxes and not item.shifted]
    k = args.initial // 4
    if len(positives) < k:
        raise SystemExit(f"--target {args.target}: the pool holds {len(positives)} images with it, the initial set "
                         f"needs {k}; enlarge --pool")
    return pool, test, set(rng.choice(positives, k, replace=False).tolist()) | set(
        rng.choice(negatives, args.initial - k, replace=False).tolist()), val


def test_like(rng, args, n: int) -> list:
    """n images drawn as the test split is: like the pool (--shift included), or with --target a quarter holding
    the class and the rest without it."""
    if args.target is None:
        return [draw(rng, args.shift) for _ in range(n)]
    target = CLASSES.index(args.target)
    wanted = {True: n // 4, False: n - n // 4}
    split = []
    while any(wanted.values()):
        item = target_only(draw(rng, args.shift), target)
        if wanted[bool(item.boxes)]:
            wanted[bool(item.boxes)] -= 1
            split.append(item)
    return split


def fine_tuned(args, work: Path, labelled, test, val, epochs: int, classes, **options):
    """A trained model, its test mAP@0.5 and its test breakdown: with --val, the stage is chosen on the val split
    (validated every epoch) and the test split is scored once, after (the breakdown); without, the test split itself
    validates every epoch and chooses the stage (the earlier protocols; the breakdown is None, made when needed)."""
    model, m = train(work, labelled, val or test, epochs, classes=classes, **options)
    scored = breakdown(model, test, classes) if val else None
    return model, (scored["all"] if scored else m), scored


def source_model(args, tmp: Path):
    """The model round 0 starts from: None (from scratch), or YOLOv5n trained from scratch on `--source` images of
    a disjoint, unshifted generated set (its own fixed generator: one model for every seed), the way a YMIR user
    starts from pretrained weights. Kept in --source-cache when given, so separate runs share it."""
    if not args.source:
        return None
    name = f"yolov5n-{SIZE}px-{args.source}x{args.source_epochs}"
    if args.source_frequencies != FREQUENCIES:
        name += "-" + "-".join(f"{f:g}" for f in args.source_frequencies)
    cached = args.source_cache / name if args.source_cache else None
    if cached and (cached / "result.yaml").exists():
        print(f"source model: {cached}", flush=True)
        return cached / "best"
    rng = np.random.default_rng(7)
    items = [draw(rng, frequencies=args.source_frequencies) for _ in range(args.source)]
    val = [draw(rng, frequencies=args.source_frequencies) for _ in range(100)]
    started = time.time()
    model, m = train(tmp / "source", items, val, args.source_epochs)
    print(f"source model: {args.source} images, {args.source_epochs} epochs from scratch, mAP@0.5 {m:.4f} on its "
          f"own validation set ({time.time() - started:.0f} s)", flush=True)
    if cached:
        cached.mkdir(parents=True)
        shutil.copytree(model, cached / "best")
        shutil.copy(model.parent / "result.yaml", cached / "result.yaml")
        return cached / "best"
    return model


def detector_classes(args) -> tuple:
    """The classes the detector learns: the one --target class, or all of the pool's."""
    return (args.target,) if args.target else CLASSES


def round0(seed: int, args, tmp: Path, source):
    """A seed's data and its round-0 model (shared by all methods of the seed): pool, test, initial, val, model,
    mAP and, with --val, the model's test breakdown (else None)."""
    started = time.time()
    pool, test, initial, val = seed_data(seed, args)
    classes = detector_classes(args)
    model0, map0, scored0 = fine_tuned(args, tmp / f"s{seed}-r0", [pool[i] for i in sorted(initial)], test, val,
                                       args.epochs0, classes, start_from=source,
                                       options=args.round0_options or (args.finetune_options if source
                                                                       else TRAIN_OPTIONS))
    print(f"seed {seed}: round 0 mAP@0.5 {map0:.4f} ({len(initial)} images, {time.time() - started:.0f} s)",
          flush=True)
    return pool, test, initial, val, model0, map0, scored0


def run_seed(seed: int, args, tmp: Path, source) -> dict:
    """One seed: round 0, the proxy (and the speed section if asked), then the rounds of every method."""
    started = time.time()
    pool, test, initial, val, model0, map0, breakdown0 = round0(seed, args, tmp, source)
    classes = detector_classes(args)
    record = {"seed": seed, "protocol": protocol(args), "map0": map0, "methods": {}, "spearman": {},
              "agreement": {}, "speed": {}, "breakdown": {"round 0": breakdown0 or breakdown(model0, test, classes)},
              "unlabelled": selection_stats([pool[i] for i in range(args.pool) if i not in initial], len(classes) - 1)}
    proxy_scores = {}
    for method in (NAMES if args.proxy == "all" else args.methods):
        paths, scores, detections, _, _ = mine(tmp / f"s{seed}-proxy-{method}", model0, pool, method,
                                                         infer=True, classes=classes)
        proxy_scores[method] = scores
        record["spearman"][method] = spearman(scores, image_errors(paths, detections, pool, classes))
    for variant, (algorithm, _) in VARIANTS.items():
        if {variant, algorithm} <= set(proxy_scores):
            record["agreement"][variant] = spearman(proxy_scores[variant], proxy_scores[algorithm])
    if args.speed:
        record["speed"] = speed_section(tmp / f"s{seed}-speed", model0, pool, classes, args.speed_repeats)
    for method in args.methods:
        labelled, model, maps, selected, scored = set(initial), model0, [map0], [], breakdown0
        for r in range(1, args.rounds + 1):
            unlabelled = [i for i in range(args.pool) if i not in labelled]
            _, scores, _, _, _ = mine(tmp / f"s{seed}-{method}-m{r}", model, [pool[i] for i in unlabelled], method,
                                   classes=classes)
            picked = [unlabelled[i] for i in np.argsort(-scores, kind="stable")[:args.budget]]
            selected.append(selection_stats([pool[i] for i in picked], len(classes) - 1,
                                            labelled=[pool[i] for i in labelled]))
            labelled |= set(picked)
            model, m, scored = fine_tuned(args, tmp / f"s{seed}-{method}-r{r}", [pool[i] for i in sorted(labelled)],
                                          test, val, args.epochs, classes, start_from=model,
                                          options=args.finetune_options)
            maps.append(m)
        record["methods"][method] = {"maps": maps, "selected": selected}
        record["breakdown"][method] = scored or breakdown(model, test, classes)
        print(f"seed {seed} {method}: mAP@0.5 by round {' -> '.join(f'{m:.4f}' for m in maps)}", flush=True)
    record["seconds"] = round(time.time() - started)
    return record


def calibrate(seed: int, args, tmp: Path) -> None:
    """Is a round limited by its labels or by its training? From scratch, with equal image passes: the initial set
    for 3 x epochs0 epochs, and the whole pool (3 x the initial set) for epochs0 epochs."""
    pool, test, initial, _ = seed_data(seed, args)
    for name, items, epochs in (("initial set", [pool[i] for i in sorted(initial)], 3 * args.epochs0),
                                ("whole pool", pool, args.epochs0)):
        started = time.time()
        _, m = train(tmp / name.replace(" ", "-"), items, test, epochs)
        print(f"seed {seed}, {name}: {len(items)} images, {epochs} epochs from scratch: mAP@0.5 {m:.4f} "
              f"({time.time() - started:.0f} s)", flush=True)


def protocol(args) -> dict:
    keys = ["pool", "test", "initial", "budget", "rounds", "epochs0", "epochs", "finetune_options"]
    if args.shift or args.source:  # the earlier protocols had neither
        keys += ["shift", "source", "source_epochs"]
    if args.source_frequencies != FREQUENCIES:
        keys += ["source_frequencies"]
    if args.target:
        keys += ["target", "round0_options"]
    if args.duplicates:
        keys += ["duplicates"]
    if args.val:
        keys += ["val"]
    return {k: getattr(args, k) for k in keys}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--first-seed", type=int, default=0, help="run seeds first-seed .. first-seed + seeds - 1")
    parser.add_argument("--pool", type=int, default=360)
    parser.add_argument("--test", type=int, default=120)
    parser.add_argument("--val", type=int, default=0,
                        help="a validation split of this many images, drawn as the test split is but apart from it, "
                             "chooses each training's stage; the test split is then scored once per model instead "
                             "of every epoch (0: the test split validates, as the recorded protocols did)")
    parser.add_argument("--initial", type=int, default=120)
    parser.add_argument("--budget", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--epochs0", type=int, default=60)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--shift", type=float, default=0.0,
                        help="share of pool and test images on a second background, none in the initial set")
    parser.add_argument("--duplicates", type=float, default=0.0,
                        help="share of the pool that is near-duplicates of its other images (the same scene "
                             "re-encoded, shifted a few pixels, recoloured slightly)")
    parser.add_argument("--source", type=int, default=0,
                        help="round 0 fine-tunes a model trained on this many unshifted source images (0: from "
                             "scratch)")
    parser.add_argument("--source-epochs", type=int, default=60)
    parser.add_argument("--source-frequencies", type=lambda text: tuple(float(f) for f in text.split(",")),
                        default=FREQUENCIES, metavar="F,F,F,F",
                        help="class shares of the source set (default: the pool's, 0.55,0.30,0.12,0.03)")
    parser.add_argument("--target", choices=CLASSES,
                        help="YMIR's rare-class protocol: a single-class detector of this class (the other shapes "
                             "unlabelled), test split and initial set a quarter positive, the pool at its natural rate")
    parser.add_argument("--source-cache", type=Path, help="folder keeping the source model between runs")
    parser.add_argument("--finetune-options", default=FINETUNE_OPTIONS,
                        help="args_options of the fine-tuning after each mining round (round 0 keeps its own)")
    parser.add_argument("--round0-options",
                        help="args_options of round 0 (default: the fine-tuning options from a source model, "
                             f"{TRAIN_OPTIONS!r} from scratch)")
    parser.add_argument("--skip-speed", dest="speed", action="store_false",
                        help="leave out the speed section (otherwise measured with the first seed)")
    parser.add_argument("--speed-repeats", type=int, default=1,
                        help="run each task of the speed section this many times, taking turns; medians reported")
    parser.add_argument("--methods", type=lambda text: tuple(m.strip() for m in text.split(",")), default=METHODS,
                        metavar="M,M,...", help=f"methods run through the rounds, of {', '.join(NAMES)} (default: "
                                                f"{','.join(METHODS)}); --summarise merges runs of one seed")
    parser.add_argument("--proxy", choices=("all", "run"), default="all",
                        help="the proxy section scores the pool with every algorithm and variant (all), or only "
                             "with the --methods run")
    parser.add_argument("--record", type=Path, help="append each seed's results to this JSON-lines file")
    parser.add_argument("--summarise", type=Path, nargs="+", metavar="FILE",
                        help="run nothing: summarise the seeds recorded in these files")
    parser.add_argument("--round0-only", action="store_true",
                        help="run nothing else: train each seed's round 0 and print its mAP (to choose --round0-options"
                             " or --epochs0 before the long runs)")
    parser.add_argument("--calibrate", action="store_true",
                        help="run nothing else: train the first seed's initial set for 3 x --epochs0 epochs and its "
                             "whole pool for --epochs0 (equal image passes), to see what limits a round")
    args = parser.parse_args()
    if len(args.source_frequencies) != len(CLASSES) or abs(sum(args.source_frequencies) - 1) > 1e-6:
        parser.error(f"--source-frequencies needs {len(CLASSES)} shares summing to 1")
    if args.duplicates and (args.target or not 0 < args.duplicates < 1):
        parser.error("--duplicates takes a share in (0, 1), and not with --target")
    if not set(args.methods) <= set(NAMES):
        parser.error(f"--methods: unknown {sorted(set(args.methods) - set(NAMES))}; known: {', '.join(NAMES)}")
    if args.calibrate:
        with tempfile.TemporaryDirectory(prefix="mining-bench-") as tmp:
            calibrate(args.first_seed, args, Path(tmp))
        return
    if args.summarise:
        summarise([json.loads(line) for f in args.summarise for line in f.read_text().splitlines() if line.strip()])
        return
    records = []
    with tempfile.TemporaryDirectory(prefix="mining-bench-") as tmp:
        source = source_model(args, Path(tmp))
        seeds = range(args.first_seed, args.first_seed + args.seeds)
        if args.round0_only:
            for seed in seeds:
                round0(seed, args, Path(tmp), source)
            return
        for seed in seeds:
            records.append(run_seed(seed, args, Path(tmp), source))
            args.speed = False  # the speed section runs with the first seed only
            if args.record:
                with args.record.open("a") as f:
                    f.write(json.dumps(records[-1]) + "\n")
    summarise(records)


if __name__ == "__main__":
    main()
