"""Signal synthesis for the synthetic sound-scene event types.

Every event type has a distinct acoustic signature (tonal, swept, impulsive,
noisy, harmonic, inharmonic) so that a captioning model can tell them apart
from a log-mel spectrogram. `synthesize` renders one *repetition* of an event
(one beep, one knock) or the whole of a continuous event (a siren, rain) as a
float32 waveform with a peak of about 1; scenes.py places and scales it.

All randomness comes from the `np.random.Generator` passed in, so a clip is a
pure function of its generator state.
"""

import dataclasses
import functools
from collections.abc import Callable

import numpy as np
from scipy import signal

SynthFn = Callable[[np.random.Generator, int, str | None, int], np.ndarray]


@dataclasses.dataclass(frozen=True)
class EventSpec:
  """What an event type is and which attributes apply to it.

  Attributes:
    name: Type name stored in the ground truth (`events[i]['type']`).
    countable: Repeated 1-4 times (a beep, a knock); otherwise continuous and
      always `count == 1` (a siren, rain).
    has_pitch: `pitch` ('high' / 'low') applies.
    has_duration: `duration` ('short' / 'long') applies: of each repetition
      for countable events, of the whole event for continuous ones.
    can_background: May continue in the background under the other events.
    rep_seconds: `{'short': (lo, hi), 'long': (lo, hi)}` seconds of one
      repetition (countable) or of the event (continuous); `'fixed'` when the
      type has no duration attribute.
    gap_seconds: Range of the silence between repetitions.
    synth: `synth(rng, num_samples, pitch, sample_rate) -> float32 [num_samples]`.
  """

  name: str
  countable: bool
  has_pitch: bool
  has_duration: bool
  can_background: bool
  rep_seconds: dict[str, tuple[float, float]]
  gap_seconds: tuple[float, float]
  synth: SynthFn


def _time(n: int, sr: int) -> np.ndarray:
  return np.arange(n, dtype=np.float32) / np.float32(sr)


def _fade(x: np.ndarray, sr: int, attack: float, release: float) -> np.ndarray:
  """Linear fade in and out (seconds), avoiding clicks at the edges."""
  n = x.shape[0]
  env = np.ones(n, np.float32)
  a = min(max(int(attack * sr), 1), n // 2)
  r = min(max(int(release * sr), 1), n // 2)
  env[:a] = np.linspace(0.0, 1.0, a, dtype=np.float32)
  env[n - r :] = np.linspace(1.0, 0.0, r, dtype=np.float32)
  return x * env


def _normalize(x: np.ndarray) -> np.ndarray:
  peak = float(np.max(np.abs(x))) if x.size else 0.0
  return (x / peak).astype(np.float32) if peak > 0 else x.astype(np.float32)


def _sin(cycles: np.ndarray) -> np.ndarray:
  """sin(2 pi cycles), wrapping to [0, 1) first so float32 stays precise."""
  cycles = np.asarray(cycles, np.float32)
  return np.sin(np.float32(2 * np.pi) * (cycles - np.floor(cycles)))


def _cycles(freq: float, n: int, sr: int) -> np.ndarray:
  """Phase in cycles [n] of a steady `freq` Hz tone."""
  return np.float32(freq / sr) * np.arange(n, dtype=np.float32)


def _phase(freq: np.ndarray, sr: int) -> np.ndarray:
  """Integrates an instantaneous frequency track [n] (Hz) to a phase in cycles [n]."""
  return np.cumsum(np.asarray(freq, np.float32) * np.float32(1 / sr), dtype=np.float32)


@functools.lru_cache(maxsize=256)
def _butter(btype: str, cutoff: tuple[int, ...] | int, sr: int, order: int = 2):
  return signal.butter(order, cutoff, btype=btype, fs=sr)


def _lowpass(x: np.ndarray, cutoff: float, sr: int) -> np.ndarray:
  b, a = _butter('low', int(cutoff), sr)
  return signal.lfilter(b, a, x).astype(np.float32)


def _bandpass(x: np.ndarray, lo: float, hi: float, sr: int) -> np.ndarray:
  """Band-pass; edges rounded to 50 Hz so that filter designs are reused."""
  b, a = _butter('band', (int(lo // 50 * 50), int(hi // 50 * 50)), sr)
  return signal.lfilter(b, a, x).astype(np.float32)


def noise(rng: np.random.Generator, n: int) -> np.ndarray:
  """Unit-RMS white noise (uniform: cheaper to draw than Gaussian)."""
  return (rng.random(n, dtype=np.float32) - np.float32(0.5)) * np.float32(12**0.5)


def _pick(pitch: str | None, rng: np.random.Generator, high: tuple, low: tuple) -> float:
  lo, hi = high if pitch == 'high' else low
  return float(rng.uniform(lo, hi))


def beep(rng: np.random.Generator, n: int, pitch: str | None, sr: int) -> np.ndarray:
  """A steady pure tone with sharp edges."""
  f = _pick(pitch, rng, (1800, 3200), (300, 600))
  return _fade(_sin(_cycles(f, n, sr)), sr, 0.004, 0.004)


def _sweep(rng, n, pitch, sr, rising: bool) -> np.ndarray:
  """An exponential glide over 1-1.5 octaves."""
  f0 = _pick(pitch, rng, (1500, 2200), (220, 350))
  f1 = f0 * float(rng.uniform(2.0, 2.8))
  if not rising:
    f0, f1 = f1, f0
  freq = f0 * (f1 / f0) ** (np.arange(n) / max(n - 1, 1))
  return _fade(_sin(_phase(freq, sr)), sr, 0.01, 0.02)


def rising_sweep(rng: np.random.Generator, n: int, pitch: str | None, sr: int) -> np.ndarray:
  return _sweep(rng, n, pitch, sr, rising=True)


def falling_sweep(rng: np.random.Generator, n: int, pitch: str | None, sr: int) -> np.ndarray:
  return _sweep(rng, n, pitch, sr, rising=False)


def siren(rng: np.random.Generator, n: int, pitch: str | None, sr: int) -> np.ndarray:
  """A slowly wailing tone with an odd harmonic."""
  centre = _pick(pitch, rng, (1100, 1400), (450, 650))
  depth = centre * float(rng.uniform(0.25, 0.35))
  rate = float(rng.uniform(0.4, 0.9))
  lfo = _sin(_cycles(rate, n, sr) + np.float32(rng.uniform(0, 1)))
  ph = _phase(centre + depth * lfo, sr)
  x = _sin(ph) + 0.3 * _sin(3 * ph)
  return _fade(x / 1.3, sr, 0.08, 0.08)


def hum(rng: np.random.Generator, n: int, pitch: str | None, sr: int) -> np.ndarray:
  """A low mains-like harmonic drone, slightly amplitude modulated."""
  del pitch
  cycles = _cycles(float(rng.uniform(90, 130)), n, sr)
  x = sum(np.float32(0.7**k) * _sin((k + 1) * cycles) for k in range(5))
  x *= 1 + 0.15 * _sin(_cycles(float(rng.uniform(0.5, 2.0)), n, sr))
  return _normalize(_fade(x, sr, 0.1, 0.1))


def _place(n: int, starts: np.ndarray, kernel: np.ndarray, gains: np.ndarray) -> np.ndarray:
  """Adds `kernel * gain` at each start sample (clipped to [0, n))."""
  out = np.zeros(n + kernel.shape[0], np.float32)
  for s, g in zip(starts, gains, strict=True):
    out[s : s + kernel.shape[0]] += g * kernel
  return out[:n]


def ticking(rng: np.random.Generator, n: int, pitch: str | None, sr: int) -> np.ndarray:
  """A regular train of short bright clicks (a clock)."""
  del pitch
  period = int(sr / rng.uniform(3.0, 6.0))
  klen = int(0.01 * sr)
  tone = _sin(_cycles(3500, klen, sr)) + 0.6 * _sin(_cycles(1300, klen, sr))
  kernel = tone * np.exp(-np.arange(klen) / (0.25 * klen))
  starts = np.arange(int(rng.integers(0, period)), n, period)
  gains = np.where(np.arange(starts.size) % 2 == 0, 1.0, 0.7)  # Tick, tock.
  return _normalize(_place(n, starts, kernel.astype(np.float32), gains))


def knock(rng: np.random.Generator, n: int, pitch: str | None, sr: int) -> np.ndarray:
  """One knock: a damped low resonance plus a short noise transient."""
  del pitch
  t = _time(n, sr)
  body = _sin(_cycles(float(rng.uniform(140, 260)), n, sr)) * np.exp(-t / np.float32(0.03))
  click = noise(rng, n) * np.exp(-t / np.float32(0.004))
  return _normalize(body + 0.5 * _lowpass(click, 2000, sr))


def hiss(rng: np.random.Generator, n: int, pitch: str | None, sr: int) -> np.ndarray:
  """A burst of bright broadband noise (steam)."""
  del pitch
  x = np.diff(noise(rng, n), prepend=np.float32(0.0))  # Tilts the spectrum upwards.
  return _normalize(_fade(x, sr, 0.02, 0.06))


def rain(rng: np.random.Generator, n: int, pitch: str | None, sr: int) -> np.ndarray:
  """Dense random crackles (sparse impulses, high-passed) over a soft noise bed."""
  del pitch
  num = int(rng.poisson(rng.uniform(150, 400) * n / sr))
  impulses = np.zeros(n, np.float32)
  np.add.at(impulses, rng.integers(0, n, num), rng.exponential(1.0, num).astype(np.float32))
  crackle = signal.lfilter([1.0, -1.0], [1.0, -0.6], impulses).astype(np.float32)
  bed = _bandpass(noise(rng, n), 800, 5000, sr)
  x = crackle / (np.max(np.abs(crackle)) + 1e-6) + bed * (0.1 / (np.std(bed) + 1e-6))
  return _normalize(_fade(x, sr, 0.1, 0.1))


def bird(rng: np.random.Generator, n: int, pitch: str | None, sr: int) -> np.ndarray:
  """One bird-like chirp: a quick high arch in pitch with fast vibrato."""
  del pitch
  u = np.arange(n) / max(n - 1, 1)
  top = float(rng.uniform(3500, 5500))
  freq = top * (0.7 + 0.3 * np.sin(np.pi * u)) + 250 * _sin(_cycles(35, n, sr))
  return _normalize(_sin(_phase(freq, sr)) * np.hanning(n).astype(np.float32))


def engine(rng: np.random.Generator, n: int, pitch: str | None, sr: int) -> np.ndarray:
  """A low pulsing rumble: filtered sawtooth firing pulses plus noise."""
  del pitch
  f = float(rng.uniform(30, 55))
  cycles = _cycles(f, n, sr)
  saw = 2 * (cycles - np.floor(cycles)) - 1
  x = _lowpass(saw + 0.6 * noise(rng, n), 300, sr) * (1 + 0.3 * _sin(cycles / 2))
  return _normalize(_fade(x, sr, 0.15, 0.15))


def bell(rng: np.random.Generator, n: int, pitch: str | None, sr: int) -> np.ndarray:
  """A struck bell: inharmonic partials, exponentially decaying."""
  f = _pick(pitch, rng, (900, 1500), (250, 420))
  t = _time(n, sr)
  cycles = _cycles(f, n, sr)
  decay = n / sr / 3.0
  ratios = (1.0, 2.0, 2.4, 3.0, 4.2, 5.4)
  x = sum(
    np.float32(0.8**k) * _sin(np.float32(r) * cycles) * np.exp(-t * np.float32((1 + k) / decay))
    for k, r in enumerate(ratios)
  )
  return _normalize(_fade(x, sr, 0.002, 0.05))


def whistle(rng: np.random.Generator, n: int, pitch: str | None, sr: int) -> np.ndarray:
  """A whistled note: vibrato, a scoop up at the start and breath noise."""
  f = _pick(pitch, rng, (1400, 2300), (600, 900))
  t = _time(n, sr)
  scoop = 1 - 0.12 * np.exp(-t / np.float32(0.05))
  freq = f * scoop * (1 + 0.04 * _sin(_cycles(float(rng.uniform(5, 7)), n, sr)))
  breath = _bandpass(noise(rng, n), f * 0.8, min(f * 1.3, 7900), sr)
  x = _sin(_phase(freq, sr)) + breath * (0.15 / (np.std(breath) + 1e-6))
  return _normalize(_fade(x, sr, 0.03, 0.05))


def buzzer(rng: np.random.Generator, n: int, pitch: str | None, sr: int) -> np.ndarray:
  """A harsh square wave rich in harmonics."""
  f = _pick(pitch, rng, (380, 520), (110, 170))
  x = np.sign(_sin(_cycles(f, n, sr)))
  return _fade(_lowpass(x, 6000, sr), sr, 0.005, 0.005)


_TONE = {'short': (0.08, 0.2), 'long': (0.45, 0.8)}
_SWEEP = {'short': (0.15, 0.3), 'long': (0.6, 1.0)}
_HISS = {'short': (0.12, 0.25), 'long': (0.6, 1.0)}
_WHISTLE = {'short': (0.2, 0.4), 'long': (0.8, 1.2)}
_CONTINUOUS = {'short': (1.0, 1.8), 'long': (2.6, 3.8)}
_GAP = (0.15, 0.4)
_T, _F = True, False

# fmt: off
# name, countable, pitch, duration, background, repetition seconds, gap seconds, synth
_TABLE = (
  ('beep',          _T, _T, _T, _F, _TONE,                  _GAP,        beep),
  ('rising_sweep',  _T, _T, _T, _F, _SWEEP,                 _GAP,        rising_sweep),
  ('falling_sweep', _T, _T, _T, _F, _SWEEP,                 _GAP,        falling_sweep),
  ('siren',         _F, _T, _T, _F, _CONTINUOUS,            _GAP,        siren),
  ('hum',           _F, _F, _T, _T, _CONTINUOUS,            _GAP,        hum),
  ('ticking',       _F, _F, _T, _T, _CONTINUOUS,            _GAP,        ticking),
  ('knock',         _T, _F, _F, _F, {'fixed': (0.12, 0.18)}, (0.1, 0.25), knock),
  ('hiss',          _T, _F, _T, _F, _HISS,                  _GAP,        hiss),
  ('rain',          _F, _F, _T, _T, _CONTINUOUS,            _GAP,        rain),
  ('bird',          _T, _F, _F, _F, {'fixed': (0.08, 0.14)}, (0.1, 0.3),  bird),
  ('engine',        _F, _F, _T, _T, _CONTINUOUS,            _GAP,        engine),
  ('bell',          _T, _T, _F, _F, {'fixed': (0.8, 1.2)},   _GAP,        bell),
  ('whistle',       _T, _T, _T, _F, _WHISTLE,               _GAP,        whistle),
  ('buzzer',        _T, _T, _T, _F, _SWEEP,                 _GAP,        buzzer),
)
# fmt: on

EVENT_SPECS: dict[str, EventSpec] = {row[0]: EventSpec(*row) for row in _TABLE}
EVENT_TYPES: tuple[str, ...] = tuple(EVENT_SPECS)
BACKGROUND_TYPES: tuple[str, ...] = tuple(n for n, s in EVENT_SPECS.items() if s.can_background)


def synthesize(
  event_type: str, rng: np.random.Generator, num_samples: int, pitch: str | None, sample_rate: int
) -> np.ndarray:
  """Renders one repetition (or a whole continuous event) of `event_type`.

  Args:
    event_type: A name in `EVENT_TYPES`.
    rng: Source of all randomness.
    num_samples: Length of the waveform.
    pitch: 'high', 'low' or None (types without a pitch attribute ignore it).
    sample_rate: Samples per second.

  Returns:
    float32 waveform `[num_samples]` with a peak of about 1.
  """
  return EVENT_SPECS[event_type].synth(rng, num_samples, pitch, sample_rate).astype(np.float32)
