"""Continual-learning metrics from the predictions after every task (all in %).

- `acc_matrix[i][j]`: accuracy on task j's test data after training task i (j <= i).
- `avg_acc[i]`: InfoCL's "average accuracy" after task i = accuracy on the test data of all seen classes (micro).
- `forgetting`: InfoCL's `compute_forgetting_rate(mode='task')`: for each task but the last, the mean per-class F1
  (over that task's classes, F1 among the classes seen at that step) after every later step; max minus final;
  mean over tasks.
- `bwt`: backward transfer (Lopez-Paz & Ranzato 2017), mean_j<T (a_Tj - a_jj).
- analogous classes: old classes that share a group (CLINC150 domain, HWU64 scenario) with a class learned in a
  later task, vs those that do not; and the share of errors on old classes that land on a same-group class.
"""

from __future__ import annotations

import numpy as np


def _f1_per_class(y: np.ndarray, p: np.ndarray, labels: list[int]) -> dict[int, float]:
    out = {}
    for c in labels:
        tp = float(np.sum((y == c) & (p == c)))
        fp = float(np.sum((y != c) & (p == c)))
        fn = float(np.sum((y == c) & (p != c)))
        out[c] = 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)
    return out


def compute(
    tasks: list[list[int]], test_labels: list[int], preds: list[list[int]], groups: dict[int, str] | None = None
) -> dict:
    y = np.asarray(test_labels)
    steps = len(preds)
    acc = [[None] * len(tasks) for _ in range(steps)]
    avg, f1_steps = [], []
    for i in range(steps):
        p = np.asarray(preds[i])
        seen = [c for t in tasks[: i + 1] for c in t]
        sel = np.isin(y, seen)
        avg.append(100 * float(np.mean(p[sel] == y[sel])))
        for j in range(i + 1):
            m = np.isin(y, tasks[j])
            acc[i][j] = 100 * float(np.mean(p[m] == y[m]))
        f1_steps.append(_f1_per_class(y[sel], p[sel], seen))
    out = {"acc_matrix": acc, "avg_acc": avg, "final_acc": avg[-1], "cur_acc": [acc[i][i] for i in range(steps)]}
    if steps == len(tasks) and steps > 1:
        fr = []
        for j in range(steps - 1):
            curve = [100 * np.mean([f1_steps[s][c] for c in tasks[j]]) for s in range(j, steps)]
            fr.append(max(curve) - curve[-1])
        out["forgetting"] = float(np.mean(fr))
        out["bwt"] = float(np.mean([acc[-1][j] - acc[j][j] for j in range(steps - 1)]))
        if groups:
            out.update(analogous(tasks, y, np.asarray(preds[-1]), groups))
    return out


def analogous(tasks: list[list[int]], y: np.ndarray, p: np.ndarray, groups: dict[int, str]) -> dict:
    task_of = {c: i for i, t in enumerate(tasks) for c in t}
    old = [c for t in tasks[:-1] for c in t]
    with_analog = [
        c for c in old if groups.get(c) and any(groups.get(d) == groups[c] and task_of[d] > task_of[c] for d in task_of)
    ]
    without = [c for c in old if c not in set(with_analog)]

    def acc_on(classes: list[int]) -> float | None:
        m = np.isin(y, classes)
        return 100 * float(np.mean(p[m] == y[m])) if m.any() else None

    m_old = np.isin(y, old)
    err = m_old & (p != y)
    same = np.array(
        [bool(groups.get(int(a))) and groups.get(int(a)) == groups.get(int(b)) for a, b in zip(y[err], p[err])]
    )
    return {
        "acc_old_with_later_analog": acc_on(with_analog),
        "acc_old_without_later_analog": acc_on(without),
        "n_old_with_later_analog": len(with_analog),
        "n_old_without_later_analog": len(without),
        "analogous_error_share": 100 * float(same.mean()) if len(same) else None,
    }
