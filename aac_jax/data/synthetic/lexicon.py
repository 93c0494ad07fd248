"""Words of the synthetic captions, shared by the grammar and the parser.

captions.py writes sentences from these lists and diagnostics.py reads them
back with the same lists, so the two cannot drift apart. A word that names an
event type (a *keyword*) must name exactly one type; generic words (subjects
such as 'someone' or 'a machine', verbs such as 'sounds') name none.
"""

import dataclasses


@dataclasses.dataclass(frozen=True)
class TypeWords:
  """How captions talk about one event type.

  Attributes:
    nouns: Countable noun heads as (singular, plural).
    mass: Uncountable noun heads used without an article ('rain').
    subjects: Clause subjects with their article ('a bell', 'someone').
    verbs: Verb phrases as (third person singular, -ing participle).
    keywords: Words and phrases that name this type and no other.
  """

  nouns: tuple[tuple[str, str], ...]
  mass: tuple[str, ...]
  subjects: tuple[str, ...]
  verbs: tuple[tuple[str, str], ...]
  keywords: tuple[str, ...]


def _plural(*nouns: str) -> tuple[tuple[str, str], ...]:
  return tuple((n, n + ('es' if n.endswith(('s', 'z', 'sh')) else 's')) for n in nouns)


TYPE_WORDS: dict[str, TypeWords] = {
  'beep': TypeWords(
    nouns=_plural('beep', 'bleep', 'electronic beep', 'beeping sound'),
    mass=(),
    subjects=(
      'a machine',
      'a device',
      'an electronic device',
      'something',
      'a microwave',
      'a timer',
    ),
    verbs=(('beeps', 'beeping'), ('bleeps', 'bleeping')),
    keywords=('beep', 'beeps', 'beeping', 'bleep', 'bleeps', 'bleeping', 'beeped'),
  ),
  'rising_sweep': TypeWords(
    nouns=_plural('rising tone', 'rising sweep', 'ascending tone', 'upward sweep', 'upward glide'),
    mass=(),
    subjects=('a tone', 'a synthesizer', 'an electronic tone', 'a sound'),
    verbs=(
      ('rises in pitch', 'rising in pitch'),
      ('sweeps upward', 'sweeping upward'),
      ('glides upward', 'gliding upward'),
      ('ascends', 'ascending'),
    ),
    keywords=('rising', 'rises', 'rise', 'ascending', 'ascends', 'upward', 'upwards'),
  ),
  'falling_sweep': TypeWords(
    nouns=_plural('falling tone', 'falling sweep', 'descending tone', 'downward sweep'),
    mass=(),
    subjects=('a tone', 'a synthesizer', 'an electronic tone', 'a sound'),
    verbs=(
      ('falls in pitch', 'falling in pitch'),
      ('sweeps downward', 'sweeping downward'),
      ('glides downward', 'gliding downward'),
      ('descends', 'descending'),
    ),
    keywords=('falling', 'falls', 'descending', 'descends', 'downward', 'downwards'),
  ),
  'siren': TypeWords(
    nouns=_plural('siren', 'alarm', 'wailing siren', 'emergency siren', 'police siren'),
    mass=(),
    subjects=('a siren', 'an alarm', 'an emergency siren', 'a police siren'),
    verbs=(
      ('wails', 'wailing'),
      ('blares', 'blaring'),
      ('howls', 'howling'),
      ('sounds', 'sounding'),
    ),
    keywords=('siren', 'sirens', 'alarm', 'alarms', 'wail', 'wails', 'wailing', 'blares'),
  ),
  'hum': TypeWords(
    nouns=_plural('hum', 'electrical hum', 'drone', 'mains hum', 'humming noise'),
    mass=('humming',),
    subjects=('a transformer', 'an appliance', 'a fridge', 'a refrigerator', 'something'),
    verbs=(('hums', 'humming'), ('drones', 'droning')),
    keywords=('hum', 'hums', 'humming', 'drone', 'drones', 'droning'),
  ),
  'ticking': TypeWords(
    nouns=_plural('ticking clock', 'ticking sound', 'metronome', 'clicking sound'),
    mass=('ticking', 'clicking'),
    subjects=('a clock', 'a metronome', 'a wall clock', 'an old clock'),
    verbs=(('ticks', 'ticking'), ('clicks', 'clicking')),
    keywords=('tick', 'ticks', 'ticking', 'tock', 'clock', 'clocks', 'metronome', 'click')
    + ('clicks', 'clicking'),
  ),
  'knock': TypeWords(
    nouns=_plural('knock', 'thud', 'tap') + (('knock on a door', 'knocks on a door'),),
    mass=(),
    subjects=('someone', 'somebody', 'a person', 'a visitor'),
    verbs=(
      ('knocks', 'knocking'),
      ('knocks on a door', 'knocking on a door'),
      ('taps on a table', 'tapping on a table'),
      ('knocks on wood', 'knocking on wood'),
    ),
    keywords=('knock', 'knocks', 'knocking', 'knocked', 'thud', 'thuds', 'tap', 'taps', 'tapping'),
  ),
  'hiss': TypeWords(
    nouns=(
      ('hiss', 'hisses'),
      ('burst of hiss', 'bursts of hiss'),
      ('burst of steam', 'bursts of steam'),
      ('puff of steam', 'puffs of steam'),
      ('hissing burst', 'hissing bursts'),
    ),
    mass=(),
    subjects=('a valve', 'a pipe', 'a kettle', 'a pressure valve', 'something'),
    verbs=(('hisses', 'hissing'), ('lets out steam', 'letting out steam')),
    keywords=('hiss', 'hisses', 'hissing', 'hissed', 'steam'),
  ),
  'rain': TypeWords(
    nouns=(),
    mass=('rain', 'rainfall', 'drizzle', 'crackling', 'pattering rain', 'crackling rain'),
    subjects=('rain', 'the rain', 'drizzle'),
    verbs=(('patters', 'pattering'), ('crackles', 'crackling'), ('comes down', 'coming down')),
    keywords=('rain', 'rains', 'raining', 'rainfall', 'raindrops', 'drizzle', 'patter', 'patters')
    + ('pattering', 'crackle', 'crackles', 'crackling'),
  ),
  'bird': TypeWords(
    nouns=_plural('chirp', 'tweet', 'bird call', 'bird chirp'),
    mass=(),
    subjects=('a bird', 'a small bird', 'a sparrow', 'a songbird'),
    verbs=(('chirps', 'chirping'), ('tweets', 'tweeting'), ('calls', 'calling')),
    keywords=('bird', 'birds', 'chirp', 'chirps', 'chirping', 'tweet', 'tweets', 'tweeting')
    + ('sparrow', 'songbird'),
  ),
  'engine': TypeWords(
    nouns=_plural('engine', 'idling engine', 'motor', 'rumble', 'engine rumble', 'rumbling engine'),
    mass=('rumbling',),
    subjects=('an engine', 'a motor', 'a truck', 'a generator', 'a diesel engine'),
    verbs=(('rumbles', 'rumbling'), ('idles', 'idling'), ('runs', 'running')),
    keywords=('engine', 'engines', 'motor', 'motors', 'rumble', 'rumbles', 'rumbling', 'idles')
    + ('idling', 'truck', 'generator', 'diesel'),
  ),
  'bell': TypeWords(
    nouns=_plural('bell', 'chime', 'ding', 'bell stroke', 'ringing bell'),
    mass=(),
    subjects=('a bell', 'a small bell', 'a church bell', 'a doorbell', 'a hand bell'),
    verbs=(('rings', 'ringing'), ('chimes', 'chiming'), ('tolls', 'tolling'), ('dings', 'dinging')),
    keywords=('bell', 'bells', 'doorbell', 'ring', 'rings', 'ringing', 'chime', 'chimes', 'chiming')
    + ('ding', 'dings', 'dinging', 'toll', 'tolls', 'tolling'),
  ),
  'whistle': TypeWords(
    nouns=_plural('whistle', 'whistle blast', 'whistled note', 'whistling sound'),
    mass=(),
    subjects=('someone', 'a person', 'a man', 'a woman', 'a referee'),
    verbs=(('whistles', 'whistling'), ('blows a whistle', 'blowing a whistle')),
    keywords=('whistle', 'whistles', 'whistling', 'whistled'),
  ),
  'buzzer': TypeWords(
    nouns=_plural('buzz', 'buzzer', 'buzzing sound', 'electric buzz'),
    mass=(),
    subjects=('a buzzer', 'an intercom', 'a device', 'something'),
    verbs=(('buzzes', 'buzzing'),),
    keywords=('buzz', 'buzzes', 'buzzing', 'buzzer', 'buzzers', 'buzzed'),
  ),
}

# Counts before a noun ('two beeps') and after a verb ('rings twice').
COUNT_BEFORE: dict[int, tuple[str, ...]] = {
  1: ('a', 'one', 'a single'),
  2: ('two', 'a pair of'),
  3: ('three',),
  4: ('four',),
}
COUNT_AFTER: dict[int, tuple[str, ...]] = {
  1: ('once',),
  2: ('twice', 'two times'),
  3: ('three times',),
  4: ('four times',),
}

# Attribute words: adjectives go before a noun, adverbs after a verb.
ADJECTIVES: dict[tuple[str, str], tuple[str, ...]] = {
  ('loudness', 'loud'): ('loud', 'powerful', 'intense'),
  ('loudness', 'quiet'): ('quiet', 'faint', 'soft'),
  ('pitch', 'high'): ('high', 'high pitched', 'shrill'),
  ('pitch', 'low'): ('low', 'low pitched', 'deep'),
  ('duration', 'short'): ('short', 'brief', 'quick'),
  ('duration', 'long'): ('long', 'prolonged', 'sustained', 'lengthy'),
}
ADVERBS: dict[tuple[str, str], tuple[str, ...]] = {
  ('loudness', 'loud'): ('loudly',),
  ('loudness', 'quiet'): ('quietly', 'softly', 'faintly'),
  ('pitch', 'high'): ('at a high pitch', 'in a high register'),
  ('pitch', 'low'): ('at a low pitch', 'in a low register'),
  ('duration', 'short'): ('briefly', 'for a moment', 'for a short time'),
  ('duration', 'long'): ('for a long time', 'at length', 'for several seconds'),
}
# Duration of each repetition of a countable event, said after the verb.
REPETITION_ADVERBS: dict[str, tuple[str, ...]] = {
  'short': ('in short bursts', 'briefly'),
  'long': ('in long bursts', 'at length'),
}

# Connectives. Foreground events are always said in temporal order except
# after REVERSING connectives ('A after B', 'A preceded by B': B came first).
THEN_BEFORE_CLAUSE = (
  'then',
  'and then',
  'after that',
  'and afterwards',
  'before',
  'and later',
  'and next',
  'shortly afterwards',
)
THEN_BEFORE_NOUN = ('followed by', 'then', 'and then', 'followed shortly by', 'and later')
FINALLY = ('and finally', 'finally')
FIRST = ('first', 'at first', 'to begin with')
REVERSING = ('after', 'preceded by')
LEAD_INS = ('', 'the sound of', 'you can hear', 'we hear', 'a recording of', 'there is')
HEARD_SINGULAR = ('is heard', 'can be heard', 'sounds', 'is audible')
HEARD_PLURAL = ('are heard', 'can be heard', 'sound', 'are audible')

# Background: after the foreground ('... while rain patters in the background')
# or before it ('over a constant hum ...').
BACKGROUND_SUFFIX_CLAUSE = ('in the background', 'throughout', 'all along', 'the whole time')
BACKGROUND_ADJECTIVES = ('constant', 'steady', 'continuous', 'persistent')
BACKGROUND_CONTINUES = ('continues in the background', 'goes on throughout', 'continues throughout')

# Parser-only knowledge: which words separate mentions and which mark the
# background. Every connective above is a boundary.
BOUNDARIES = (
  'and',
  'then',
  'followed by',
  'followed',
  'after that',
  'afterwards',
  'afterward',
  'before',
  'while',
  'as',
  'with',
  'later',
  'next',
  'first',
  'at first',
  'to begin with',
  'finally',
  'meanwhile',
  'subsequently',
  'until',
  'whilst',
)
BACKGROUND_PREFIX = ('over', 'against', 'under', 'beneath', 'underneath', 'behind', 'amid')
BACKGROUND_MARKERS = (
  'background',
  'throughout',
  'all along',
  'the whole time',
  'constant',
  'constantly',
  'steady',
  'steadily',
  'continuous',
  'continuously',
  'continues',
  'continuing',
  'persistent',
  'goes on',
)
DETERMINERS = ('a', 'an', 'the', 'another', 'some')
