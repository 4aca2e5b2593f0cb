#!/usr/bin/env python3
"""Executes notebooks/*.ipynb headless on the Deno kernel (nbclient).

  python3 scripts/run_notebooks.py --check [NAME ...]   fresh run into a temp copy; fail on an error
                                                        cell; compare its summary with the committed one
  python3 scripts/run_notebooks.py --write [NAME ...]   execute in place (commit the outputs)

Needs `deno task build`, nbclient (scripts/requirements-notebooks.txt) and a "deno" kernelspec
(`deno jupyter --install`); without one, a kernelspec for the `deno` on PATH is written to a temp
JUPYTER_PATH. The kernel runs with cwd = notebooks/ and with all permissions.

Each notebook prints one line `NOTEBOOK_SUMMARY {json}` (notebooks/plot.ts) with sections:
  exact    numbers within 1e-6 relative or absolute (numpy.isclose), everything else equal
  timings  numbers within 5x either way (machines differ; a busy machine is slower still): a
           difference is a warning, a failure only with --strict-timings
  info     shown, not compared
Exit status: 0 when every notebook ran and matched, 1 otherwise (the failing cell is named).
"""
import argparse
import copy
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
PREFIX = "NOTEBOOK_SUMMARY "
RTOL = ATOL = 1e-6
TIMING_FACTOR = 5.0


def ensure_kernelspec(name: str) -> None:
    """Uses an installed kernelspec `name`, else writes one for the deno on PATH (temp JUPYTER_PATH)."""
    from jupyter_client.kernelspec import KernelSpecManager

    specs = KernelSpecManager().find_kernel_specs()
    if name in specs:
        print(f"kernel: {name} ({specs[name]})")
        return
    deno = shutil.which("deno")
    if not deno:
        sys.exit(f"no '{name}' kernelspec and no deno on PATH: run `deno jupyter --install`")
    d = Path(tempfile.mkdtemp(prefix="rabbitllm-jupyter-"))
    (d / "kernels" / name).mkdir(parents=True)
    spec = {
        "argv": [deno, "jupyter", "--kernel", "--conn", "{connection_file}"],
        "display_name": "Deno",
        "language": "typescript",
    }
    (d / "kernels" / name / "kernel.json").write_text(json.dumps(spec, indent=2))
    os.environ["JUPYTER_PATH"] = os.pathsep.join(filter(None, [str(d), os.environ.get("JUPYTER_PATH")]))
    print(f"kernel: no '{name}' kernelspec installed; using {deno} through {d}")


def summary_of(nb) -> dict | None:
    """The last NOTEBOOK_SUMMARY line of the notebook's stream outputs."""
    found = None
    for cell in nb.cells:
        for out in cell.get("outputs", []) if cell.cell_type == "code" else []:
            if out.get("output_type") != "stream":
                continue
            for line in "".join(out.get("text", "")).splitlines():
                if line.startswith(PREFIX):
                    found = json.loads(line[len(PREFIX):])
    return found


def error_cells(nb) -> list[str]:
    errs = []
    for i, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []) if cell.cell_type == "code" else []:
            if out.get("output_type") == "error":
                errs.append(f"cell {i}: {out.get('ename')}: {out.get('evalue')}")
    return errs


def compare(old, new, path: str, mode: str, problems: list[str]) -> None:
    """Appends a line per difference between the committed (`old`) and fresh (`new`) values."""
    if isinstance(old, dict) and isinstance(new, dict):
        for k in sorted(set(old) | set(new)):
            if k not in old or k not in new:
                problems.append(f"{path}.{k}: only in the {'fresh' if k in new else 'committed'} run")
            else:
                compare(old[k], new[k], f"{path}.{k}", mode, problems)
    elif isinstance(old, list) and isinstance(new, list):
        if len(old) != len(new):
            problems.append(f"{path}: {len(old)} items committed, {len(new)} now")
        else:
            for i, (a, b) in enumerate(zip(old, new)):
                compare(a, b, f"{path}[{i}]", mode, problems)
    elif (isinstance(old, (int, float)) and isinstance(new, (int, float))
          and not isinstance(old, bool) and not isinstance(new, bool)):
        if mode == "timings":
            ok = old > 0 and new > 0 and max(old / new, new / old) <= TIMING_FACTOR
            if not ok:
                problems.append(f"{path}: {old:.4g} committed, {new:.4g} now (more than {TIMING_FACTOR:g}x)")
        elif not (old == new or (math.isfinite(old) and math.isfinite(new)
                                 and abs(old - new) <= ATOL + RTOL * abs(new))):
            problems.append(f"{path}: {old!r} committed, {new!r} now")
    elif old != new:
        problems.append(f"{path}: {json.dumps(old)} committed, {json.dumps(new)} now")


def execute(nb, timeout: int) -> tuple[float, str | None]:
    """Runs every cell; returns (seconds, the failing cell's description or None)."""
    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="deno",
        record_timing=False,
        resources={"metadata": {"path": str(NOTEBOOKS)}},
    )
    t0 = time.monotonic()
    try:
        client.execute()
    except CellExecutionError as e:
        idx = next((i for i, c in enumerate(nb.cells)
                    if c.cell_type == "code" and any(o.get("output_type") == "error" for o in c.get("outputs", []))), None)
        head = str(e).strip().splitlines()
        return time.monotonic() - t0, f"cell {idx}: {e.ename}: {e.evalue}\n" + "\n".join(head[-40:])
    except (CellTimeoutError, DeadKernelError) as e:
        return time.monotonic() - t0, f"{type(e).__name__}: {e}"
    return time.monotonic() - t0, None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--check", action="store_true", help="execute temp copies and compare with the committed outputs")
    g.add_argument("--write", action="store_true", help="execute in place")
    ap.add_argument("--strict-timings", action="store_true", help="fail (not warn) on timings beyond 5x")
    ap.add_argument("--timeout", type=int, default=300, help="seconds per cell (default 300)")
    ap.add_argument("notebooks", nargs="*", help="names or paths (default: notebooks/*.ipynb)")
    args = ap.parse_args()

    paths = [Path(n) if Path(n).exists() else NOTEBOOKS / (n if n.endswith(".ipynb") else f"{n}.ipynb")
             for n in args.notebooks] or sorted(NOTEBOOKS.glob("*.ipynb"))
    ensure_kernelspec("deno")
    out_dir = Path(tempfile.mkdtemp(prefix="rabbitllm-notebooks-")) if args.check else None
    failures = []
    for path in paths:
        path = path.resolve()
        committed = nbformat.read(path, as_version=4)
        nb = copy.deepcopy(committed)
        for cell in nb.cells:
            if cell.cell_type == "code":
                cell.outputs, cell.execution_count = [], None
        seconds, err = execute(nb, args.timeout)
        target = path if args.write else out_dir / path.name
        if args.write and err:
            target = out_dir = out_dir or Path(tempfile.mkdtemp(prefix="rabbitllm-notebooks-"))
            target = out_dir / path.name  # keep the committed notebook; the failed run goes aside
        nbformat.write(nb, target)
        name = path.name
        if err:
            failures.append(name)
            print(f"FAIL {name} ({seconds:.1f} s, executed copy: {target})\n{err}")
            continue
        fresh = summary_of(nb)
        if fresh is None:
            failures.append(name)
            print(f"FAIL {name} ({seconds:.1f} s): no {PREFIX.strip()} line in its outputs")
            continue
        if args.write:
            print(f"ok   {name} ({seconds:.1f} s, written)")
            continue
        problems = [f"committed outputs hold an error: {e}" for e in error_cells(committed)]
        old = summary_of(committed)
        if old is None:
            problems.append(f"the committed notebook has no {PREFIX.strip()} line (run --write)")
        else:
            compare(old.get("exact", {}), fresh.get("exact", {}), "exact", "exact", problems)
            slow = []
            compare(old.get("timings", {}), fresh.get("timings", {}), "timings", "timings", slow)
            if args.strict_timings:
                problems += slow
            else:
                for p in slow:
                    print(f"warn {path.name}: {p}")
        if problems:
            failures.append(name)
            print(f"FAIL {name} ({seconds:.1f} s, executed copy: {target})")
            for p in problems[:50]:
                print(f"  {p}")
            if len(problems) > 50:
                print(f"  ... {len(problems) - 50} more")
        else:
            print(f"ok   {name} ({seconds:.1f} s, summary matches; executed copy: {target})")
    print(f"notebooks: {len(paths) - len(failures)} passed, {len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
