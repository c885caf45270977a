"""``mmbc-sim bench``: every scenario for every policy, in a process pool, with fault costs.

Each scenario runs at several tick phases (``sim.replay.timing``: where the cycles fall
against the meter's refresh) and reports their mean and its worst phase's excess; with no
phases given each runs once, at the phase drawn from its seed. Each run is deterministic
(its own plant, seeded from its scenario; nothing shared between runs), so the results do
not depend on how many processes run them: the pool only changes the wall time.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence

from sim.replay.inprocess import run_scenario
from sim.replay.result import RunResult
from sim.scenario import Scenario
from sim.scoring.metrics import phase_mean

__all__ = ["NOFAULT_SUFFIX", "available_cores", "run_bench"]

NOFAULT_SUFFIX = "#nofault"  # the name of a fault scenario's run without its faults

ProgressFn = Callable[[float, float], None]
_Job = tuple[Scenario, str, float | None]  # (scenario, policy, phase; None: its own draw)


def available_cores() -> int:
    """The cores this process may run on (a container's limit, not the machine's)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def run_bench(
    scenarios: Sequence[Scenario],
    policies: Sequence[str],
    *,
    jobs: int = 1,
    phases: Sequence[float] | None = None,
    progress: ProgressFn | None = None,
) -> list[RunResult]:
    """Every scenario for every policy, in that order, with ``jobs`` processes (1: in this
    process). ``phases``: the tick phases each runs at (its result is their mean, with the
    worst phase's excess); None: once, at its own drawn phase. A scenario with faults is
    also run without them, and its result carries ``fault_cost_wh``, the grid exchange the
    faults cost; those extra runs are not returned. The results hold no ``record`` (too big
    to send between processes).
    """
    sweep: Sequence[float | None] = [None] if phases is None else list(phases)
    work: list[_Job] = []
    for scenario in scenarios:
        for policy in policies:
            variants = [scenario]
            if scenario.faults:
                variants.append(
                    dataclasses.replace(scenario, faults=(), name=scenario.name + NOFAULT_SUFFIX)
                )
            work += [(variant, policy, phase) for variant in variants for phase in sweep]
    results = _run_all(work, jobs, progress)
    return _attach_fault_costs(_merge_phases(results, swept=phases is not None))


def _run_one(job: _Job) -> RunResult:
    scenario, policy, phase = job
    result = run_scenario(scenario, policy, phase=phase)
    result.record = None  # type: ignore[assignment]  # too big to send between processes
    return result


def _merge_phases(results: list[RunResult], *, swept: bool) -> list[RunResult]:
    """One result per (scenario, policy): the mean over its phases. An invariant holds only
    if it held at every phase; the report and notes are the first failing (or first)
    phase's."""
    if not swept:
        return results
    groups: dict[tuple[str, str], list[RunResult]] = {}
    for r in results:
        groups.setdefault((r.scenario, r.policy), []).append(r)
    merged: list[RunResult] = []
    for runs in groups.values():
        shown = next((r for r in runs if not all(r.invariants.values())), runs[0])
        merged.append(
            dataclasses.replace(
                shown,
                metrics=phase_mean([r.metrics for r in runs]),
                invariants={
                    name: all(r.invariants[name] for r in runs) for name in shown.invariants
                },
                phase=None,
            )
        )
    return merged


def _cost(job: _Job) -> float:
    """A run's rough cost: plant steps times the batteries (plus the house) stepped."""
    scenario = job[0]
    return scenario.duration_s * (1 + len(scenario.batteries))


def _run_all(work: list[_Job], jobs: int, progress: ProgressFn | None) -> list[RunResult]:
    """Every job's result, in job order. In a pool the longest runs start first, so no long
    one is left running alone at the end."""
    results: list[RunResult | None] = [None] * len(work)
    if jobs > 1 and len(work) > 1:
        # Imported here: the process pool brings multiprocessing, which `mmbc-sim run` and a
        # bench in one process never use.
        from concurrent.futures import ProcessPoolExecutor, as_completed

        order = sorted(range(len(work)), key=lambda i: _cost(work[i]), reverse=True)
        with ProcessPoolExecutor(max_workers=min(jobs, len(work))) as pool:
            futures = {pool.submit(_run_one, work[i]): i for i in order}
            for done, future in enumerate(as_completed(futures), start=1):
                results[futures[future]] = future.result()
                if progress is not None:
                    progress(done, len(work))
    else:
        for i, job in enumerate(work):
            results[i] = _run_one(job)
            if progress is not None:
                progress(i + 1, len(work))
    return [r for r in results if r is not None]


def _attach_fault_costs(results: list[RunResult]) -> list[RunResult]:
    """The main runs, each fault scenario's with ``fault_cost_wh``: its grid exchange less
    that of the same scenario and policy run without its faults."""
    base = {
        (r.scenario.removesuffix(NOFAULT_SUFFIX), r.policy): r
        for r in results
        if r.scenario.endswith(NOFAULT_SUFFIX)
    }
    main: list[RunResult] = []
    for r in results:
        if r.scenario.endswith(NOFAULT_SUFFIX):
            continue
        ref = base.get((r.scenario, r.policy))
        if ref is not None:
            exchange = r.metrics.import_wh + r.metrics.export_wh
            ref_exchange = ref.metrics.import_wh + ref.metrics.export_wh
            r.metrics = r.metrics.replace(fault_cost_wh=exchange - ref_exchange)
        main.append(r)
    return main
