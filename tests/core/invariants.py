"""The `mmbc` policy's safety properties, checked cycle by cycle on snapshot and plan.

Stated independently of the policy's code (the tests' own health, eligibility and taper
rules). One condition the plan does not expose is read from the policy on purpose: the stale
limit it learnt from the meter's cadence (bounded here by the configured limit and 30 s).
"""

from __future__ import annotations

from engine.core.events import Excluded, LeaderChanged
from engine.core.model import BatteryTelemetry, Mode, Plan, Snapshot
from engine.core.policy import MmbcPolicy
from engine.core.settings import BatterySpec, ControlSettings
from engine.core.timers import TIMER_SLACK_S
from tests.strategies import healthy

KEEPALIVE_W = 1  # a 1 W command keeps the relay engaged; it is not "active"
MAX_STALE_S = 30.0  # the learnt cadence may stretch the stale limit, never beyond this


def charge_limit_w(spec: BatterySpec, soc_pct: float, settings: ControlSettings) -> int:
    """The tests' statement of the charge taper (battery care near full)."""
    limit = spec.max_charge_w
    if soc_pct >= settings.taper_full_soc_pct:
        return min(limit, settings.taper_full_power_w)
    if soc_pct >= settings.taper_soc_pct:
        return min(limit, settings.taper_power_w)
    return limit


def is_stale(snap: Snapshot, limit_s: float) -> bool:
    """Older than the limit, by more than a clock's rounding (engine.core.timers)."""
    return (
        snap.grid_w is None
        or snap.meter_updated_s is None
        or snap.now_s - snap.meter_updated_s > limit_s + TIMER_SLACK_S
    )


class SafetyChecker:
    """Checks every safety property of issue 6 after each cycle of one policy."""

    def __init__(self, policy: MmbcPolicy) -> None:
        self.policy = policy
        self.settings = policy.settings
        self.leader_changes = 0  # seen so far (to report what a test reached)
        self.excluded_at_s: dict[str, float] = {}  # last Excluded event

    def check(self, snap: Snapshot, plan: Plan) -> None:
        self.leader_changes += sum(1 for e in plan.events if isinstance(e, LeaderChanged))
        s = self.settings
        specs = {b.name: b for b in s.batteries}
        for name in specs:
            if any(isinstance(e, Excluded) and e.battery == name for e in plan.events):
                self.excluded_at_s[name] = snap.now_s
        tel = {t.name: t for t in snap.batteries if t.name in specs}
        ok = {n for n in specs if healthy(tel.get(n))}
        sp = plan.setpoints

        # An unknown, offline or garbage battery gets no command (or 0 W).
        assert set(sp) <= set(specs), f"setpoint for an unknown battery: {sp}"
        for name, power in sp.items():
            assert isinstance(power, int)
            if name not in ok:
                assert power == 0, f"{name} is unhealthy but commanded {power} W"

        for name, power in sp.items():
            spec = specs[name]
            # Within the battery's limits.
            assert -spec.max_charge_w <= power <= spec.max_discharge_w, (name, power, spec)
            t = tel.get(name)
            if power == 0 or t is None or t.soc_pct is None:
                continue
            soc = t.soc_pct
            if power < 0:
                assert soc < s.max_soc_pct, f"{name} charged at {soc} % >= max {s.max_soc_pct}"
            else:
                assert soc > s.min_soc_pct, f"{name} discharged at {soc} % <= {s.min_soc_pct}"
                assert not snap.discharge_blocked, f"{name} discharged while blocked"
                assert snap.mode not in (Mode.HOLD, Mode.CHARGE), f"{name} discharged: {snap.mode}"

        # Unavailable exactly when the last telemetry was unhealthy; state matches the sign.
        assert set(plan.battery_states) == set(specs)
        for name in specs:
            state = plan.battery_states[name]
            assert (state == "unavailable") == (name not in ok), (name, state, tel.get(name))
            power = sp.get(name, 0)
            if power > 0:
                assert state == "discharging", (name, power, state)
            elif power < 0:
                assert state == "charging", (name, power, state)
            else:
                assert state in (
                    "idle",
                    "blocked",
                    "ineligible",
                    "excluded",
                    "cutoff",
                    "unavailable",
                ), (name, state)

        if snap.mode is Mode.SELFCONTROL:
            assert sp == {}, "selfcontrol: no setpoints"
            assert sorted(plan.release) == sorted(ok), "selfcontrol releases the healthy ones"
            assert plan.fleet_state == "selfcontrol"
            assert not plan.safe_hold
            return
        assert plan.release == ()

        limit_s = self.policy.demand.cadence.stale_limit_s(s.stale_after_s)
        assert s.stale_after_s <= limit_s <= max(s.stale_after_s, MAX_STALE_S)
        if is_stale(snap, limit_s):
            assert plan.safe_hold, "stale meter but no safe hold"
            # Before the first fresh reading the fleet is still starting (also at 0 W).
            assert plan.fleet_state in ("safe_hold", "starting")
            assert sp == dict.fromkeys(ok, 0), f"safe hold must command every battery 0: {sp}"
            return
        assert not plan.safe_hold
        if snap.mode is Mode.CHARGE:
            assert plan.fleet_state == "charge"
            for name in ok:
                now_soc = tel[name].soc_pct
                assert now_soc is not None
                want = -charge_limit_w(specs[name], now_soc, s) if now_soc < s.max_soc_pct else 0
                if sp.get(name) == 0 and want and self._excluded(name, snap.now_s):
                    # Not following: not counted on in charge mode either.
                    assert plan.battery_states[name] == "excluded"
                    continue
                if sp.get(name) == 0 and want and plan.battery_states[name] == "cutoff":
                    continue  # stopped at its firmware's charge cut-off: sits charging out
                assert sp.get(name) == want, f"charge mode: {name} at {now_soc} %: {sp.get(name)}"
            return
        hold = snap.mode is Mode.HOLD or snap.discharge_blocked
        assert plan.fleet_state == ("hold" if hold else "normal")
        self._check_concentration(plan, tel)

    def _excluded(self, name: str, now_s: float) -> bool:
        """Excluded for not following: announced less than the exclusion time ago."""
        at_s = self.excluded_at_s.get(name)
        return at_s is not None and now_s - at_s < self.settings.not_following_exclude_s

    def _charge_limit(self, spec: BatterySpec, soc_pct: float) -> int:
        s = self.settings
        if not s.feature_charge_taper:
            return spec.max_charge_w
        return charge_limit_w(spec, soc_pct, s)

    def _check_concentration(self, plan: Plan, tel: dict[str, BatteryTelemetry]) -> None:
        """Normal/hold: the fleet carries the demand, on one battery below the split.

        The batteries never carry more than the demand (no overlap, also not while the
        leader changes: make-before-break wakes the incoming leader with 1 W only). Below
        ``split_threshold_w - split_hysteresis_w`` they are filled in priority order, so at
        most one active battery is below its limit: exactly one battery when the leader can
        carry the demand. 1 W keep-alives are not active.
        """
        s = self.settings
        target = plan.extra["target_w"]
        sp = plan.setpoints
        active = {n: p for n, p in sp.items() if abs(p) > KEEPALIVE_W}
        for name, power in active.items():
            assert abs(target) > s.idle_band_w, f"{name} active at {power} W in the idle band"
            assert (power > 0) == (target > 0), f"{name} at {power} W against {target:.0f} W"
        carried = sum(abs(p) for p in sp.values())
        assert carried <= abs(target) + len(sp), (
            f"fleet commanded {carried} W for a demand of {target:.0f} W: {sp}"
        )

        specs = {b.name: b for b in s.batteries}
        limits: dict[str, int] = {}
        for name, power in active.items():
            if power > 0:
                limits[name] = specs[name].max_discharge_w
            else:
                soc = tel[name].soc_pct
                assert soc is not None
                limits[name] = self._charge_limit(specs[name], soc)
        # The taper is battery care, not a cap on the house: it yields only to a surplus
        # larger than what the charging batteries take at tapered power.
        over_taper = [n for n, p in active.items() if -p > limits[n]]
        if over_taper:
            assert -target > sum(limits[n] for n, p in active.items() if p < 0), (
                f"{over_taper} charge above their taper for a surplus of {-target:.0f} W: {sp}"
            )

        if abs(target) > s.split_threshold_w - s.split_hysteresis_w:
            return
        unsaturated = [n for n, p in active.items() if abs(p) < limits[n]]
        assert len(unsaturated) <= 1, (
            f"demand {target:.0f} W below the split threshold drives {active} "
            f"(below their limits: {unsaturated})"
        )
