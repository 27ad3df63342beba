"""The mining benchmark's summary: seeds recorded by one or several runs, merged per seed and tabulated (gains over
round 0, paired differences to random with bootstrap intervals, score/error correlation, breakdown, selection,
speed)."""
from __future__ import annotations

import json

import numpy as np
from mining_pool import CLASSES

METHODS = ("random", "entropy", "aldd", "cald", "diverse")
# Variants of an algorithm: the mining config each adds. Measured in the proxy and speed sections; in the rounds
# too when named in --methods.
VARIANTS = {"aldd@input": ("aldd", {"aldd_resolution": "input"}),
            "cald@share0.1": ("cald", {"cald_undetected_share": 0.1})}
NAMES = METHODS + tuple(VARIANTS)


def bootstrap_interval(values: np.ndarray, draws: int = 10000) -> tuple:
    """95 % percentile interval of the mean over seeds, resampling seeds (fixed generator)."""
    if len(values) < 2:
        return float("nan"), float("nan")
    means = values[np.random.default_rng(0).integers(0, len(values), size=(draws, len(values)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def merge_seeds(records: list) -> list:
    """One record per seed: runs of the same seed with other --methods add theirs (round 0 must be the same)."""
    merged = {}
    for r in records:
        seed = r["seed"]
        if seed not in merged:
            merged[seed] = json.loads(json.dumps(r))
            continue
        base = merged[seed]
        if base["map0"] != r["map0"]:
            raise SystemExit(f"seed {seed} was recorded twice with different round-0 models")
        for name, value in r["methods"].items():
            if base["methods"].setdefault(name, value) != value:
                raise SystemExit(f"seed {seed}: {name} was recorded twice with different results")
        for key in ("breakdown", "spearman", "agreement", "speed"):
            for name, value in r.get(key, {}).items():
                base.setdefault(key, {}).setdefault(name, value)
        base["seconds"] += r["seconds"]
    return [merged[seed] for seed in sorted(merged)]


def summarise(records: list) -> None:
    protocols = {json.dumps(r["protocol"], sort_keys=True) for r in records}
    if len(protocols) != 1:
        raise SystemExit(f"records come from different protocols, not summarised together: {sorted(protocols)}")
    records = merge_seeds(records)
    learned = tuple(m for m in NAMES if all(m in r["methods"] for r in records))
    if "random" not in learned:
        raise SystemExit("every seed needs random's rounds, the baseline of the comparison")
    proto = records[0]["protocol"]
    source = f"{proto['source']} images x {proto['source_epochs']} epochs" if proto.get("source") else "none"
    if proto.get("source_frequencies"):
        source += f" (class shares {', '.join(f'{f:g}' for f in proto['source_frequencies'])})"
    print(f"\nseeds {', '.join(str(r['seed']) for r in records)}; pool {proto['pool']}, test {proto['test']}, "
          f"initial {proto['initial']}, {proto['rounds']} rounds of {proto['budget']}, round 0 {proto['epochs0']} "
          f"epochs, {proto['epochs']} epochs per round at {proto['finetune_options']!r}; "
          f"shifted share {proto.get('shift', 0)}; source model {source}; "
          + (f"single-class detector of {proto['target']} (the rare-class protocol); " if proto.get("target") else "")
          + (f"near-duplicates {proto['duplicates']:.0%} of the pool; " if proto.get("duplicates") else "")
          + f"{sum(r['seconds'] for r in records)} s\n")
    for r in records:
        print(f"seed {r['seed']}: round 0 {r['map0']:.4f}; " + "; ".join(
            f"{m} {' -> '.join(f'{v:.4f}' for v in r['methods'][m]['maps'][1:])}" for m in learned))
    final = {m: np.array([r["methods"][m]["maps"][-1] - r["map0"] for r in records]) for m in learned}
    mean = {m: np.array([np.mean(r["methods"][m]["maps"][1:]) - r["map0"] for r in records]) for m in learned}
    print("\n| method | gain over round 0, final | gain, mean over rounds | final gain - random's: mean [95 % CI], "
          "seeds ahead | mean-over-rounds gain - random's | Spearman(score, FN+FP) |")
    print("|---|---|---|---|---|---|")
    for m in learned:
        cells = [f"{final[m].mean():+.4f}", f"{mean[m].mean():+.4f}"]
        if m == "random":
            cells += ["-", "-"]
        else:
            for gains in (final, mean):
                d = gains[m] - gains["random"]
                lo, hi = bootstrap_interval(d)
                cells.append(f"{d.mean():+.4f} [{lo:+.4f}, {hi:+.4f}], {int((d > 0).sum())}/{len(d)}")
        rho = [r["spearman"][m] for r in records]
        print(f"| {m} | {' | '.join(cells)} | {np.mean(rho):+.3f} ({', '.join(f'{x:+.3f}' for x in rho)}) |")
    proxy_only = [v for v in VARIANTS if v not in learned and all(v in r["spearman"] for r in records)]
    for v in proxy_only:
        rho = [r["spearman"][v] for r in records]
        print(f"| {v} | - | - | - | - | {np.mean(rho):+.3f} ({', '.join(f'{x:+.3f}' for x in rho)}) |")
    for v, (algorithm, _) in VARIANTS.items():
        if all(v in r["agreement"] for r in records):
            agree = np.mean([r["agreement"][v] for r in records])
            print(f"\nSpearman({v} score, {algorithm} score) over the pool: {agree:+.3f}")
    if all("breakdown" in r for r in records):
        print("\nThe final models' test mAP@0.5 by subset and AP@0.5 by class, mean over seeds:\n")
        subsets = [k for k in ("all", "unshifted", "shifted") if k in records[0]["breakdown"]["round 0"]]
        classes = (proto["target"],) if proto.get("target") else CLASSES
        print(f"| model | {' | '.join(subsets)} | {' | '.join(classes)} |")
        print("|---|" + "---|" * (len(subsets) + len(classes)))
        for name in ("round 0",) + learned:
            cells = [np.mean([r["breakdown"][name][k] for r in records]) for k in subsets]
            cells += list(np.mean([r["breakdown"][name]["per_class"] for r in records], axis=0))
            print(f"| {name} | {' | '.join(f'{v:.4f}' for v in cells)} |")
    print("\nWhat each method selected, all rounds and seeds (share of the selected images; the unlabelled pool "
          "before round 1 for comparison):\n")
    copies = bool(proto.get("duplicates"))  # a pool with near-duplicates: how many picks repeat a scene
    print("| method | empty | hard | shifted | with the rare class | boxes per image |"
          + (" scene repeated among the picks | scene already labelled |" if copies else ""))
    print("|---|---|---|---|---|---|" + ("---|---|" if copies else ""))
    rows = [("unlabelled pool", [r["unlabelled"] for r in records])]
    rows += [(m, [s for r in records for s in r["methods"][m]["selected"]]) for m in learned]
    for name, stats in rows:
        total = {k: sum(s.get(k, 0) for s in stats)
                 for k in ("images", "empty", "hard", "shifted", "rare", "boxes", "repeats", "known")}
        n = total["images"]
        print(f"| {name} | {total['empty'] / n:.0%} | {total['hard'] / n:.0%} | {total['shifted'] / n:.0%} | "
              f"{total['rare'] / n:.0%} | {total['boxes'] / n:.2f} |"
              + (f" {total['repeats'] / n:.0%} | {total['known'] / n:.0%} |" if copies else ""))
    speed = next((r["speed"] for r in records if r["speed"]), None)
    if not speed:
        return
    print(f"\nplain inference: {speed['inference alone']:.1f} images/s\n")
    cost_table(speed, "", "images/s", lambda rate: 1 / rate)
    if "inference alone task seconds" in speed:  # not in records made before the whole tasks were timed
        print(f"\nwhole tasks (start-up, loop, ranking, outputs): plain inference "
              f"{speed['inference alone task seconds']:.1f} s\n")
        cost_table(speed, " task seconds", "s", lambda seconds: seconds)


def cost_table(speed: dict, suffix: str, unit: str, cost) -> None:
    """Each method's figure (`suffix` of the speed keys, in `unit`) alone and with inference, and its cost (`cost`
    of a figure: time per image or per task) against plain inference and against mining alone."""
    base = cost(speed[f"inference alone{suffix}"])
    print(f"| method | mining {unit} | cost vs inference | mining + inference {unit} | cost vs mining alone |")
    print("|---|---|---|---|---|")
    for m in (m for m in NAMES if f"{m} alone{suffix}" in speed):
        alone, both = speed[f"{m} alone{suffix}"], speed[f"{m} + inference{suffix}"]
        if alone is None:  # random mining alone runs no forward pass: no loop rate
            print(f"| {m} | no forward pass | - | {both:.1f} | - |")
        else:
            print(f"| {m} | {alone:.1f} | {cost(alone) / base:.2f}x | {both:.1f} | {cost(both) / cost(alone):.2f}x |")
