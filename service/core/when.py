"""When a "not yet" answer says things will be known: "by mid-April", "next week", "on the 12th",
"nach dem Sommer", "fin du mois", "la semana que viene", "na de zomer". Pure: the reply's local
date comes in, a date (or None) goes out.

`named_date(text, today)` returns the day by which what the person named will have happened:
the end of a named period ("next week" -> Friday of next week, "in March" -> 31 March, "end of
the month" -> its last day), the day itself for a day ("on the 12th", "Tuesday", "3 November").
Several dates: the latest wins (a meeting on the 12th and a decision at the end of the month
are both over by the month's end). Dates in the past ("last Tuesday", "in March" said in
October means next March) are moved to their next occurrence or dropped.

Why not a library: dateparser's `search_dates`, tried on the dev phrases, read "We" as
Wednesday, put "on the 12th" two months out, and found nothing for "mid-April", "after the
summer", "fin du mois", "la semana que viene" or "na de zomer" (bench/README.md has the
figures). What replies name is a small, bounded grammar; this module is that grammar in five
languages, matched on the classifier's normalised text (lower case, no accents).
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Callable, Iterator
from datetime import date, timedelta

from service.core.classify import normalize

__all__ = ["named_date"]

_MONTHS: dict[str, int] = {}
for _i, _names in enumerate((
    "january jan januar janner janvier enero januari",
    "february feb februar fevrier febrero februari",
    "march mar marz maerz mars marzo maart",
    "april apr avril abril",
    "may mai mayo mei",
    "june jun juni juin junio",
    "july jul juli juillet julio",
    "august aug aout agosto augustus",
    "september sep sept septembre septiembre",
    "october oct oktober octobre octubre okt",
    "november nov novembre noviembre",
    "december dec dezember decembre diciembre dez",
), start=1):
    for _n in _names.split():
        _MONTHS[_n] = _i
_MONTH = r"(?P<month>" + "|".join(sorted(_MONTHS, key=len, reverse=True)) + r")\b\.?"

_WEEKDAYS: dict[str, int] = {}
for _i, _names in enumerate((
    "monday montag lundi lunes maandag",
    "tuesday dienstag mardi martes dinsdag",
    "wednesday mittwoch mercredi miercoles woensdag",
    "thursday donnerstag jeudi jueves donderdag",
    "friday freitag vendredi viernes vrijdag",
    "saturday samstag samedi sabado zaterdag",
    "sunday sonntag dimanche domingo zondag",
)):
    for _n in _names.split():
        _WEEKDAYS[_n] = _i
_WEEKDAY = r"(?P<weekday>" + "|".join(sorted(_WEEKDAYS, key=len, reverse=True)) + r")\b"

_NUMBERS = {
    "a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6,
    "a couple of": 2, "a few": 3, "few": 3, "couple of": 2,
    "ein": 1, "eine": 1, "einem": 1, "einer": 1, "zwei": 2, "drei": 3, "vier": 4, "funf": 5,
    "sechs": 6, "paar": 2, "ein paar": 2,
    "un": 1, "une": 1, "deux": 2, "trois": 3, "quatre": 4, "cinq": 5,
    "quelques": 3,
    "uno": 1, "una": 1, "dos": 2, "tres": 3, "cuatro": 4, "cinco": 5, "seis": 6,
    "unas": 3, "unos": 3, "un par de": 2,
    "een": 1, "twee": 2, "drie": 3, "vijf": 5, "zes": 6,
    "een paar": 2, "enkele": 3,
    "ten": 10, "zehn": 10, "dix": 10, "diez": 10, "tien": 10,
    "fifteen": 15, "funfzehn": 15, "quinze": 15, "quince": 15, "vijftien": 15,
}
_NUM = (r"(?P<n>\d{1,2}|" + "|".join(re.escape(k) for k in
                                     sorted(_NUMBERS, key=len, reverse=True)) + r")")
_UNITS = {
    "day": 1, "days": 1, "tag": 1, "tage": 1, "tagen": 1, "jour": 1, "jours": 1, "dia": 1,
    "dias": 1, "dag": 1, "dagen": 1,
    "week": 7, "weeks": 7, "woche": 7, "wochen": 7, "semaine": 7, "semaines": 7,
    "semana": 7, "semanas": 7, "weken": 7,
    "month": 30, "months": 30, "monat": 30, "monate": 30, "monaten": 30, "mois": 30,
    "mes": 30, "meses": 30, "maand": 30, "maanden": 30,
}
_UNIT = r"(?P<unit>" + "|".join(sorted(_UNITS, key=len, reverse=True)) + r")\b"


def _end_of_month(d: date) -> date:
    return d.replace(day=calendar.monthrange(d.year, d.month)[1])


def _month_after(today: date, month: int, day: int | None) -> date:
    """The next `month` (this year if it has not ended, else next year), at `day` or its end."""
    year = today.year if month >= today.month else today.year + 1
    last = calendar.monthrange(year, month)[1]
    return date(year, month, min(day, last) if day else last)


def _friday(d: date) -> date:
    return d + timedelta(days=(4 - d.weekday()) % 7)


# --- the rules: (pattern, what it means) --------------------------------------------------------

Rule = tuple[re.Pattern[str], Callable[[re.Match[str], date], date | None]]


def _part_of_month(m: re.Match[str], today: date) -> date:
    """"early/mid/end <month>" in five languages: the 10th, the 15th or the month's end."""
    month = _MONTHS[m.group("month")]
    part = m.group("part").split()[0]
    day = {"early": 10, "beginning": 10, "start": 10, "anfang": 10, "debut": 10,
           "principios": 10, "comienzos": 10, "inicios": 10, "begin": 10, "mid": 15,
           "middle": 15, "mitte": 15, "mi": 15, "mediados": 15, "medio": 15, "half": 15,
           "midden": 15}.get(part)
    return _month_after(today, month, day)


def _day_month(m: re.Match[str], today: date) -> date | None:
    day, month = int(m.group("day")), _MONTHS[m.group("month")]
    try:
        candidate = date(today.year, month, day)
    except ValueError:
        return None
    return candidate if candidate >= today else candidate.replace(year=today.year + 1)


def _day_of_month(m: re.Match[str], today: date) -> date | None:
    day = int(m.group("day"))
    if not 1 <= day <= 31:
        return None
    year, month = today.year, today.month
    if day < today.day:
        month += 1
        if month == 13:
            year, month = year + 1, 1
    return date(year, month, min(day, calendar.monthrange(year, month)[1]))


def _numeric(m: re.Match[str], today: date) -> date | None:
    # European day.month (de, fr, es, nl and most English writers outside the US)
    day, month = int(m.group("day")), int(m.group("mon"))
    if not (1 <= month <= 12 and 1 <= day <= 31):
        return None
    try:
        candidate = date(today.year, month, day)
    except ValueError:
        return None
    return candidate if candidate >= today else candidate.replace(year=today.year + 1)


def _weekday(m: re.Match[str], today: date) -> date:
    ahead = (_WEEKDAYS[m.group("weekday")] - today.weekday()) % 7 or 7
    if m.groupdict().get("week"):
        ahead += 7  # "Monday week": the Monday after next
    if m.groupdict().get("next") and ahead < 7 - today.weekday():
        ahead += 7  # "next Tuesday" said on a Monday: the one after tomorrow's week
    return today + timedelta(days=ahead)


def _in_n(m: re.Match[str], today: date) -> date | None:
    raw = m.group("n")
    n = int(raw) if raw.isdigit() else _NUMBERS.get(raw)
    if not n:
        return None
    days = n * _UNITS[m.group("unit")]
    return today + timedelta(days=days) if days <= 400 else None


def _season(m: re.Match[str], today: date) -> date:
    name = m.group(0)
    if re.search(r"\b(?:summer|sommer|sommerferien|l'ete|verano|zomer|zomervakantie)\b", name):
        target = date(today.year, 9, 1)
    elif re.search(r"spring|fruhling|fruhjahr|printemps|primavera|voorjaar|lente", name):
        target = date(today.year, 5, 1)
    elif re.search(r"autumn|fall|herbst|automne|otono|najaar|herfst", name):
        target = date(today.year, 11, 15)
    elif re.search(r"winter|hiver|invierno", name):
        target = date(today.year + (1 if today.month >= 3 else 0), 3, 1)
    else:  # christmas, the holidays, new year
        target = date(today.year + (1 if today.month >= 2 else 0), 1, 10)
    return target if target > today else target.replace(year=target.year + 1)


def _quarter(m: re.Match[str], today: date) -> date:
    """The last day of the quarter named by digit ("Q1") or word ("first quarter")."""
    word = {"first": 1, "second": 2, "third": 3, "fourth": 4}
    q = int(m.group("q")) if m.group("q") else word[m.group("qw")]
    month = q * 3
    year = today.year if month >= today.month else today.year + 1
    return _end_of_month(date(year, month, 1))


_NEXT = (r"(?:next|nachste|nachsten|nachster|kommende|kommenden|prochaine?|proxima|proximo|"
         r"volgende|komende)")
_RULES: list[Rule] = [
    (re.compile(r"\b(?:day after tomorrow|ubermorgen|apres-demain|apres demain|pasado manana|"
                r"overmorgen)\b"), lambda m, t: t + timedelta(days=2)),
    (re.compile(r"\b(?:fortnight|ubernachste woche|in zwei wochen|dans quinze jours|"
                r"over veertien dagen)\b"), lambda m, t: t + timedelta(days=14)
     if "ubernachste" not in m.group(0) else _friday(t) + timedelta(days=14)),
    (re.compile(r"\b(?:the )?(?:week of the|semana del|woche vom|semaine du|week van) "
                r"(?P<day>\d{1,2})(?:st|nd|rd|th|e|\.)?\b"),
     lambda m, t: (lambda d: _friday(d) if d else None)(_day_of_month(m, t))),
    (re.compile(r"\b(?:morgenochtend|morgenmiddag|morgenavond|morgen fruh|demain matin)\b"),
     lambda m, t: t + timedelta(days=1)),
    (re.compile(r"\b(?:tomorrow|demain|(?<!por la )(?<!de la )manana(?! por)|morgen(?! frueh)"
                r")\b"), lambda m, t: t + timedelta(days=1)),
    (re.compile(r"\b(?:end of (?:the |this )?week|(?:this|diese|cette|esta|deze) (?:week|woche|"
                r"semaine|semana)|ende der woche|fin de (?:la |cette )?semaine|finales? de "
                r"(?:la |esta )?semana|eind van de(?:ze)? week|later this week)\b"),
     lambda m, t: _friday(t)),
    (re.compile(rf"\b(?:{_NEXT} (?:week|woche|semaine|semana)|(?:week|semaine) prochaine|"
                r"semana que viene|in der kommenden woche|(?:la )?semaine d'apres)\b"),
     lambda m, t: _friday(t) + timedelta(days=7)),
    (re.compile(rf"\b(?:{_NEXT} (?:month|monat|maand|mes)|mois prochain|mes que viene|"
                r"(?:im )?nachsten monat)\b"),
     lambda m, t: _end_of_month(_end_of_month(t) + timedelta(days=1))),
    (re.compile(r"\b(?:end of (?:the |this )?month|month-end|ende (?:des |dieses )?monats|"
                r"monatsende|fin (?:du |de ce )?mois|fin de (?:este )?mes|finales de (?:este )?"
                r"mes|eind van de(?:ze)? maand|einde van de maand)\b"),
     lambda m, t: _end_of_month(t)),
    (re.compile(r"\b(?:end of (?:the |this )?year|year-end|jahresende|ende (?:des |dieses )?"
                r"jahres|fin (?:d'annee|de l'annee|de (?:este )?ano)|finales de ano|eind van "
                r"(?:het|dit) jaar|jaareinde)\b"),
     lambda m, t: date(t.year, 12, 31)),
    (re.compile(r"\b(?:(?:early |beginning of |start of )?next year|(?:anfang )?nachstes jahr|"
                r"(?:anfang )?nachsten jahres|(?:debut )?(?:de )?l'annee prochaine|(?:a principios "
                r"del? )?(?:ano que viene|proximo ano)|(?:begin )?volgend jaar)\b"),
     lambda m, t: date(t.year + 1, 1, 31)),
    (re.compile(r"\b(?:by|end of|in|until|before|bis|ende|fin|en|eind|im) (?:the |del? |des )?"
                r"(?:q(?P<q>[1-4])|(?P<qw>first|second|third|fourth) quarter)\b"),
     lambda m, t: _quarter(m, t)),
    (re.compile(r"\b(?:before christmas|vor weihnachten|avant noel|antes de navidad|voor "
                r"(?:de )?kerst)\b"), lambda m, t: date(t.year, 12, 24) if t < date(t.year, 12, 24)
     else date(t.year + 1, 12, 24)),
    (re.compile(r"\b(?:(?:after|over|past) (?:the )?(?:summer|christmas|(?:the )?holidays|new "
                r"year|spring|autumn|fall|winter)|in (?:the )?(?:spring|autumn|fall|summer|"
                r"new year)|nach (?:dem |den )?(?:sommer|weihnachten|feiertagen|neujahr|"
                r"fruhling|herbst|winter|sommerferien)|im (?:neuen jahr|fruhling|fruhjahr|herbst|"
                r"sommer)|(?:apres|a la rentree|debut) (?:l'ete|les vacances|noel|les fetes|"
                r"l'annee|l'hiver|l'automne)|a la rentree|au printemps|(?:despues|tras) (?:del? |"
                r"las )?(?:verano|navidad|fiestas|vacaciones|ano nuevo)|en (?:primavera|otono|el "
                r"ano nuevo)|na (?:de |het )?(?:zomer|kerst|feestdagen|nieuwjaar|vakantie|"
                r"zomervakantie)|in het (?:voorjaar|najaar|nieuwe jaar)|in de (?:lente|herfst|"
                r"zomer))\b"), _season),
    (re.compile(r"\b(?P<part>early|beginning of|start of|mid|middle of|end of|late|anfang|mitte|"
                r"ende|debut|mi|fin|principios de|comienzos de|inicios de|mediados de|finales "
                r"de|fin de|begin|half|midden|eind|eind van)[- ]" + _MONTH),
     _part_of_month),
    (re.compile(r"\b(?P<day>\d{1,2})(?:st|nd|rd|th|er|e|o|a|\.)?(?: de| of)? " + _MONTH),
     _day_month),
    (re.compile(r"\b" + _MONTH + r" (?:the )?(?P<day>\d{1,2})(?:st|nd|rd|th)?\b"), _day_month),
    (re.compile(r"\b(?:in|by|until|till|before|around|im|bis|vor|en|d'ici|avant|para|antes de|"
                r"hasta|tegen|voor|eind|rond|uiterlijk|ab) (?:de |el |der |het )?(?:mes de )?"
                + _MONTH), lambda m, t: _month_after(t, _MONTHS[m.group("month")], None)),
    (re.compile(r"\b(?:on|by|until|till|to|am|bis|zum|le|el|dia|op|tegen|au|al|tot) (?:the |de |"
                r"den |het )?(?:" + _WEEKDAY.replace("?P<weekday>", "?:") + r",? )?"
                r"(?P<day>\d{1,2})(?:st|nd|rd|th|\.|e|er|de)?(?= |$|[,.!?;:)])(?! ?(?:%|euro|eur|"
                r"k\b|people|mensen|leute|personnes|personas|h\b|uhr|pm|am|:))"), _day_of_month),
    (re.compile(r"\b(?P<day>\d{1,2})[./](?P<mon>\d{1,2})\.?(?:[./](?:20)?\d{2})?\b"), _numeric),
    (re.compile(rf"\b(?:(?P<next>{_NEXT}) |on |am |le |el |op |this |coming )?" + _WEEKDAY
                + r"(?P<week> week)?"),
     _weekday),
    (re.compile(r"\b(?:in|within|dans|d'ici|en|dentro de|binnen|over|nach|innerhalb von|"
                r"innerhalb|about|around|roughly|another|noch|etwa|sous|needs?|takes?|dauert) "
                r"(?:(?:the|den|les|the next|los "
                r"proximos|las proximas|de komende|die nachsten|les prochain(?:e)?s) )?" + _NUM
                + r" " + _UNIT), _in_n),
]

# Past references never set a recheck: "last Tuesday", "letzte Woche", "il y a deux semaines"
# (markers before), "two weeks ago", "la semaine dernière", "la semana pasada" (after).
_PAST_BEFORE = re.compile(r"\b(?:last|letzte[nmr]?|vorige[nm]?|afgelopen|il y a|hace)\s*$")
_PAST_AFTER = re.compile(r"^\s*(?:ago|her\b|derniere?|pasad[oa]|passee?)")
# Later today: the recheck's lower bound (two days) applies.
_TODAY = re.compile(r"\b(?:tonight|this (?:afternoon|evening)|later today|end of (?:the )?day|"
                    r"heute (?:abend|nachmittag)|ce soir|cet apres-midi|esta (?:tarde|noche)|"
                    r"vanavond|vanmiddag)\b")


def _found(norm: str, today: date) -> Iterator[date]:
    if _TODAY.search(norm):
        yield today
    for regex, meaning in _RULES:
        for m in regex.finditer(norm):
            if _PAST_BEFORE.search(norm[max(0, m.start() - 25):m.start()]) or _PAST_AFTER.match(
                    norm[m.end():m.end() + 12]):
                continue
            try:
                got = meaning(m, today)
            except (ValueError, KeyError, AttributeError, TypeError):
                continue
            if got is not None and got > today:
                yield got


def named_date(text: str, today: date) -> date | None:
    """The latest future date `text` names (see the module docstring), or None."""
    norm = normalize(text or "")[:2000]
    if not norm:
        return None
    found = list(_found(norm, today))
    return max(found) if found else None
