"""GPU telemetry through nvidia-ml-py (`import pynvml`): clocks, power, temperature, throttle reasons.

Read before and after each case. If pynvml cannot be imported or NVML cannot start, `Telemetry.available`
is False, `note` says why, readings are None, and the run goes on without them.

Whether a case throttled is judged from two things (`case_throttle`): the clock-event reason bits of the two
readings (the state at that instant), and NVML's cumulative violation counters (nanoseconds the clocks were held
down for power, thermal, ... reasons), compared between the readings. The counters are what sees a slowdown
*during* the case: the readings are taken while the GPU is idle, after a synchronize, when a power cap that held
the clocks down all through the case has already let go.
"""
import torch

# NVML "clocks event" (formerly "throttle") reason bits, from nvml.h. These are the ones that mean the GPU
# ran slower than it could; GpuIdle, ApplicationsClocksSetting and DisplayClockSetting are not slowdowns.
SLOWDOWN_REASONS = {
    0x4: "sw_power_cap",
    0x8: "hw_slowdown",
    0x10: "sync_boost",
    0x20: "sw_thermal_slowdown",
    0x40: "hw_thermal_slowdown",
    0x80: "hw_power_brake_slowdown",
    0x200: "board_limit",   # nvmlClocksThrottleReasonBoardLimit (nvidia-ml-py 13)
    0x400: "reliability",   # nvmlClocksThrottleReasonReliability (nvidia-ml-py 13)
}
OTHER_REASONS = {0x1: "gpu_idle", 0x2: "applications_clocks_setting", 0x100: "display_clock_setting"}

# NVML performance policies whose violation counter (time the clocks were held below what was asked for) counts
# as a slowdown: name in the readings -> pynvml constant. LOW_UTILIZATION (clocks lowered because the GPU had
# little to do) and the TOTAL_* aggregates are left out.
VIOLATION_POLICIES = {
    "power": "NVML_PERF_POLICY_POWER",
    "thermal": "NVML_PERF_POLICY_THERMAL",
    "sync_boost": "NVML_PERF_POLICY_SYNC_BOOST",
    "board_limit": "NVML_PERF_POLICY_BOARD_LIMIT",
    "reliability": "NVML_PERF_POLICY_RELIABILITY",
}


def decode_reasons(mask):
    """Names of the reason bits set in `mask` (slowdowns first)."""
    return [name for bit, name in {**SLOWDOWN_REASONS, **OTHER_REASONS}.items() if mask & bit]


def is_throttled(reading):
    """True if an NVML reading shows any slowdown reason; None when there is no reading."""
    if not reading:
        return None
    return any(reason in SLOWDOWN_REASONS.values() for reason in reading["reasons"])


def case_throttle(before, after):
    """(throttled, reasons) of a case from the readings taken before and after it.

    throttled: True if either reading shows a slowdown reason bit, or a violation counter grew between them;
    None when neither reading exists. reasons: the slowdown reasons seen, sorted: reason-bit names, and
    '<policy>_violation' for each counter that grew (idle and the other non-slowdown bits are not listed)."""
    if not before and not after:
        return None, None
    slowdowns = set(SLOWDOWN_REASONS.values())
    reasons = {r for reading in (before, after) if reading for r in reading.get("reasons", ()) if r in slowdowns}
    start, end = (before or {}).get("violation_ns") or {}, (after or {}).get("violation_ns") or {}
    reasons |= {f"{policy}_violation" for policy, ns in end.items()
                if start.get(policy) is not None and ns is not None and ns > start[policy]}
    return bool(reasons), sorted(reasons)


class Telemetry:
    def __init__(self, device):
        self.available = False
        self.note = None
        self._nvml = None
        self._handle = None
        device = torch.device(device)
        if device.type != "cuda":
            self.note = "telemetry skipped: not a CUDA device"
            return
        try:
            import pynvml
        except ImportError:
            self.note = "telemetry skipped: pynvml not importable (pip install nvidia-ml-py)"
            return
        try:
            pynvml.nvmlInit()
            self._handle = _nvml_handle(pynvml, device)
        except Exception as exc:  # NVML missing from the driver, no permission, ...
            self.note = f"telemetry skipped: NVML failed to start ({exc})"
            return
        self._nvml = pynvml
        self.available = True

    def read(self):
        """A dict of the current readings, or None when telemetry is unavailable."""
        if not self.available:
            return None
        nvml, h = self._nvml, self._handle
        reading = {}
        for key, query in (
            ("name", lambda: nvml.nvmlDeviceGetName(h)),
            ("sm_clock_mhz", lambda: nvml.nvmlDeviceGetClockInfo(h, nvml.NVML_CLOCK_SM)),
            ("mem_clock_mhz", lambda: nvml.nvmlDeviceGetClockInfo(h, nvml.NVML_CLOCK_MEM)),
            ("max_sm_clock_mhz", lambda: nvml.nvmlDeviceGetMaxClockInfo(h, nvml.NVML_CLOCK_SM)),
            ("power_w", lambda: nvml.nvmlDeviceGetPowerUsage(h) / 1e3),
            ("power_limit_w", lambda: nvml.nvmlDeviceGetEnforcedPowerLimit(h) / 1e3),
            ("temperature_c", lambda: nvml.nvmlDeviceGetTemperature(h, nvml.NVML_TEMPERATURE_GPU)),
        ):
            try:
                value = query()
                reading[key] = value.decode() if isinstance(value, bytes) else value
            except Exception:  # one unsupported query (e.g. on a MIG slice) must not lose the others
                reading[key] = None
        reading["reasons"] = decode_reasons(_reasons_mask(nvml, h))
        reading["violation_ns"] = _violation_ns(nvml, h)
        return reading


def _reasons_mask(nvml, handle):
    # Renamed from "ClocksThrottleReasons" to "ClocksEventReasons" in newer NVML; try both.
    for query in ("nvmlDeviceGetCurrentClocksEventReasons", "nvmlDeviceGetCurrentClocksThrottleReasons"):
        if hasattr(nvml, query):
            try:
                return int(getattr(nvml, query)(handle))
            except Exception:
                continue
    return 0


def _violation_ns(nvml, handle):
    """{policy: cumulative nanoseconds the clocks were held down for it} for the VIOLATION_POLICIES this GPU and
    nvidia-ml-py report (nvmlDeviceGetViolationStatus; a policy the device does not support is left out)."""
    query = getattr(nvml, "nvmlDeviceGetViolationStatus", None)
    if query is None:
        return {}
    counters = {}
    for name, constant in VIOLATION_POLICIES.items():
        policy = getattr(nvml, constant, None)
        if policy is None:
            continue
        try:
            counters[name] = int(query(handle, policy).violationTime)
        except Exception:  # NVML_ERROR_NOT_SUPPORTED on some boards, MIG slices, ...
            continue
    return counters


def _nvml_handle(nvml, device):
    # NVML numbers GPUs physically while CUDA_VISIBLE_DEVICES renumbers them, so match on the PCI bus id.
    props = torch.cuda.get_device_properties(device)
    bus = getattr(props, "pci_bus_id", None)
    if bus is not None:
        domain = getattr(props, "pci_domain_id", 0)
        dev = getattr(props, "pci_device_id", 0)
        try:
            return nvml.nvmlDeviceGetHandleByPciBusId(f"{domain:04x}:{bus:02x}:{dev:02x}.0".encode())
        except Exception:
            pass
    return nvml.nvmlDeviceGetHandleByIndex(device.index or 0)
