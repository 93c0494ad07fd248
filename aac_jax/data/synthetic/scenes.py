"""Sampling and rendering synthetic sound scenes.

A scene is 1-4 events in a 4-10 s clip. Foreground events follow one another
without overlapping, so their order in time is well defined; when there are
at least two events, one continuous event may instead run in the background
under all the others. Background noise is added at a random SNR.
"""

import dataclasses
from typing import Any, NamedTuple

import numpy as np

from aac_jax.data.synthetic import events as events_lib

MIN_SECONDS = 4.0
MAX_SECONDS = 10.0
MAX_EVENTS = 4

_NUM_EVENTS_P = (0.2, 0.3, 0.3, 0.2)  # P(1 .. 4 events).
_COUNT_P = (0.4, 0.25, 0.2, 0.15)  # P(1 .. 4 repetitions) of countable events.
_BACKGROUND_P = 0.4  # P(one event is in the background | >= 2 events).
_GAIN = {'loud': (0.3, 0.45), 'quiet': (0.06, 0.09)}  # Peak amplitude (about 14 dB apart).
_SNR_DB = (15.0, 35.0)  # Quietest event peak over noise RMS: quiet events stay audible.
_EVENT_GAP = (0.25, 0.8)  # Silence between foreground events (before slack).


@dataclasses.dataclass(frozen=True)
class Event:
  """One sound event of a scene.

  Attributes:
    type: Event type name (see `events.EVENT_TYPES`).
    onset: Start in seconds.
    offset: End in seconds.
    count: Number of repetitions (1 for continuous events).
    attributes: `loudness` ('loud'/'quiet') always; `pitch` ('high'/'low')
      and `duration` ('short'/'long') where the type has them.
    background: Runs in the background under the other events.
    rep_seconds: Length of one repetition (of the whole event if continuous).
    gap_seconds: Silence between repetitions.
    gain: Peak amplitude in the mix.
  """

  type: str
  onset: float
  offset: float
  count: int
  attributes: dict[str, str]
  background: bool
  rep_seconds: float
  gap_seconds: float
  gain: float

  def to_json(self) -> dict[str, Any]:
    """The ground truth stored in the `events` feature."""
    return {
      'type': self.type,
      'onset': round(self.onset, 3),
      'offset': round(self.offset, 3),
      'count': self.count,
      'attributes': dict(self.attributes),
      'background': self.background,
    }


@dataclasses.dataclass(frozen=True)
class Scene:
  """A clip's length, events sorted by onset, and noise level."""

  seconds: float
  events: tuple[Event, ...]
  snr_db: float

  @property
  def foreground(self) -> tuple[Event, ...]:
    return tuple(e for e in self.events if not e.background)


def _uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
  return float(rng.uniform(*bounds))


def _sample_attributes(rng, spec: events_lib.EventSpec, background: bool) -> dict[str, str]:
  quiet_p = 0.75 if background else 0.5
  attrs = {'loudness': 'quiet' if rng.random() < quiet_p else 'loud'}
  if spec.has_pitch:
    attrs['pitch'] = 'high' if rng.random() < 0.5 else 'low'
  if spec.has_duration:
    attrs['duration'] = 'long' if background or rng.random() < 0.5 else 'short'
  return attrs


class _Shape(NamedTuple):
  """A foreground event before it is placed in time."""

  type: str
  attributes: dict[str, str]
  count: int
  rep_seconds: float
  gap_seconds: float

  @property
  def seconds(self) -> float:
    return self.count * self.rep_seconds + (self.count - 1) * self.gap_seconds


def _sample_shape(rng: np.random.Generator, event_type: str) -> _Shape:
  spec = events_lib.EVENT_SPECS[event_type]
  attrs = _sample_attributes(rng, spec, background=False)
  count = int(rng.choice(4, p=_COUNT_P)) + 1 if spec.countable else 1
  rep = _uniform(rng, spec.rep_seconds[attrs.get('duration', 'fixed')])
  gap = _uniform(rng, spec.gap_seconds) if count > 1 else 0.0
  return _Shape(event_type, attrs, count, rep, gap)


def _place_foreground(rng, shapes: list[_Shape]) -> tuple[float, list[Event]] | None:
  """Picks the clip length and lays the events out one after another.

  Returns:
    (clip seconds, events), or None when they do not fit in MAX_SECONDS.
  """
  # Silences: before the first event, between events, after the last one.
  silences = np.array(
    [_uniform(rng, (0.1, 0.5))]
    + [_uniform(rng, _EVENT_GAP) for _ in range(len(shapes) - 1)]
    + [_uniform(rng, (0.2, 0.5))]
  )
  needed = sum(s.seconds for s in shapes) + float(silences.sum())
  seconds = max(_uniform(rng, (MIN_SECONDS, MAX_SECONDS)), needed)
  if seconds > MAX_SECONDS:
    return None
  silences = silences + rng.dirichlet(np.ones(len(shapes) + 1)) * (seconds - needed)
  events, t = [], 0.0
  for shape, silence in zip(shapes, silences[:-1], strict=True):
    t += float(silence)
    gain = _uniform(rng, _GAIN[shape.attributes['loudness']])
    end = t + shape.seconds
    events.append(
      Event(shape.type, t, end, shape.count, shape.attributes, False, *shape[3:], gain=gain)
    )
    t += shape.seconds
  return seconds, events


def _background_event(rng, event_type: str, seconds: float, fg: list[Event]) -> Event:
  """A continuous event that starts before and ends after the foreground."""
  attrs = _sample_attributes(rng, events_lib.EVENT_SPECS[event_type], background=True)
  onset = _uniform(rng, (0.0, min(0.3, fg[0].onset)))
  offset = seconds - _uniform(rng, (0.0, min(0.3, seconds - fg[-1].offset)))
  gain = _uniform(rng, _GAIN[attrs['loudness']]) * 0.7  # Stays under the foreground.
  return Event(event_type, onset, offset, 1, attrs, True, offset - onset, 0.0, gain)


def _try_sample_scene(rng: np.random.Generator) -> Scene | None:
  """Samples a scene; None when the foreground does not fit in MAX_SECONDS."""
  num_events = int(rng.choice(MAX_EVENTS, p=_NUM_EVENTS_P)) + 1
  background_type = None
  if num_events >= 2 and rng.random() < _BACKGROUND_P:
    background_type = str(rng.choice(events_lib.BACKGROUND_TYPES))
  candidates = [t for t in events_lib.EVENT_TYPES if t != background_type]
  num_fg = num_events - (background_type is not None)
  fg_types = [str(t) for t in rng.choice(candidates, size=num_fg, replace=False)]
  placed = _place_foreground(rng, [_sample_shape(rng, t) for t in fg_types])
  if placed is None:
    return None
  seconds, events = placed
  if background_type is not None:
    events.insert(0, _background_event(rng, background_type, seconds, events))
  events.sort(key=lambda e: e.onset)
  return Scene(seconds, tuple(events), _uniform(rng, _SNR_DB))


def sample_scene(rng: np.random.Generator) -> Scene:
  """Samples a scene (rejecting the few whose events do not fit in 10 s).

  Args:
    rng: Source of all randomness; the scene is a pure function of its state.

  Returns:
    A `Scene` of `MIN_SECONDS`-`MAX_SECONDS` seconds with 1-`MAX_EVENTS` events.
  """
  while True:
    scene = _try_sample_scene(rng)
    if scene is not None:
      return scene


def _noise(rng: np.random.Generator, n: int) -> np.ndarray:
  """Unit-RMS noise, tilted towards low frequencies by a one-tap FIR."""
  white = events_lib.noise(rng, n)
  x = white.copy()
  x[1:] += np.float32(0.8) * white[:-1]
  return x * np.float32(1 / np.sqrt(1 + 0.8**2))


def render_scene(scene: Scene, rng: np.random.Generator, sample_rate: int) -> np.ndarray:
  """Renders a scene to 16-bit PCM.

  Args:
    scene: The scene to render.
    rng: Source of the signals' randomness (exact frequencies, noise).
    sample_rate: Samples per second.

  Returns:
    int16 waveform `[round(scene.seconds * sample_rate)]`.
  """
  n = int(round(scene.seconds * sample_rate))
  mix = np.zeros(n, np.float32)
  for event in scene.events:
    pitch = event.attributes.get('pitch')
    rep_n = int(round(event.rep_seconds * sample_rate))
    # One rendering reused for every repetition: repeats sound the same.
    wave = events_lib.synthesize(event.type, rng, rep_n, pitch, sample_rate) * event.gain
    for k in range(event.count):
      start = int(round((event.onset + k * (event.rep_seconds + event.gap_seconds)) * sample_rate))
      stop = min(start + rep_n, n)
      mix[start:stop] += wave[: stop - start]
  noise_rms = _GAIN['quiet'][0] * 10 ** (-scene.snr_db / 20)
  mix += np.float32(noise_rms) * _noise(rng, n)
  return np.round(np.clip(mix, -1.0, 1.0) * 32767).astype(np.int16)
