"""Lexer rules of the CoreNLP 3.4.1 PTB tokenizer, as used by `ptb_tokenizer`.

Each `Rule` has a pattern whose named group ``tok`` is the token text; what
follows ``tok`` in the pattern is trailing context: it counts towards the
match length (JFlex picks the longest match, including trailing context) but
is not consumed. The order of `rules()` breaks ties, as in the jar.

The patterns follow the jar's observed behaviour with its command-line
options (PTB3 escaping: brackets to -LRB- and friends, LaTeX quotes, "..."
ellipses, "--" dashes, currency and fraction normalisation; no
Americanisation, no slash escaping, no splitting of hyphenated words).
The lexer is case-insensitive for literal words but not for character
classes, hence the ``(?i:...)`` groups around words only.
"""

import dataclasses
import functools
import re
from collections.abc import Callable

Action = Callable[[str], tuple[str | None, int]]


def _numeric_non_digits() -> str:
  """Class body of the characters Python's \\w counts but that are not letters or digits.

  Those are numbers like "²" or "½" (Unicode No and Nl); Java's
  Character.isLetter, like str.isalpha, excludes them.
  """
  ranges, start, prev = [], None, None
  for code in range(0x10000):
    char = chr(code)
    if char.isalnum() and not char.isalpha() and not char.isdecimal():
      if start is None or code != prev + 1:
        if start is not None:
          ranges.append((start, prev))
        start = code
      prev = code
  ranges.append((start, prev))
  return ''.join(f'\\u{a:04x}' if a == b else f'\\u{a:04x}-\\u{b:04x}' for a, b in ranges)


_NOT_LETTER = _numeric_non_digits()
# Marks and modifiers the jar also accepts inside words.
_EXTRA = (
  r'\u00ad\u0237-\u024f\u02c2-\u02c5\u02d2-\u02df\u02e5-\u02ff\u0300-\u036f'
  r'\u0370-\u037d\u0384\u0385\u03cf\u03f6\u03fc-\u03ff\u0483-\u0487\u04cf'
  r'\u04f6-\u04ff\u0510-\u0525\u055a-\u055f\u0591-\u05bd\u05bf\u05c1\u05c2'
  r'\u05c4\u05c5\u05c7\u0615-\u061a\u063b-\u063f\u064b-\u065e\u0670'
  r'\u06d6-\u06ef\u06fa-\u06ff\u070f\u0711\u0730-\u074f\u0750-\u077f'
  r'\u07a6-\u07b1\u07ca-\u07f5\u07fa\u0900-\u0903\u093c\u093e-\u094e'
  r'\u0951-\u0955\u0962\u0963\u0981-\u0983\u09bc-\u09c4\u09c7\u09c8'
  r'\u09cb-\u09cd\u09d7\u09e2\u09e3\u0a01-\u0a03\u0a3c\u0a3e-\u0a4f'
  r'\u0a81-\u0a83\u0abc-\u0acf\u0b82\u0bbe-\u0bc2\u0bc6-\u0bc8\u0bca-\u0bcd'
  r'\u0c01-\u0c03\u0c3e-\u0c56\u0d3e-\u0d44\u0d46-\u0d48\u0e30-\u0e3a'
  r'\u0e47-\u0e4e\u0eb1-\u0ebc\u0ec8-\u0ecd'
)
# Upper case, for "a sentence starts here" look-aheads only (they decide
# whether an abbreviation's period is repeated as a punctuation token).
_UPPER = 'A-Z\\u00c0-\\u00d6\\u00d8-\\u00de\\u0391-\\u03a9\\u0410-\\u042f'

# Building blocks (regex source strings).
ALPHA = f'[^\\W\\d_{_NOT_LETTER}]'  # [:letter:] (str.isalpha), one character.
LET = f'(?:{ALPHA}|[{_EXTRA}])'  # Letters plus marks.
LETTER = f'(?:{LET}|&[aeiouAEIOU](?i:acute|grave|uml);)'
LD = f'[^\\W_{_NOT_LETTER}]'  # [:letter:]|[:digit:]
SP = r'[ \t\u00a0\u2000-\u200a\u3000]'
SPNL = r'[ \t\u00a0\u2000-\u200a\u3000\r\n\u2028\u2029\u000b\u000c\u0085]'
END = rf'(?:{SPNL}|$)'  # A caption's end stands for the newline after it.
WORD = f'{LETTER}(?:{LETTER}|\\d)*(?:[.!?]{LETTER}(?:{LETTER}|\\d)*)*'
APOS = r"(?:['\u0092\u2019]|&apos;)"
APOSETC = r"(?:['\u0092\u2019`\u0091\u2018\u201b]|&apos;)"
REDAUX = f'{APOS}(?:[msdMSD]|(?i:re|ve|ll))'
SWORD = r'[A-Za-z\u00ad]*[A-MO-Za-mo-z]\u00ad*'
SREDAUX = f'[nN]{APOSETC}[tT]'
ACRO = r'(?:[A-Za-z](?:\.[A-Za-z])+|(?i:canada|sino|korean|eu|japan|non)-(?i:u)\.(?i:s)|(?i:u\.s\.-(?:u\.k|u\.s\.s\.r)))'
SGML = (
  r'<(?:[!?][A-Za-z\-][^>\r\n]*|[A-Za-z][A-Za-z0-9_:.\-]*'
  r"""(?:[ ]+(?:[A-Za-z][A-Za-z0-9_:.\-]*[ ]*=[ ]*(?:'[^']*'|"[^"]*"|[A-Za-z][A-Za-z0-9_:.\-]*)"""
  r'|[A-Za-z][A-Za-z0-9_:.\-]*))*[ ]*/?|/[A-Za-z][A-Za-z0-9_:.\-]*)[ ]*>'
)
ABBREV1 = (
  '(?:(?i:jan|feb|mar|apr|jun|jul|aug|sept?|oct|nov|dec|mon|tues?|wed|thu|thurs|fri'
  '|ala|ariz|calif|colo|conn|ct|dak|fla|ga|ind|kans?|ky|md|mich|minn|mo|mont|neb|nev'
  '|okla|penn|tenn|va|vt|wisc?|wyo|inc|cos?|corp|ltd|plc|rt|bancorp|bhd|assn|univ|intl'
  '|sys|tel|est|ext|sq|jr|sr|bros|(?:ed|ph)\\.d|esq|blvd|rd|etc|al|seq|bldg)'
  '|A(?i:z)|A(?i:rk)|D(?i:el)|I(?i:ll)|L(?i:a)|M(?i:ass)|M(?i:iss)|O(?i:re)|P(?i:a)'
  '|T(?i:ex)|W(?i:ash)|(?i:p)(?i:p)?(?i:t)[ye](?i:s)?)\\.'
)
ABBREV4 = (
  f'(?:{ACRO}|(?i:mrs?|ms|drs?|profs?|sens?|reps?|attys?|lt|col|gen|messrs|govs?|adm'
  '|rev|maj|sgt|cpl|pvt|mt|capt|ste?|ave|pres|lieut|hon|brig|c(?:o)?mdr|pfc|spc|supts?'
  '|det|ft|adj|adv|asst|assoc|ens|insp|mlle|mme|msgr|sfc|dept|ph|vs|alex|wm|jos|cie'
  '|a\\.k\\.a|cf|treas|invt|elec|natl)|M(?i:iss)|(?i:m)[ft](?i:g)|[A-Za-z])'
)
ACRONYM_NEXT = (
  '|'.join(
    f'{w[0]}(?i:{re.escape(w[1:])})' if len(w) > 1 else w
    for w in (
      'About According Additionally After An A As At But Earlier He Her Here However If In It'
      ' Last Many More Mr. Ms. Now Once One Other Our She Since So Some Such That The Their'
      ' Then There These They This We When While What Yet You'
    ).split()
  )
  + f'|{SGML}'
)
HTHING = rf'[A-Za-z0-9][A-Za-z0-9.,\u00ad]*(?:-(?:{ACRO}\.|[A-Za-z0-9\u00ad]+))+'
THING = (
  f'(?:[dDoOlL]{APOSETC}{LD})?{LD}+(?:[-_\\u058a\\u2010\\u2011](?:[dDoOlL]{APOSETC}{LD})?{LD}+)*'
)
THINGA = r'[A-Z]+(?:(?:[+&]|(?i:&amp;))[A-Z]+)+'
FILE_NAME = (
  f'{LD}+(?:\\.{LD}+)*\\.(?i:bat|bmp|bz2|c|class|cgi|cpp|dll|doc|docx|exe|gif|gz|h|htm|html'
  '|jar|java|jpeg|jpg|mov|mp3|pdf|php|pl|png|ppt|ps|py|sql|tar|txt|wav|x|xml|zip)'
)
NOT_URL = r' \t\n\f\r"<>|()'
PHONE = (
  r'(?:\([0-9]{2,3}\)[ \u00a0]?|(?:\+\+?)?(?:[0-9]{2,4}[\- \u00a0])?[0-9]{2,4}[\- \u00a0])'
  r'[0-9]{3,4}[\- \u00a0]?[0-9]{3,5}'
  r'|(?:(?:\+\+?)?[0-9]{2,4}\.)?[0-9]{2,4}\.[0-9]{3,4}\.[0-9]{3,5}'
)
MISC_SYMBOL = (
  r'[+%&~\^|\\\u00a6\u00a7\u00a8\u00a9\u00ac\u00ae\u00af\u00b0-\u00ba\u00d7\u00f7\u0387'
  r'\u05be\u05c0\u05c3\u05c6\u05f3\u05f4\u0600-\u0603\u0606-\u060a\u060c\u0614\u061b'
  r'\u061e\u066a\u066d\u0703-\u070d\u07f6-\u07f8\u0964\u0965\u0e4f\u1fbd\u2016\u2017'
  r'\u2020-\u2025\u2030-\u2038\u203b\u203c\u203e-\u2044\u207a-\u207f\u208a-\u208e'
  r'\u2100-\u214f\u2190-\u21ff\u2200-\u2bff\u3001-\u3006\u3008-\u3020\u30fb'
  r'\uff01-\uff0f\uff1a-\uff20\uff3b-\uff40\uff5b-\uff65]'
)
QUOTE_CHARS = r'`\u2018\u2019\u201a\u201b\u201c\u201d\u0091\u0092\u0093\u0094\u201e\u201f\u2039\u203a\u00ab\u00bb'


# Actions: token text -> (emitted token or None, characters consumed).
def _keep(tok: str) -> tuple[str | None, int]:
  return tok, len(tok)


def _drop(tok: str) -> tuple[str | None, int]:
  return None, len(tok)


def _const(value: str) -> Action:
  return lambda tok: (value, len(tok))


def _map(fn: Callable[[str], str]) -> Action:
  return lambda tok: (fn(tok), len(tok))


def _pushback(n: int) -> Action:
  return lambda tok: (tok[:-n], len(tok) - n)


def _period_again(tok: str) -> tuple[str | None, int]:
  """Abbreviation ending a sentence: keep it whole, then emit its period."""
  return tok, len(tok) - 1


def _acronym(tok: str) -> tuple[str | None, int]:
  """Acronym before a sentence start: "I." gives "I" "."; "U.S." "U.S." "."."""
  if len(tok) == 2:
    return tok[0], 1
  return tok, len(tok) - 1


def _no_shy(tok: str) -> str:
  return tok.replace('\u00ad', '')


def _amp(tok: str) -> str:
  return re.sub('(?i)&amp;', '&', tok)


def _brackets(tok: str) -> str:
  return tok.replace('(', '-LRB-').replace(')', '-RRB-')


_LATEX_QUOTES = (
  (re.compile('[\u0091\u2018\u201b\u2039]'), '`'),
  (re.compile('[\u0092\u2019\u203a]'), "'"),
  (re.compile('[\u0093\u201c\u00ab]'), '``'),
  (re.compile('[\u0094\u201d\u00bb]'), "''"),
)


def _quotes(left: bool) -> Action:
  """LaTeX-style quotes; straight quotes turn by the guessed side."""

  def convert(tok: str) -> str:
    out = re.sub("&apos;|'", '`' if left else "'", tok)
    out = re.sub('"|&quot;', '``' if left else "''", out)
    for pattern, repl in _LATEX_QUOTES:
      out = pattern.sub(repl, out)
    return out

  return _map(convert)


_FRACTIONS = {'\u00bc': '1/4', '\u00bd': '1/2', '\u00be': '3/4', '\u2153': '1/3', '\u2154': '2/3'}
_CURRENCY = {'\u00a2': 'cents', '\u00a3': '#', '\u0080': '$', '\u00a4': '$', '\u20a0': '$'}
_CURRENCY['\u20ac'] = '$'


@dataclasses.dataclass(frozen=True)
class Rule:
  """One lexer rule.

  Attributes:
    name: for debugging.
    pattern: compiled; group ``tok`` is the token, the rest trailing context.
    action: maps the token text to (token or None, characters consumed).
    first: regex matching the characters the rule can start with.
  """

  name: str
  pattern: re.Pattern
  action: Action
  first: re.Pattern


def _rule(name: str, tok: str, action: Action, first: str, ctx: str = '') -> Rule:
  return Rule(name, re.compile(f'(?P<tok>{tok}){ctx}'), action, re.compile(first))


_F_WORD = f'{LET}|&'
_F_LD = LD
_F_APOS = r"['\u0092\u2019&]"
_PERIODS = '[.\u00a1\u00bf\u037e\u0589\u061f\u06d4\u0700-\u0702\u07fa]'
_SPACES = '[\x00 \t\u00a0\u2000-\u200b\u200e\u200f\u3000\ufeff]'


def _rules_part1() -> tuple[Rule, ...]:
  """Lexer rules, part 1 of 4 (in the jar's order)."""
  return (
    _rule('assimilation3', "(?i:cannot|'twas)", _pushback(3), "[cC']"),
    _rule('assimilation2', "(?i:'tis|gonna|gotta|lemme|gimme|wanna)", _pushback(2), "[gGlLwW']"),
    _rule('prog_lang', r'(?i:c\+\+|[cf]#)', _keep, '[cCfF]'),
    _rule('sgml', SGML, _map(lambda t: re.sub('[ \r\n]', '\u00a0', t)), '<'),
    _rule(
      'mdash',
      r'(?i:&(?:md|mdash|ndash);)|[\u0096\u0097\u2013\u2014\u2015]',
      _const('--'),
      r'[&\u0096\u0097\u2013\u2014\u2015]',
    ),
    _rule('amp', '(?i:&amp;)', _const('&'), '&'),
    _rule('sgml_punct', '(?i:&(?:ht|tl|ur|lr|qc|ql|qr|odq|cdq|#[0-9]+);)', _keep, '&'),
    _rule('word_redaux', WORD, _map(_no_shy), _F_WORD, ctx=REDAUX),
    _rule('sword_sredaux', SWORD, _map(_no_shy), r'[A-Za-z\u00ad]', ctx=SREDAUX),
    _rule('word', WORD, _map(_no_shy), _F_WORD),
    _rule('apoword_n', f'{APOS}(?i:n){APOS}?', _keep, _F_APOS),
    _rule(
      'apoword_elision', f'[lLdDjJ]{APOS}|(?i:dunkin|somethin|ol){APOS}', _keep, '[lLdDjJsSoO]'
    ),
    _rule('apoword_em', f'{APOS}(?i:em|till?|cause|[2-9]0s)', _keep, _F_APOS),
    _rule('apoword_upper', f'[A-HJ-XZn]{APOSETC}{LET}{{2}}{LET}*', _keep, '[A-HJ-XZn]'),
    _rule('apoword_vowel', f'{LET}+[aeiouyAEIOUY]{APOSETC}[aeiouA-Z]{LET}*', _keep, LET),
    _rule(
      'apoword_fixed',
      r"(?i:cont'd\.?|nor'easter|c'mon|e'er|s'mores|ev'ry|li'l|nat'l)" f'|(?i:o){APOSETC}(?i:o)',
      _keep,
      '[cCnNeEsSlLoO]',
    ),
    _rule('apoword_y', f'(?i:y){APOS}', _keep, '[yY]', ctx=LET),
    _rule('full_url', f'(?i:https?)://[^{NOT_URL}]+[^{NOT_URL}.!?{{}},-]', _keep, '[hH]'),
    _rule(
      'likely_url',
      r'(?:(?i:www)\.(?:[^ \t\n\f\r"<>|.!?(){},]+\.)+[a-zA-Z]{2,4}'
      r"""|(?:[^ \t\n\f\r"`'<>|.!?(){},-_$]+\.)+(?i:com|net|org|edu))"""
      f'(?:/[^{NOT_URL}]+[^{NOT_URL}.!?{{}},-])?',
      _keep,
      r'[^ \t\n\f\r"<>|.!?(){},]',
    ),
    _rule(
      'email',
      r'(?:(?i:&lt;)|<)?[a-zA-Z0-9][^ \t\n\f\r"<>|()\u00a0{}]*@'
      r'(?:[^ \t\n\f\r"<>|(){}.\u00a0]+\.)*[^ \t\n\f\r"<>|(){}.\u00a0]+(?:(?i:&gt;)|>)?',
      _keep,
      '[a-zA-Z0-9<&]',
    ),
  )


def _rules_part2() -> tuple[Rule, ...]:
  """Lexer rules, part 2 of 4 (in the jar's order)."""
  return (
    _rule(
      'twitter',
      f'[@\\uff20][a-zA-Z_][a-zA-Z_0-9]*|[#\\uff03]{LETTER}+',
      _keep,
      '[@#\uff20\uff03]',
    ),
    _rule('redaux', REDAUX, _quotes(False), _F_APOS, ctx='(?:[^A-Za-z]|$)'),
    _rule('sredaux', SREDAUX, _quotes(False), '[nN]'),
    _rule('date', r'\d{1,2}[\-/]\d{1,2}[\-/]\d{2,4}', _keep, r'\d'),
    _rule(
      'number',
      r'[\-+]?(?:\d*(?:[.:,\u00ad\u066b\u066c]\d+)+|\d+)',
      _map(_no_shy),
      r'[\-+\d.:,\u00ad\u066b\u066c]',
    ),
    _rule(
      'subsup_number',
      r'[\u207a\u207b\u208a\u208b]?(?:[\u2070\u00b9\u00b2\u00b3\u2074-\u2079]+|[\u2080-\u2089]+)',
      _keep,
      r'[\u207a\u207b\u208a\u208b\u2070\u00b9\u00b2\u00b3\u2074-\u2079\u2080-\u2089]',
    ),
    _rule(
      'fraction',
      r'(?:\d{1,4}[- \u00a0])?\d{1,4}(?:\\?/|\u2044)\d{1,4}',
      _map(lambda t: t.replace(' ', '\u00a0')),
      r'\d',
    ),
    _rule(
      'fraction_char',
      r'[\u00bc\u00bd\u00be\u2153-\u215e]',
      _map(lambda t: _FRACTIONS.get(t, t)),
      r'[\u00bc\u00bd\u00be\u2153-\u215e]',
    ),
    _rule(
      'treebank_special',
      f'(?i:-(?:rrb|lrb|rcb|lcb|rsb|lsb)-|c\\.d\\.s|pro-|anti-|s(?:&|&amp;)p-500|s(?:&|&amp;)ls'
      f'|cap{APOS}n|c{APOS}est)',
      _map(_amp),
      '[-cCpPaAsS]',
    ),
    _rule(
      'slash_thing',
      r'[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}(?:\\?/[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}){1,2}',
      _keep,
      '[A-Za-z0-9]',
    ),
    _rule('dollar', r'[A-Z]*\$|#', _keep, r'[A-Z$#]'),
  )


def _rules_part3() -> tuple[Rule, ...]:
  """Lexer rules, part 3 of 4 (in the jar's order)."""
  return (
    _rule(
      'currency',
      r'[\u00a2\u00a3\u00a4\u00a5\u0080\u20a0\u20ac\u060b\u0e3f\u20a4\uffe0\uffe1\uffe5\uffe6]',
      _map(lambda t: _CURRENCY.get(t, t)),
      r'[\u00a2\u00a3\u00a4\u00a5\u0080\u20a0\u20ac\u060b\u0e3f\u20a4\uffe0\uffe1\uffe5\uffe6]',
    ),
    _rule(
      'acronym_end',
      f'(?:{ACRO}|[A-Za-z])\\.',
      _acronym,
      '[A-Za-z]',
      ctx=f'{SP}+(?:{ACRONYM_NEXT}){END}',
    ),
    _rule(
      'abbrev_number',
      r'(?i:ca|figs?|prop|nos?|art|pp|op)\.',
      _keep,
      '[cCfFpPnNaAoO]',
      ctx=f'{SPNL}?\\d',
    ),
    _rule(
      'abbrev_sentence_end',
      ABBREV1,
      _period_again,
      '[A-Za-z]',
      ctx=f'{SPNL}(?:{SPNL}|[{_UPPER}]|{SGML})',
    ),
    # Two characters of context (any) make this beat e.g. WORD on "Jan.X".
    _rule('abbrev', ABBREV1, _keep, '[A-Za-z]', ctx=r'(?:[\s\S]{2}|[\s\S]?$)'),
    _rule('abbrev_title', f'{ABBREV4}\\.', _keep, '[A-Za-z]'),
    _rule('abbrev_title_space', ABBREV4, _keep, '[A-Za-z]', ctx=SP),
    _rule('acro', ACRO, _keep, '[A-Za-z]', ctx=END),
    _rule('year', f'{APOS}[0-9][0-9]', _keep, _F_APOS, ctx=END),
    _rule('file_name', FILE_NAME, _keep, _F_LD, ctx=r'(?:[\s.?!,]|$)'),
    _rule('word_period', f'{WORD}\\.', _map(_no_shy), _F_WORD, ctx='[,;:]'),
    _rule('phone', PHONE, _map(lambda t: _brackets(t.replace(' ', '\u00a0'))), r'[(+0-9]'),
    _rule('dblquote_left', '"|(?i:&quot;)', _quotes(True), '["&]', ctx='[A-Za-z0-9$]'),
    _rule('dblquote', '"|(?i:&quot;)', _quotes(False), '["&]'),
    _rule('delete', '\x7f', _drop, '\x7f'),
    _rule('duck_feet', '<<|>>', _keep, '[<>]'),
    _rule('less_than', '<|(?i:&lt;)', _const('<'), '[<&]'),
    _rule('greater_than', '>|(?i:&gt;)', _const('>'), '[>&]'),
    _rule(
      'smiley',
      r"[<>]?[:;=][\-o*']?[()DPdpO\\{@|\[\]]",
      _map(_brackets),
      '[<>:;=]',
      ctx='(?:[^A-Za-z0-9]|$)',
    ),
  )


def _rules_part4() -> tuple[Rule, ...]:
  """Lexer rules, part 4 of 4 (in the jar's order)."""
  return (
    _rule(
      'asian_smiley',
      r"[\^x=~<>]\.\[\^x=~<>]|[\-\^x=~<>']_[\-\^x=~<>']"
      r"|\([\-\^x=~<>'][_.]?[\-\^x=~<>']\)|\([\^x=~<>']-[\^x=~<>'`]\)",
      _keep,
      r"[\^x=~<>'\-(]",
    ),
    _rule('open_brace', r'\{', _const('-LCB-'), r'\{'),
    _rule('close_brace', r'\}', _const('-RCB-'), r'\}'),
    _rule('open_square', r'\[', _const('-LSB-'), r'\['),
    _rule('close_square', r'\]', _const('-RSB-'), r'\]'),
    _rule('open_paren', r'\(', _const('-LRB-'), r'\('),
    _rule('close_paren', r'\)', _const('-RRB-'), r'\)'),
    _rule('hyphens', '-+', _map(lambda t: '--' if 3 <= len(t) <= 4 else t), '-'),
    _rule(
      'ellipsis',
      r'\.{3,5}|(?:\.[ \u00a0]){2,4}\.|[\u0085\u2026]',
      _const('...'),
      r'[.\u0085\u2026]',
    ),
    _rule('marks', '@+|#+|_+', _keep, '[@#_]'),
    _rule('stars', r'\*+|(?:\\\*){1,3}', _keep, r'[*\\]'),
    _rule('in_sentence_punct', '[,;:]', _keep, '[,;:]'),
    _rule('end_punct', '[?!]+', _keep, '[?!]'),
    _rule('period', _PERIODS, _keep, _PERIODS),
    _rule('equals', '=', _keep, '='),
    _rule('slash', '/', _keep, '/'),
    _rule('hyphenated_period', f'{HTHING}\\.', _map(_no_shy), '[A-Za-z0-9]', ctx='[,;:]'),
    _rule('hyphenated', HTHING, _map(_no_shy), '[A-Za-z0-9]'),
    _rule('thing_period', f'{THING}\\.', _keep, _F_LD, ctx='[,;:]'),
    _rule('thing', THING, _keep, _F_LD),
    _rule('caps_and_period', f'{THINGA}\\.', _map(_amp), '[A-Z]', ctx='[,;:]'),
    _rule('caps_and', THINGA, _map(_amp), '[A-Z]'),
    _rule('quote_left', "'", _quotes(True), "'", ctx=r'[A-Za-z][^ \t\n\r\u00a0]'),
    _rule('redaux_any', REDAUX, _quotes(False), _F_APOS),
    _rule('quotes', f"''|[{QUOTE_CHARS}]{{1,2}}|{APOS}", _quotes(False), f"[{QUOTE_CHARS}'&]"),
    _rule('misc_symbol', MISC_SYMBOL, _keep, MISC_SYMBOL),
    _rule('space', f'{_SPACES}+', _drop, _SPACES),
    _rule('nbsp_entity', '(?i:&nbsp;)', _drop, '&'),
  )


@functools.cache
def rules() -> tuple[Rule, ...]:
  """The lexer rules in the jar's order (compiled on first use)."""
  return _rules_part1() + _rules_part2() + _rules_part3() + _rules_part4()


@functools.lru_cache(maxsize=4096)
def candidates(char: str) -> tuple[Rule, ...]:
  """Returns the rules that may match at a position starting with `char`."""
  return tuple(r for r in rules() if r.first.match(char))


_ABBREVIATING = re.compile(f'{ABBREV1}|{ABBREV4}\\.')


@functools.lru_cache(maxsize=1 << 14)
def may_abbreviate(word: str) -> bool:
  """Whether ``word + '.'`` may be lexed as an abbreviation or acronym.

  Args:
    word: letters, possibly with inner hyphens.

  Returns:
    True where the full scanner is needed to tokenize ``word.``.
  """
  return _ABBREVIATING.fullmatch(word + '.') is not None
