"""The baseline gate: before any TokenDrift number is read, whether our starting checkpoint
reproduces the paper's row for it (per NFE, Gen.-PPL and entropy, within the seeds' spread)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from ..grid.sheet import paper_tables
from .render import table_name
from .results import cell

if TYPE_CHECKING:
    import pandas as pd

    from ..grid.layout import Layout


def paper_entry(row: dict, nfe: int) -> list | None:
    """The paper's [Gen.-PPL, SD, entropy, SD] of a paper_grid.yaml row at ``nfe`` (None if not reported)."""
    p = row.get("paper") or {}
    return p.get(nfe) or p.get(str(nfe))


def is_suspect(row: dict, nfe: int) -> bool:
    """A paper entry marked as a likely copy error in paper_grid.yaml: shown, never compared."""
    return nfe in (row.get("suspect") or {}).get("nfe", [])


# --------------------------------------------------------------------------- the baseline gate


def gate_enabled(g: Layout) -> tuple[bool, str]:
    """Whether the paper's numbers apply to this config (workflow option ``baseline_gate.enabled``)."""
    opt = g.config["baseline_gate"]["enabled"]
    if opt is True or opt is False:
        return opt, "baseline_gate.enabled: " + str(opt).lower()
    kind = g.config["source"].get("kind")
    if kind != "openwebtext":
        return False, f"{kind} source; the paper's numbers are OpenWebText under GPT-2 Large"
    if "pretrain" in g.config["evaluator"]:
        return False, "the evaluator is trained here, not the paper's GPT-2 Large"
    return True, "OpenWebText source"


def paper_start_row(bb: str) -> tuple[str, dict] | None:
    """The paper's row of the starting checkpoint of ``bb`` (Table 1 for MDLM, Table 2 for DUO)."""
    for name, t in paper_tables()["tables"].items():
        for r in t["rows"]:
            if t["backbone"] == bb and r.get("model") == "start" and r.get("paper"):
                return name, r
    return None


def baseline_gate(g: Layout, table: str, scores: pd.DataFrame) -> dict:
    """Compare the table's starting checkpoint (temperature 1) with the paper's row for it, per
    NFE, Gen.-PPL and entropy: a cell fails when |ours - paper| > max(sd x sqrt(SD_paper^2 +
    SD_ours^2), rel x paper) (workflow/schemas/config.schema.yaml, ``baseline_gate``)."""
    bb = g.tables[table]["backbone"]
    opts = g.config["baseline_gate"]
    on, why = gate_enabled(g)
    ref = paper_start_row(bb)
    out = {
        "table": table,
        "backbone": bb,
        "enabled": on,
        "reason": why,
        "rule": "fail when |ours - paper| > max(sd * sqrt(SD_paper^2 + SD_ours^2), rel * paper)",
        "tolerance": {k: opts[k] for k in ("sd", "gen_ppl_rel", "entropy_rel")},
        "paper_table": ref[0] if ref else None,
        "paper_row": ref[1]["label"] if ref else None,
        "cells": [],
    }
    if on and ref:
        for n in g.nfes:
            p = paper_entry(ref[1], n)
            if p is None or is_suspect(ref[1], n):
                continue
            for metric, pm, psd, rel in (
                ("gen_ppl", p[0], p[1], opts["gen_ppl_rel"]),
                ("entropy", p[2], p[3], opts["entropy_rel"]),
            ):
                st = cell(scores, metric, model="start", step=0, nfe=n, temperature=1.0)
                c = {
                    "nfe": n,
                    "metric": metric,
                    "paper": pm,
                    "paper_sd": psd,
                    "ours": st.mean,
                    "ours_sd": st.sd,
                    "n_seeds": st.n,
                }
                if st.mean is not None:
                    sd = math.hypot(psd, st.sd or 0.0)
                    delta = st.mean - pm
                    limit = max(opts["sd"] * sd, rel * abs(pm))
                    c.update(
                        delta=delta,
                        delta_pct=100 * delta / pm,
                        delta_sd=delta / sd if sd else None,
                        limit=limit,
                        within=abs(delta) <= limit,
                    )
                out["cells"].append(c)
    cells = out["cells"]
    who = f"the {bb.upper()} start checkpoint"
    where = f"the paper's {table_name(out['paper_table'])} row" if ref else ""
    if not cells:
        out["status"] = "not applicable"
        out["summary"] = (
            "Baseline gate: not applicable ("
            + (
                why
                if not on
                else f"no NFE of this config in {where}"
                if ref
                else f"the paper reports no {bb} start row"
            )
            + ")."
        )
    elif any(c.get("within") is False for c in cells):
        out["status"] = "fail"
        out["summary"] = (
            f"BASELINE NOT REPRODUCED: {who} is outside the tolerance of {where} at "
            + "; ".join(_gate_cell(c) for c in cells if c.get("within") is False)
            + ". Every number of this table is in doubt until it is."
        )
    elif any(c["ours"] is None for c in cells):
        out["status"] = "incomplete"
        missing = sorted({c["nfe"] for c in cells if c["ours"] is None})
        out["summary"] = f"Baseline gate incomplete: no score of {who} at NFE {', '.join(map(str, missing))} yet."
    else:
        out["status"] = "pass"
        worst = max(cells, key=lambda c: abs(c["delta"]) / c["limit"] if c["limit"] else 0.0)
        out["summary"] = (
            f"Baseline reproduced: {who} is within the tolerance of {where} at NFE "
            f"{', '.join(str(n) for n in sorted({c['nfe'] for c in cells}))} (closest to the limit: "
            f"{_gate_cell(worst)})."
        )
    out["mlflow_tags"] = {"baseline_gate": out["status"], "baseline_gate.summary": out["summary"][:5000]}
    return out


def _gate_cell(c: dict) -> str:
    name = "Gen.-PPL" if c["metric"] == "gen_ppl" else "entropy"
    sd = f", {c['delta_sd']:+.1f} SD" if c.get("delta_sd") is not None else ""
    return (
        f"NFE {c['nfe']} {name} {c['ours']:.2f} vs {c['paper']:.2f} ± {c['paper_sd']:.2f} "
        f"({c['delta_pct']:+.1f}%{sd}; tolerance ±{c['limit']:.2f})"
    )
