"""Committed results of the monitoring experiment (paper §5) across training seeds, and its claim checks.

The unit of replication here is the training seed: every seed builds its own w_evil, w_bad_advice, w_french and
its own two fine-tunes, so a seed's cosines are one observation. Differences are paired within a seed and their
95% interval is Student's t over seeds (few seeds give a wide interval on purpose: there is no item level to
resample).
"""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf
from safetensors import safe_open

from wsteer.artifacts import git_commit, write_json
from wsteer.errors import WsteerError
from wsteer.evaluation.uncertainty import Estimate

FORMAT = "monitoring/1"
SHOWN = ("Cells are global cosines over all parameters (paper §5), one row per training seed. Δ are per-seed "
         "paired differences; the interval is Student's t over seeds (95%), so it carries the vectors' and the "
         "fine-tunes' seed-to-seed variance only.")
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def seed_t(diffs: list[float]) -> Estimate | None:
    """Mean of per-seed differences with a Student-t 95% interval over seeds."""
    n = len(diffs)
    if n == 0:
        return None
    mean = statistics.fmean(diffs)
    if n == 1:
        return Estimate(mean, math.nan, -math.inf, math.inf, 1, "one seed")
    se = statistics.stdev(diffs) / math.sqrt(n)
    half = T975.get(n - 1, 1.96) * se
    return Estimate(mean, se, mean - half, mean + half, n, "t over seeds", n)


def _manifest(path: Path) -> dict:
    with safe_open(str(path), framework="pt") as f:
        return json.loads((f.metadata() or {}).get("manifest", "{}"))


def _vector(cache: Path, fingerprint: str, behavior: str, seed: int, data_seed: int, artifact: str) -> Path:
    """The one complete cached LoRA vector of `behavior` built with this seed on this base."""
    found = []
    for done in sorted((cache / "vectors").glob(f"*/{behavior}/lora/*/COMPLETE")):
        path = done.parent / f"{artifact}.safetensors"
        if path.is_file():
            m = _manifest(path)
            if (m.get("base_fingerprint") == fingerprint and m.get("seed") == seed
                    and m.get("data_seed") == data_seed):
                found.append(path)
    if len(found) != 1:
        raise WsteerError(f"expected one cached {behavior} vector for seed {seed} on base {fingerprint[:12]} under "
                          f"{cache}/vectors, found {len(found)}: {[str(p) for p in found]}")
    return found[0]


def _em_answers(job: Path, finetunes) -> dict[str, list[dict]]:
    """The EM probe's answers at each fine-tune's last probed step, with the judge's scores where it gave any."""
    em = {}
    for f in finetunes:
        path = job / f / "em_probe.jsonl"
        if not path.is_file():
            continue
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        last = max((r["step"] for r in rows), default=None)
        at_last = [r["question"] for r in rows if r["step"] == last]
        if len(at_last) != len(set(at_last)):
            raise WsteerError(f"{path} answers a question twice at step {last}: the fine-tune ran twice in this "
                              "folder and the probe appended; rerun the sweep in a fresh folder")
        em[f] = [{k: r.get(k) for k in ("step", "question", "answer", "trait", "coherence")} | {"judge": r.get("judge")}
                 for r in rows if r["step"] == last]
    return em


def _labels(path: str | Path | None) -> dict[tuple[str, str, str], dict]:
    """Hand labels of the EM probe's answers (1 = misaligned, read blind to the fine-tune), keyed by
    (seed, fine-tune, question); each line also keeps the answer it labels, checked against the run's."""
    if path is None:
        return {}
    path = Path(path)
    if not path.is_file():
        raise WsteerError(f"--em-labels {path} does not exist")
    out = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            r = {}
        if not {"seed", "finetune", "question", "answer", "label"} <= set(r) or r["label"] not in (0, 1):
            raise WsteerError(f"{path}:{n}: a label line needs seed, finetune, question, answer and label (0 or 1)")
        key = (str(r["seed"]), r["finetune"], r["question"])
        if key in out:
            raise WsteerError(f"{path}:{n}: a second label for seed {key[0]}, {key[1]}, {key[2]!r}")
        out[key] = r
    return out


def _attach_labels(seeds: dict[str, dict], labels: dict[tuple[str, str, str], dict], path) -> None:
    """Each EM answer gets its label; a label whose answer differs from the run's (the run was redone since the
    reading) or that matches no answer is an error, never a silent mislabel."""
    used = set()
    for seed, s in seeds.items():
        for f, rows in s["em"].items():
            for r in rows:
                lab = labels.get((seed, f, r["question"]))
                if lab is not None and lab["answer"] != r["answer"]:
                    raise WsteerError(f"--em-labels {path}: the label of seed {seed}, {f}, {r['question']!r} reads "
                                      "another answer than this run gave; label the run's answers again")
                r["label"] = None if lab is None else int(lab["label"])
                used.add((seed, f, r["question"]))
    unused = sorted(set(labels) - used)
    if unused:
        raise WsteerError(f"--em-labels {path}: {len(unused)} labels match no EM answer of this sweep, e.g. {unused[0]}")


# what C6 reads of the fine-tunes' judge-free runs (evil given valid: is a rise of the evil rate only more letters?)
EVAL_METRICS = ("evil_mcq/evil_rate", "evil_mcq/valid_rate", "evil_mcq/evil_given_valid")


def _evals(runs: list[tuple[str, Path]], finetunes: set[str],
           metrics: tuple[str, ...] = EVAL_METRICS) -> dict[str, dict[str, dict]]:
    """Judge-free evaluations of θ (label `base`, no adapter) and of the fine-tuned models (label = the fine-tune,
    `evaluate.py base_adapter=<job>/<fine-tune>/adapter/task seed=<its training seed>`), by label and seed:
    `{label: {seed: {metric: {item id: score}}}}`. The label and seed are checked against the adapter's own job."""
    from wsteer.reproduction.runs import read_run

    out: dict[str, dict[str, dict]] = {}
    for label, run in runs:
        if label not in finetunes | {"base"}:
            raise WsteerError(f"--eval {label}={run}: the label is `base` (θ) or a fine-tune of this sweep: "
                              f"{sorted(finetunes)}")
        cfg, scores = read_run(run, metrics)
        seed, adapter = str(int(cfg.get("seed", 0))), cfg.get("base_adapter")
        if (label == "base") != (adapter is None):
            raise WsteerError(f"--eval {label}={run}: base_adapter={adapter}; `base` is θ without an adapter, a "
                              "fine-tune's run has base_adapter=<job>/<fine-tune>/adapter/task")
        if adapter is not None:  # the adapter's job says which fine-tune and training seed it is
            job_cfg = Path(adapter).parents[2] / ".hydra" / "config.yaml"
            got = (Path(adapter).parents[1].name,
                   str(int(OmegaConf.load(job_cfg).seed)) if job_cfg.is_file() else seed)
            if got != (label, seed):
                raise WsteerError(f"--eval {label}={run}: its adapter is the fine-tune {got[0]!r} of training seed "
                                  f"{got[1]}, but the run says {label!r}, seed={seed}")
        if seed in out.get(label, {}):
            raise WsteerError(f"--eval {label}: two runs with seed {seed}; give each (label, seed) once")
        out.setdefault(label, {})[seed] = scores
    return out


def export_monitoring(sweep_dir: str | Path, out: str | Path, commands: list[str], notes: str = "",
                      cache_dir: str | Path = "~/.cache/wsteer", code_commit: str | None = None,
                      evals: list[tuple[str, Path]] = (), em_labels: str | Path | None = None) -> Path:
    """Cosines (within each seed and across seeds), the monitor's curves and the EM probe's answers of a finished
    `train.py -m experiment=monitoring seed=…` sweep, with judge-free evaluations of its fine-tunes (`evals`,
    (label, evaluate.py run) pairs) and hand labels of the EM answers (`em_labels`), as JSON."""
    from wsteer.monitoring.similarity import cosine, cosine_matrix

    cache, root = Path(cache_dir).expanduser(), Path(sweep_dir)
    labels = _labels(em_labels)
    seeds: dict[str, dict] = {}
    w_by_seed: dict[str, dict[str, Path]] = {}
    for cfg_file in sorted(root.glob("**/.hydra/config.yaml")):
        job, cfg = cfg_file.parent.parent, OmegaConf.load(cfg_file)
        if cfg.get("source") != "monitoring" or not (job / "monitoring.md").is_file():
            continue  # another kind of job, or one that did not finish
        seed, fp = int(cfg.seed), _manifest_fingerprint(job, cache, cfg)
        w = {v: _vector(cache, fp, v, seed, int(cfg.data_seed), "contrastive") for v in cfg.monitoring.vectors}
        tau = {f: job / f / "adapter" / "task" for f in cfg.monitoring.finetunes}
        deltas = {f"w_{k}": p for k, p in w.items()} | {f"τ_{k}": p for k, p in tau.items()}
        names, m = cosine_matrix(deltas)
        curves: dict[str, dict[str, list]] = {}
        for f in cfg.monitoring.finetunes:
            for r in csv.DictReader((job / f / "monitor.csv").open(encoding="utf-8")):
                curves.setdefault(f, {}).setdefault(r["reference"], []).append([int(r["step"]),
                                                                                 round(float(r["cosine"]), 6)])
        seeds[str(seed)] = {"cos": {f"{a}|{b}": round(float(m[i][j]), 6) for i, a in enumerate(names)
                                    for j, b in enumerate(names) if i < j}, "curves": curves,
                            "em": _em_answers(job, cfg.monitoring.finetunes)}
        w_by_seed[str(seed)] = w
    if labels:
        _attach_labels(seeds, labels, em_labels)
    if not seeds:
        raise WsteerError(f"no finished monitoring jobs under {sweep_dir} (looked for */.hydra/config.yaml with "
                          "source=monitoring and a monitoring.md)")
    cross: dict[str, float] = {}
    ids = sorted(w_by_seed, key=int)
    for i, s in enumerate(ids):
        for t in ids[i + 1:]:
            for v in w_by_seed[s]:
                cross[f"w_{v}@{s}|w_{v}@{t}"] = round(float(cosine(w_by_seed[s][v], w_by_seed[t][v])), 6)
    ends = [p.stat().st_mtime for p in root.glob("**/monitoring.md")]
    starts = [p.stat().st_mtime for p in root.glob("**/.hydra/config.yaml")]
    meta = {"format": FORMAT, "name": "monitoring", "commands": commands, "notes": notes,
            "seeds": [int(s) for s in ids], "n_items": {"training seeds": len(ids)},
            "sweep_wall_s": round(max(ends) - min(starts)), "finished": time.strftime("%Y-%m-%d",
                                                                                      time.gmtime(max(ends))),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores", "commit": code_commit or git_commit()}
    finetunes = {f for s in seeds.values() for f in s["em"]} | {f for s in seeds.values() for f in s["curves"]}
    write_json(out, {"meta": meta, "seeds": seeds, "cross_seed": cross, "evals": _evals(list(evals), finetunes)})
    return Path(out)


def _manifest_fingerprint(job: Path, cache: Path, cfg) -> str:
    """The base fingerprint, from any vector the job reused or built (all share the base)."""
    for done in sorted((cache / "vectors").glob(f"{cfg.model.name}-*/*/lora/*/COMPLETE")):
        fp = _manifest(done.parent / "contrastive.safetensors").get("base_fingerprint")
        if fp:
            return fp
    raise WsteerError(f"no cached vector of {cfg.model.name} under {cache}/vectors for job {job}")


@dataclass
class Monitoring:
    name: str
    meta: dict
    seeds: dict[str, dict]
    cross: dict[str, float]
    evals: dict[str, dict[str, dict]] = field(default_factory=dict)

    def cos(self, seed: str, a: str, b: str) -> float:
        c = self.seeds[seed]["cos"]
        return c[f"{a}|{b}"] if f"{a}|{b}" in c else c[f"{b}|{a}"]

    def per_seed(self, f) -> Estimate | None:
        return seed_t([f(s) for s in sorted(self.seeds, key=int)])

    def rise(self, seed: str, finetune: str, ref: str) -> float:
        pts = sorted(self.seeds[seed]["curves"][finetune][ref])
        return pts[-1][1] - pts[0][1]


def load_monitoring(raw: dict, name: str) -> Monitoring:
    return Monitoring(name, raw["meta"], raw["seeds"], raw.get("cross_seed", {}), raw.get("evals", {}))


def table(mon: Monitoring) -> list[str]:
    pairs = [("w_evil", "τ_bad_advice"), ("w_evil", "τ_control"), ("w_evil", "w_bad_advice"),
             ("w_evil", "w_french"), ("w_bad_advice", "w_french")]
    lines = ["| seed | " + " | ".join(f"cos({a}, {b})" for a, b in pairs) + " |", "|---|" + "---|" * len(pairs)]
    for s in sorted(mon.seeds, key=int):
        lines.append(f"| {s} | " + " | ".join(f"{mon.cos(s, a, b):+.3f}" for a, b in pairs) + " |")
    if mon.cross:
        lines += ["", "Across seeds (same behavior, different training seed): " + ", ".join(
            f"cos({k.replace('|', ', ')}) = {v:+.3f}" for k, v in mon.cross.items()) + "."]
    return lines


def figure(mon: Monitoring, path: Path, ref: str = "evil") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from wsteer.artifacts import save_figure

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for i, f in enumerate(sorted({f for s in mon.seeds.values() for f in s["curves"]})):
        for j, s in enumerate(sorted(mon.seeds, key=int)):
            pts = sorted(mon.seeds[s]["curves"][f][ref])
            ax.plot([p[0] for p in pts], [p[1] for p in pts], color=plt.get_cmap("tab10")(i), alpha=0.8,
                    marker="o", ms=3, label=f"τ_{f}" if j == 0 else None)
    ax.axhline(0, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("training step")
    ax.set_ylabel(f"cos(θ_t − θ_0, w_{ref})")
    ax.set_title(f"C6: cosine to w_{ref} during fine-tuning ({len(mon.seeds)} seeds, one line each)", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)
