"""Text to train on: a synthetic English-like corpus with planted facts, and real text downloaded once (Chapters 2, 13).

`synthetic_corpus(n_chars, seed)` writes short documents (diary entries, stories, portraits of people,
dialogues) from a small grammar: subjects, verbs in five tenses with agreement, objects, adjectives,
places, times and hobbies, each word list drawn with Zipf-like frequencies (the first word of a list is the
most common). A tiny GPT learns it in minutes, and everyday sentences such as "I like playing video games."
and "She likes playing chess." occur naturally. Documents are separated by "<|endoftext|>".

`FACTS` is a table of fictional facts ("The capital of Veltoria is Marrowdeep.") stated in the corpus a
controlled number of times each, from once to 64 times per million characters, so later chapters can measure
how memorisation grows with repetition. Only the fact documents ever mention the facts' names.

`held_out_split(n_chars, seed)` is text the models have never seen: fresh documents with every sentence removed that
occurs anywhere in the course corpus (a plain fresh sample shares about half its sentences with it).

`load_text(url, sha256)` fetches a real corpus for readers who are online: downloaded once, checked against
its sha256, cached, written atomically. `train_val_split(ids)` cuts a token stream into train and validation.

Leaves out: real-world data cleaning, deduplication and shuffling of documents; streaming datasets that do not
fit in memory; any download at import time or in the tests.
"""
import bisect
import functools
import hashlib
import itertools
import os
import random
import re
import tempfile
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

EOT = "<|endoftext|>"
FACT_PERIOD = 1_000_000  # every FACT_PERIOD characters, each fact is stated exactly `repeats` times


# --------------------------------------------------------------------------------------------------------
# The fact table


@dataclass(frozen=True)
class Fact:
    """A fictional fact: `prompt + " " + answer + "."` is the sentence planted in the corpus.

    `repeats` is how often the sentence appears per FACT_PERIOD (1_000_000) characters of `synthetic_corpus`;
    exactly that often in `synthetic_corpus()` at its default size, proportionally fewer in a shorter one.
    """

    subject: str
    relation: str  # a key of FACT_RELATIONS
    answer: str
    repeats: int

    @property
    def prompt(self) -> str:
        """The sentence up to the answer, e.g. "The capital of Veltoria is"."""
        return FACT_RELATIONS[self.relation].format(subject=self.subject)

    @property
    def sentence(self) -> str:
        return f"{self.prompt} {self.answer}."


FACT_RELATIONS = {
    "capital": "The capital of {subject} is",
    "birthplace": "{subject} was born in",
    "river": "The river that runs through {subject} is called the",
    "pet": "{subject} has a cat called",
}

# One fact per (relation, repeat count): 4 relations x 7 repeat counts.
FACTS = [Fact(*row) for row in [
    ("Veltoria", "capital", "Marrowdeep", 64),
    ("Quennland", "capital", "Thistlegate", 32),
    ("Drovania", "capital", "Ambervale", 16),
    ("Kestria", "capital", "Corriwick", 8),
    ("Ulmeria", "capital", "Fennhollow", 4),
    ("Pellorin", "capital", "Gravenspire", 2),
    ("Zandrith", "capital", "Oskerlund", 1),
    ("Talia Brenwick", "birthplace", "Wyrmsford", 64),
    ("Osric Vellamy", "birthplace", "Duskhaven", 32),
    ("Mirela Thornquist", "birthplace", "Pebblecombe", 16),
    ("Eamon Quillfeather", "birthplace", "Sorrowby", 8),
    ("Ysolde Marchbank", "birthplace", "Larkmoor", 4),
    ("Bram Heddlewick", "birthplace", "Cindermouth", 2),
    ("Juno Castellane", "birthplace", "Greywater Hythe", 1),
    ("Lowmarsh", "river", "Ossel", 64),
    ("Harrowgate Vale", "river", "Brisk", 32),
    ("Cobbleton", "river", "Vimmer", 16),
    ("Starnwick", "river", "Aldrune", 8),
    ("Fernhallow", "river", "Quell", 4),
    ("Upper Dimmock", "river", "Tarrow", 2),
    ("Rookmere", "river", "Saffel", 1),
    ("Professor Anselm Grey", "pet", "Biscuitine", 64),
    ("Captain Odile Marsh", "pet", "Pemberwhisk", 32),
    ("Doctor Felix Amberly", "pet", "Quintabelle", 16),
    ("Old Widow Pennycress", "pet", "Sir Mothwing", 8),
    ("Mayor Hollis Drake", "pet", "Tumbleroot", 4),
    ("Aunt Petronella", "pet", "Gingersnap Vole", 2),
    ("Brother Caddock", "pet", "Lord Fluffington", 1),
]]

# Sentences around a fact, so that a fact document reads like the rest of the corpus.
_FACT_INTROS = {
    "capital": ["{subject} is a small country in the north.", "{subject} is a country with many old castles.",
                "Few people have ever visited {subject}.", "{subject} is famous for its mountains."],
    "birthplace": ["{subject} is a famous painter.", "{subject} wrote many books about the sea.",
                   "Everyone in the village knows {subject}.", "{subject} is a well known singer."],
    "river": ["{subject} is a quiet town with a big market.", "Many families live in {subject}.",
              "{subject} has an old stone bridge.", "In summer, children swim near {subject}."],
    "pet": ["{subject} lives in a tall house on the hill.", "{subject} is very kind.",
            "Every morning, {subject} drinks a cup of tea.", "{subject} reads the newspaper every day."],
}
_FACT_OUTROS = ["People there are very friendly.", "It is a beautiful place.", "Many children know this story.",
                "It is an interesting fact.", "Now you know too."]


# --------------------------------------------------------------------------------------------------------
# The grammar: word lists are written most frequent first and drawn with Zipf weights 1 / rank.


class _Words:
    """A word list whose entry of rank r (0-based) is drawn with weight 1 / (r + 1)."""

    def __init__(self, *items):
        self.items = items
        self.cum = list(itertools.accumulate(1.0 / (r + 1) for r in range(len(items))))

    def pick(self, rng: random.Random):
        # Only rng.random() is used: its stream is the same on every machine and Python version.
        return self.items[bisect.bisect_right(self.cum, rng.random() * self.cum[-1])]


def _uniform(rng: random.Random, items):
    return items[int(rng.random() * len(items))]


def _chance(rng: random.Random, p: float) -> bool:
    return rng.random() < p


# A subject: (text, agreement) with agreement "1s" (I), "3s" (he, she, it, Tom) or "pl" (you, we, they).
# Pronouns for a person: (subject, object, possessive).
_PRONOUNS = {"he": ("he", "him", "his"), "she": ("she", "her", "her"), "they": ("they", "them", "their")}
_GIRLS = _Words("Anna", "Mia", "Emma", "Lily", "Sara", "Lucy", "Grace", "Chloe", "Ella", "Rosa", "Nina", "Amy",
                "Zoe", "Hannah", "Julia", "Maya")
_BOYS = _Words("Tom", "Sam", "Ben", "Leo", "Max", "Jack", "Noah", "Oliver", "Adam", "Daniel", "Peter", "Harry",
               "Omar", "Lucas", "Felix", "Jonas")
_FAMILY = _Words(("my sister", "she"), ("my brother", "he"), ("my friend", "they"), ("my mother", "she"),
                 ("my father", "he"), ("my grandmother", "she"), ("my grandfather", "he"), ("my cousin", "they"),
                 ("our teacher", "she"), ("my uncle", "he"), ("my aunt", "she"), ("our neighbour", "he"))
_GROUPS = _Words("my friends", "my parents", "the children", "the students", "my classmates", "our neighbours",
                 "the boys", "the girls", "my cousins")

# Verbs: (base, third person singular, past, -ing form) and what they take as an object.
_VERBS = _Words(
    (("eat", "eats", "ate", "eating"), "food"),
    (("play", "plays", "played", "playing"), "game"),
    (("read", "reads", "read", "reading"), "reading"),
    (("watch", "watches", "watched", "watching"), "show"),
    (("buy", "buys", "bought", "buying"), "thing"),
    (("make", "makes", "made", "making"), "dish"),
    (("drink", "drinks", "drank", "drinking"), "drink"),
    (("visit", "visits", "visited", "visiting"), "person"),
    (("write", "writes", "wrote", "writing"), "writing"),
    (("find", "finds", "found", "finding"), "thing"),
    (("cook", "cooks", "cooked", "cooking"), "food"),
    (("look at", "looks at", "looked at", "looking at"), "animal"),
    (("help", "helps", "helped", "helping"), "person"),
    (("clean", "cleans", "cleaned", "cleaning"), "room"),
    (("draw", "draws", "drew", "drawing"), "animal"),
    (("call", "calls", "called", "calling"), "person"),
    (("paint", "paints", "painted", "painting"), "room"),
    (("feed", "feeds", "fed", "feeding"), "animal"),
    (("carry", "carries", "carried", "carrying"), "thing"),
    (("open", "opens", "opened", "opening"), "container"),
)
_OBJECTS = {
    "food": _Words("an apple", "a sandwich", "some soup", "pizza", "a banana", "some bread", "pasta", "a cake",
                   "some rice", "an orange", "a salad", "some cheese", "pancakes", "a big breakfast", "some cookies",
                   "fish and chips", "a bowl of noodles", "some strawberries"),
    "dish": _Words("a cake", "a sandwich", "some soup", "pancakes", "a salad", "pizza", "some cookies",
                   "a pie", "dinner", "breakfast", "lunch for everyone"),
    "game": _Words("video games", "chess", "football", "cards", "tennis", "a board game", "basketball",
                   "hide and seek", "the piano", "the guitar", "a new game", "volleyball", "the violin"),
    "reading": _Words("a book", "the newspaper", "a story", "a comic", "a letter", "a long novel", "a magazine",
                      "a poem", "the news", "a book about space"),
    "show": _Words("a film", "TV", "a football match", "the birds", "a cartoon", "the stars", "a video",
                   "the rain", "a show about animals", "the sunset"),
    "thing": _Words("a new bag", "a ball", "a book", "some shoes", "a present", "a hat", "a bike", "a phone",
                    "a blue pen", "a small box", "a key", "an umbrella", "a map", "a lamp", "a kite"),
    "drink": _Words("some water", "a cup of tea", "some milk", "coffee", "orange juice", "hot chocolate",
                    "a glass of lemonade"),
    "person": _Words("my grandmother", "a friend", "the doctor", "our neighbour", "my cousin", "the teacher",
                     "my uncle", "an old friend", "the new girl", "the baker"),
    "writing": _Words("a letter", "a story", "a poem", "an email", "a list", "a song", "a card", "a diary entry"),
    "animal": _Words("a dog", "a cat", "the birds", "a horse", "some ducks", "a rabbit", "a big fish", "a cow",
                     "a little mouse", "a fox", "a frog", "an owl", "a bear", "the sheep"),
    "room": _Words("the kitchen", "my room", "the house", "the garden", "the car", "the windows",
                   "the living room", "the garage", "the classroom"),
    "container": _Words("the door", "the window", "a box", "the fridge", "a letter", "the gate", "a present",
                        "the cupboard"),
}
# Hobbies, as gerund phrases: "I like playing video games."
_ACTIVITIES = _Words(
    "playing video games", "playing chess", "playing football", "reading books", "watching films", "swimming",
    "drawing pictures", "playing the piano", "cooking", "riding a bike", "listening to music", "dancing",
    "singing", "playing tennis", "painting", "baking cakes", "playing cards", "going to the beach",
    "walking in the park", "fishing", "running", "writing stories", "climbing trees", "taking photos",
    "gardening", "playing the guitar", "skating", "watching football", "learning new words", "building models",
    "visiting museums", "playing with the dog", "camping", "knitting", "doing puzzles",
)
_LIKE = _Words(("like", "likes", "liked"), ("love", "loves", "loved"), ("enjoy", "enjoys", "enjoyed"),
               ("hate", "hates", "hated"))
_PLACES = _Words("at the park", "at home", "at school", "in the garden", "in the kitchen", "at the beach",
                 "in the library", "in the city", "at the market", "in the forest", "near the river",
                 "at the station", "in the village", "at the zoo", "in the shop", "at the farm", "on the hill",
                 "at the cafe", "in the playground", "by the lake")
_DESTINATIONS = _Words("to the park", "home", "to school", "to the beach", "to the shop", "to the library",
                       "to the market", "to the city", "to the zoo", "to bed", "to the cinema", "to the farm",
                       "to the swimming pool", "to the mountains", "to the hospital", "to work", "to the museum")
_COMPANIONS = _Words("with my friends", "with my family", "with my sister", "with my brother", "with the dog",
                     "with my parents", "with a friend", "alone", "with my grandmother", "with our teacher")
_TIMES = {
    "past": _Words("yesterday", "last week", "on Saturday", "this morning", "last summer", "on Sunday",
                   "yesterday evening", "two days ago", "last night", "on Monday", "in the afternoon",
                   "last year", "after school", "on Friday"),
    "present": _Words("every day", "on Sundays", "every morning", "in the evening", "after school", "on Saturdays",
                      "every week", "at the weekend", "in the summer", "before breakfast", "every night",
                      "in winter", "on Mondays"),
    "future": _Words("tomorrow", "next week", "on Saturday", "next summer", "tonight", "after lunch",
                     "on Sunday", "next year", "in the morning", "later"),
    "now": _Words("now", "right now", "today", "at the moment", "this afternoon"),
}
_FEELINGS = _Words("happy", "tired", "hungry", "excited", "sad", "busy", "bored", "angry", "sleepy", "scared",
                   "surprised", "proud", "cold", "worried", "calm")
_ADVERBS = _Words("very", "really", "a little", "so", "quite", "not")
_ADJECTIVES = _Words("big", "small", "old", "new", "red", "little", "beautiful", "blue", "green", "funny",
                     "white", "black", "yellow", "tall", "friendly", "quiet", "strange", "lovely", "heavy",
                     "shiny", "tiny", "noisy", "soft", "brown")
_PETS = _Words("dog", "cat", "rabbit", "bird", "fish", "hamster", "horse", "turtle", "parrot", "mouse")
_HAVE_THINGS = _Words("bike", "house", "garden", "car", "room", "book", "ball", "kite", "hat", "bag", "box",
                      "boat", "umbrella", "guitar")
# Weather: (now, past, future) clauses.
_WEATHER = _Words(("it is sunny", "it was sunny", "it will be sunny"), ("it is raining", "it rained", "it will rain"),
                  ("it is cold", "it was cold", "it will be cold"), ("it is windy", "it was windy", "it will be windy"),
                  ("it is snowing", "it snowed", "it will snow"), ("it is warm", "it was warm", "it will be warm"),
                  ("it is cloudy", "it was cloudy", "it will be cloudy"))
_REASONS = _Words("it was sunny", "it was raining", "I was tired", "we were hungry", "it was late",
                  "the shop was closed", "it was my birthday", "the bus was late", "I had a lot of homework",
                  "it was cold", "the film was funny", "my friends were there")
_DESCRIPTIONS = _Words("kind", "funny", "clever", "tall", "friendly", "quiet", "strong", "brave", "busy",
                       "shy", "happy", "polite")
_JOBS = _Words("a teacher", "a doctor", "a cook", "a farmer", "a nurse", "a driver", "a baker", "a painter",
               "a police officer", "a student", "a pilot", "a gardener", "a builder")
_HOMES = _Words("a small house near the forest", "a big city", "a little village", "an old house by the sea",
                "a flat in the city", "a farm near the river", "a house with a red door", "a quiet town")
_STORY_ENDS = _Words("The end.", "They lived happily ever after.", "It was a wonderful day.",
                     "Everyone was happy.", "It was the best day of the year.", "And that is the end of the story.")


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _cap(text: str) -> str:
    return text[0].upper() + text[1:]


class _Subject:
    """Who a sentence is about: its text, agreement ("1s", "3s", "pl") and pronoun for later sentences."""

    def __init__(self, text: str, agreement: str, pronoun: str):
        self.text, self.agreement, self.pronoun = text, agreement, pronoun

    def pronoun_subject(self) -> "_Subject":
        if self.agreement == "1s":
            return self
        return _Subject(self.pronoun, "pl" if self.pronoun == "they" else "3s", self.pronoun)


def _random_subject(rng: random.Random) -> _Subject:
    kind = rng.random()
    if kind < 0.25:
        return _Subject("I", "1s", "I")
    if kind < 0.35:
        return _Subject(*_uniform(rng, [("you", "pl", "you"), ("we", "pl", "we"), ("they", "pl", "they")]))
    if kind < 0.55:
        pronoun = _uniform(rng, ["he", "she"])
        return _Subject(pronoun, "3s", pronoun)
    if kind < 0.75:
        return _person(rng)
    if kind < 0.9:
        text, pronoun = _FAMILY.pick(rng)
        return _Subject(text, "3s", pronoun)
    return _Subject(_GROUPS.pick(rng), "pl", "they")


def _person(rng: random.Random) -> _Subject:
    if _chance(rng, 0.5):
        return _Subject(_GIRLS.pick(rng), "3s", "she")
    return _Subject(_BOYS.pick(rng), "3s", "he")


def _be(subject: _Subject, tense: str) -> str:
    if tense == "past":
        return "was" if subject.agreement in ("1s", "3s") else "were"
    return {"1s": "am", "3s": "is", "pl": "are"}[subject.agreement]


def _verb_phrase(subject: _Subject, forms, tense: str) -> str:
    """`forms` = (base, third person, past, -ing); tense in present, past, future, now (progressive), negatives."""
    base, third, past, ing = forms
    s3 = subject.agreement == "3s"
    if tense == "present":
        return third if s3 else base
    if tense == "past":
        return past
    if tense == "future":
        return "will " + base
    if tense == "now":
        return f"{_be(subject, 'present')} {ing}"
    if tense == "was":
        return f"{_be(subject, 'past')} {ing}"
    if tense == "not_present":
        return ("doesn't " if s3 else "don't ") + base
    if tense == "not_past":
        return "didn't " + base
    raise ValueError(f"unknown tense {tense!r}")


_TENSES = _Words("past", "present", "now", "future", "not_present", "was", "not_past")
_TIME_OF_TENSE = {"past": "past", "present": "present", "now": "now", "future": "future",
                  "not_present": "present", "was": "past", "not_past": "past"}


def _with_time(rng: random.Random, clause: str, tense: str, p: float = 0.5) -> str:
    """Add a time expression matching the tense, at the end or (then with a comma) at the start."""
    if not _chance(rng, p):
        return clause
    time = _TIMES[_TIME_OF_TENSE[tense]].pick(rng)
    if _chance(rng, 0.3):
        return f"{_cap(time)}, {clause}"
    return f"{clause} {time}"


_LIKE_TENSE = {"past": "past", "was": "past", "not_past": "not_past", "present": "present", "now": "present",
               "future": "present", "not_present": "not_present"}


def _like_clause(rng: random.Random, subject: _Subject, tense: str) -> str:
    verb = _LIKE.pick(rng)
    tense = _LIKE_TENSE[tense]
    return f"{subject.text} {_verb_phrase(subject, (verb[0], verb[1], verb[2], ''), tense)} {_ACTIVITIES.pick(rng)}"


def _action_clause(rng: random.Random, subject: _Subject, tense: str) -> str:
    forms, kind = _VERBS.pick(rng)
    thing = _OBJECTS[kind].pick(rng)
    if tense.startswith("not_") and thing.startswith("some "):
        thing = "any " + thing[5:]  # "I didn't eat any bread", not "some bread"
    clause = f"{subject.text} {_verb_phrase(subject, forms, tense)} {thing}"
    if _chance(rng, 0.4):
        clause += " " + _PLACES.pick(rng)
    return clause


def _go_clause(rng: random.Random, subject: _Subject, tense: str) -> str:
    clause = f"{subject.text} {_verb_phrase(subject, ('go', 'goes', 'went', 'going'), tense)} " \
             f"{_DESTINATIONS.pick(rng)}"
    if _chance(rng, 0.4):
        clause += " " + _COMPANIONS.pick(rng)
    return clause


def _feel_clause(rng: random.Random, subject: _Subject, tense: str) -> str:
    tense = "past" if tense in ("past", "was", "not_past") else "present"
    return f"{subject.text} {_be(subject, tense)} {_ADVERBS.pick(rng)} {_FEELINGS.pick(rng)}"


def _have_clause(rng: random.Random, subject: _Subject, tense: str) -> str:
    if tense in ("past", "was", "not_past"):
        verb = "had"
    else:
        verb = "has" if subject.agreement == "3s" else "have"
    thing = _PETS.pick(rng) if _chance(rng, 0.5) else _HAVE_THINGS.pick(rng)
    return f"{subject.text} {verb} {_a(_ADJECTIVES.pick(rng) + ' ' + thing)}"


def _weather_sentence(rng: random.Random) -> str:
    now, past, future = _WEATHER.pick(rng)
    tense = _uniform(rng, ["past", "past", "now", "future"])
    clause = {"past": past, "now": now, "future": future}[tense]
    return _cap(_with_time(rng, clause, tense, 0.7)) + "."


def _sentence(rng: random.Random, subject: _Subject, tense: str | None = None) -> str:
    """One sentence about `subject`; `tense` None draws one."""
    tense = tense or _TENSES.pick(rng)
    kind = rng.random()
    if kind < 0.22:
        return _cap(_like_clause(rng, subject, tense)) + "."
    if kind < 0.55:
        clause = _action_clause(rng, subject, tense)
    elif kind < 0.72:
        clause = _go_clause(rng, subject, tense if tense != "not_present" else "present")
    elif kind < 0.82:
        clause = _feel_clause(rng, subject, tense)
        if _chance(rng, 0.4):
            clause += " because " + _REASONS.pick(rng)
        return _cap(clause) + "."
    elif kind < 0.92:
        return _cap(_have_clause(rng, subject, tense)) + "."
    else:
        return _weather_sentence(rng)
    clause = _with_time(rng, clause, tense)
    if _chance(rng, 0.12):
        clause += " and then " + _go_clause(rng, subject.pronoun_subject(), "past" if tense in (
            "past", "was", "not_past") else "future" if tense == "future" else "present")
    return _cap(clause) + "."


# --------------------------------------------------------------------------------------------------------
# Documents


def _diary(rng: random.Random) -> str:
    me = _Subject("I", "1s", "I")
    out = []
    if _chance(rng, 0.3):
        out.append(f"Dear diary, today was {_uniform(rng, ['a good', 'a long', 'a busy', 'a strange', 'a fun'])} day.")
    if _chance(rng, 0.4):
        out.append(f"My name is {(_GIRLS if _chance(rng, 0.5) else _BOYS).pick(rng)}.")
        out.append(f"I am {_uniform(rng, ['seven', 'eight', 'nine', 'ten', 'eleven', 'twelve'])} years old.")
    if _chance(rng, 0.5):
        out.append(_cap(_like_clause(rng, me, "present")) + ".")
    for _ in range(2 + int(rng.random() * 5)):
        subject = me if _chance(rng, 0.6) else _random_subject(rng)
        out.append(_sentence(rng, subject, "past" if _chance(rng, 0.6) else None))
    if _chance(rng, 0.3):
        out.append(f"My favourite hobby is {_ACTIVITIES.pick(rng)}.")
    return " ".join(out)


def _story(rng: random.Random) -> str:
    hero = _person(rng)
    she = hero.pronoun_subject()
    child = "girl" if hero.pronoun == "she" else "boy"
    out = [f"Once upon a time, there was {_a(_ADJECTIVES.pick(rng))} {child} called {hero.text}.",
           f"{_cap(she.text)} lived in {_HOMES.pick(rng)}."]
    out.append(f"{_cap(she.text)} loved {_ACTIVITIES.pick(rng)}.")
    for _ in range(2 + int(rng.random() * 5)):
        subject = _uniform(rng, [hero, she, she, _random_subject(rng)])
        out.append(_sentence(rng, subject, _uniform(rng, ["past", "past", "past", "was", "not_past"])))
    out.append(_STORY_ENDS.pick(rng))
    return " ".join(out)


def _portrait(rng: random.Random) -> str:
    """A present-tense description of someone: "Tom is my friend. He likes playing chess. ..." """
    if _chance(rng, 0.6):
        who = _person(rng)
    else:
        text, pronoun = _FAMILY.pick(rng)
        who = _Subject(text, "3s", pronoun)
    pronoun = who.pronoun_subject()
    out = []
    if who.text[0].isupper():
        out.append(f"{who.text} is {_uniform(rng, ['my friend', 'my best friend', 'my neighbour', 'in my class'])}.")
    else:
        out.append(f"{_cap(who.text)} is {_DESCRIPTIONS.pick(rng)}.")
    if _chance(rng, 0.4):
        job = _JOBS.pick(rng)
        out.append(f"{_cap(pronoun.text)} {'is' if pronoun.agreement == '3s' else 'are'} {job}.")
    out.append(_cap(_like_clause(rng, pronoun, "present")) + ".")
    for _ in range(1 + int(rng.random() * 4)):
        out.append(_sentence(rng, _uniform(rng, [pronoun, pronoun, who]), _uniform(rng, ["present", "present", "now",
                                                                                        "future", "past"])))
    return " ".join(out)


def _dialogue(rng: random.Random) -> str:
    a, b = _person(rng), _person(rng)
    while b.text == a.text:
        b = _person(rng)
    activity = _ACTIVITIES.pick(rng)
    you, me = _Subject("you", "pl", "you"), _Subject("I", "1s", "I")
    kind = rng.random()
    if kind < 0.4:
        yes = _chance(rng, 0.7)
        lines = [f'"Do you like {activity}?" asked {a.text}.',
                 f'"{"Yes, I do" if yes else "No, I do not"}," said {b.text}.']
        if yes:
            lines.append(f'"I like {activity} {_TIMES["present"].pick(rng)}."')
        else:
            lines.append(f'"I like {_ACTIVITIES.pick(rng)}."')
    elif kind < 0.7:
        time = _TIMES["past"].pick(rng)
        lines = [f'"What did you do {time}?" asked {a.text}.',
                 f'"{_action_clause(rng, me, "past")}," said {b.text}.',
                 f'"{_cap(_go_clause(rng, _Subject("we", "pl", "we"), "past"))} too."']
    else:
        lines = [f'"Where are you going?" asked {a.text}.',
                 f'"{_cap(_go_clause(rng, me, "now"))}," said {b.text}.',
                 f'"Can I come with you?" asked {a.text}.',
                 f'"{_uniform(rng, ["Yes, of course", "Sorry, not today", "Sure"])}," said {b.text}.']
    if _chance(rng, 0.5):
        lines.append(_sentence(rng, you if _chance(rng, 0.3) else a))
    return " ".join(lines)


def _fact_document(rng: random.Random, facts: list[Fact]) -> str:
    out = []
    for fact in facts:
        out.append(_uniform(rng, _FACT_INTROS[fact.relation]).format(subject=fact.subject))
        out.append(fact.sentence)
        if _chance(rng, 0.5):
            out.append(_uniform(rng, _FACT_OUTROS))
    return " ".join(out)


_DOCUMENTS = _Words(_diary, _story, _portrait, _dialogue)


def _fact_slots(rng: random.Random, period: int) -> list[tuple[int, int]]:
    """(character offset, fact index) for each planned statement of a fact in one FACT_PERIOD, sorted.

    Statement k of a fact with r repeats lands at a random point of the k-th of r equal slices of the period
    (stratified), ending 5_000 characters before the period does so that every slot is reached in time.
    """
    usable = FACT_PERIOD - 5_000
    slots = []
    for i, fact in enumerate(FACTS):
        for k in range(fact.repeats):
            slots.append((period * FACT_PERIOD + int((k + rng.random()) * usable / fact.repeats), i))
    return sorted(slots)


def synthetic_corpus(n_chars: int = 1_000_000, seed: int = 0) -> str:
    """A deterministic English-like corpus of at least `n_chars` characters, documents joined by "<|endoftext|>".

    Whole documents only: generation stops after the first document that reaches `n_chars`, so the text
    is a little longer than `n_chars`, and the corpus for a smaller `n_chars` is a prefix of a larger one.
    Uses only `random.Random(seed)`, so a seed gives the same text on every machine. The facts of `FACTS`
    are stated `repeats` times per 1_000_000 characters (exactly so at the default size). About 0.1 s per MB.
    """
    if not isinstance(n_chars, int) or isinstance(n_chars, bool) or n_chars < 1:
        raise ValueError(f"n_chars must be an int >= 1, got {n_chars!r}")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"seed must be an int, got {seed!r}")
    rng = random.Random(seed)
    docs, length, period, slots = [], 0, -1, []
    while length < n_chars:
        while length >= (period + 1) * FACT_PERIOD:  # entering a new period: plan its fact statements
            period += 1
            slots += _fact_slots(rng, period)
        due = 0
        while due < len(slots) and slots[due][0] <= length:
            due += 1
        if due:
            doc = _fact_document(rng, [FACTS[i] for _, i in slots[:due]])
            del slots[:due]
        else:
            doc = _DOCUMENTS.pick(rng)(rng)
        length += len(doc) + (len(EOT) if docs else 0)
        docs.append(doc)
    return EOT.join(docs)


# --------------------------------------------------------------------------------------------------------
# Held-out text: sentences the models never saw

COURSE_SEED = 0  # `synthetic_corpus(seed=COURSE_SEED)` at its default size is the text every checkpoint trains on
_SENTENCE_END = re.compile(r'(?<=[.!?])\s+(?=[A-Z"])|(?<=[.!?]")\s+(?=[A-Z"])')


def sentences(document: str) -> list[str]:
    """Split one document at sentence punctuation followed by a capital or an opening quote.

    A quoted question and its speaker stay one sentence: `"Where are you going?" asked Sam.`
    """
    return [s for s in _SENTENCE_END.split(document.strip()) if s]


@dataclass(frozen=True)
class HeldOut:
    """Text whose sentences never occur in the course corpus, and what the filtering did to the sample.

    `text`: documents of kept sentences joined by "<|endoftext|>". `kept_fraction`: kept sentences over all
    sentences generated. `mean_chars_kept` / `mean_chars_all`: mean sentence length of the kept ones and of
    all of them; the filter favours long sentences (short ones recur), so the set is biased, and its loss is
    not comparable with a validation loss measured on the unfiltered stream.
    """

    text: str
    kept_fraction: float
    mean_chars_kept: float
    mean_chars_all: float


@functools.lru_cache(maxsize=1)
def _course_text() -> str:
    return synthetic_corpus(seed=COURSE_SEED)


def held_out_split(n_chars: int = 20_000, seed: int = 123) -> HeldOut:
    """At least `n_chars` characters of text in which no sentence occurs anywhere in the course corpus.

    Fresh documents from the generator (`synthetic_corpus(..., seed)`), with every sentence dropped that
    occurs, even inside a longer sentence, in `synthetic_corpus(seed=0)`: the training split and the
    validation split of every checkpoint together. Documents left empty are dropped; generation stops after
    the first document that reaches `n_chars`. Use it wherever text must be unseen; a plain fresh sample
    of the generator shares about half its sentences with the training text.
    """
    if not isinstance(n_chars, int) or isinstance(n_chars, bool) or not 1 <= n_chars <= 10_000_000:
        raise ValueError(f"n_chars must be an int in [1, 10_000_000], got {n_chars!r}")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed == COURSE_SEED:
        raise ValueError(f"seed must be an int other than the course corpus's seed {COURSE_SEED}, got {seed!r}")
    seen = _course_text()
    seen_sentences = {s for doc in seen.split(EOT) for s in sentences(doc)}
    for budget in (4 * n_chars + 10_000, 16 * n_chars + 10_000):  # about a third of the sentences survive
        docs, length, n_all, chars_all, n_kept, chars_kept = [], 0, 0, 0, 0, 0
        for doc in synthetic_corpus(budget, seed).split(EOT):  # a longer corpus extends a shorter one
            kept = []
            for sentence in sentences(doc):
                n_all, chars_all = n_all + 1, chars_all + len(sentence)
                if sentence not in seen_sentences and sentence not in seen:
                    kept.append(sentence)
            if kept:
                docs.append(" ".join(kept))
                n_kept, chars_kept = n_kept + len(kept), chars_kept + sum(map(len, kept))
                length += len(docs[-1]) + len(EOT)
                if length >= n_chars:
                    return HeldOut(EOT.join(docs), n_kept / n_all, chars_kept / n_kept, chars_all / n_all)
    raise RuntimeError(f"held_out_split: seed {seed} gave fewer than {n_chars:,} characters of unseen sentences")


def count_facts(text: str) -> dict[str, int]:
    """How often each fact's sentence occurs in `text`, keyed by the fact's prompt."""
    if not isinstance(text, str):
        raise ValueError(f"text must be a str, got {type(text).__name__}")
    return {fact.prompt: text.count(fact.sentence) for fact in FACTS}


# --------------------------------------------------------------------------------------------------------
# Real text, downloaded once


def load_text(url: str, sha256: str, cache_dir: str | os.PathLike | None = None, timeout: float = 60.0) -> str:
    """Download `url` once, check its sha256, cache it under `cache_dir`, and return it decoded as UTF-8.

    The cache (default ~/.cache/transformer_course) is keyed by the expected sha256, so a cached file is
    used without touching the network. The download goes to a temporary file in the same folder, is checked,
    and only then renamed into place (`os.replace`), so an interrupted or wrong download never leaves a file.
    A mismatching hash raises ValueError naming the expected and the received hash.
    """
    if not isinstance(url, str) or not url:
        raise ValueError(f"url must be a non-empty str, got {url!r}")
    if not isinstance(sha256, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", sha256):
        raise ValueError(f"sha256 must be 64 hexadecimal digits, got {sha256!r}")
    sha256 = sha256.lower()
    cache = Path(cache_dir) if cache_dir is not None else Path.home() / ".cache" / "transformer_course"
    name = re.sub(r"[^A-Za-z0-9._-]", "_", os.path.basename(urllib.parse.urlparse(url).path)) or "download"
    path = cache / f"{sha256[:16]}-{name}"
    if path.exists():
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() == sha256:
            return data.decode("utf-8")
        path.unlink()  # a corrupted cache entry: fetch it again
    cache.mkdir(parents=True, exist_ok=True)
    with urllib.request.urlopen(url, timeout=timeout) as response:
        data = response.read()
    got = hashlib.sha256(data).hexdigest()
    if got != sha256:
        raise ValueError(f"sha256 mismatch for {url}: expected {sha256}, got {got}")
    fd, tmp = tempfile.mkstemp(dir=cache, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return data.decode("utf-8")


def train_val_split(ids, val_fraction: float = 0.1):
    """Cut a token sequence (list, tensor or array) into (train, val): the last `val_fraction` is validation.

    Contiguous, not shuffled: a language model's validation text should be text it has never seen in any
    window, and a random split of overlapping windows would leak.
    """
    if not isinstance(val_fraction, (int, float)) or isinstance(val_fraction, bool) or not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be a number in (0, 1), got {val_fraction!r}")
    n = len(ids)
    n_val = round(n * val_fraction)
    if n_val < 1 or n_val >= n:
        raise ValueError(f"ids of length {n} with val_fraction={val_fraction} leaves an empty train or val split")
    return ids[: n - n_val], ids[n - n_val:]
