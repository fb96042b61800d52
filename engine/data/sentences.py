"""English sentences for the synthetic corpus, from templates over a curated vocabulary.

A generator of its own rather than a public word list: the vocabulary is chosen for its
phonetics (many p/b/m closures, rounded vowels as in "blue", "moon", "water", "sure", open
vowels as in "father", "hot", "cup"), and templates keep the sentences grammatical, so espeak
reads them with natural phrasing and intonation (statements, questions, exclamations,
commands, two clauses joined by a comma).

`sentence_pool(seed, n)` gives ``n`` distinct texts of one to a few sentences, the same for
the same seed; a text's id is its index in the pool, which is what the corpus splits by.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

NAMES = (
    "Bob", "Maria", "Paul", "Emma", "Pam", "Mike", "Ben", "Molly", "Peter", "Amber", "Tom",
    "Mabel", "Bruno", "Sam", "Ruby", "Hugo", "Lou", "June", "Woody", "Sue", "Noah", "Rose",
    "Owen", "Grace", "Max", "Bella", "Oscar", "Lucy", "Omar", "Priya", "Boris", "Amy", "Jim",
    "Kate", "Ravi", "Yuki", "Ava", "Liam", "Martha", "Brooke", "Walter", "Judy", "Pablo",
    "Fiona", "Vera", "Theo", "Shirley", "Marcus", "Bonnie", "Muhammad",
)  # fmt: skip

# (singular, plural)
NOUNS = (
    ("map", "maps"), ("lamp", "lamps"), ("book", "books"), ("boat", "boats"), ("moon", "moons"),
    ("spoon", "spoons"), ("bubble", "bubbles"), ("apple", "apples"), ("pumpkin", "pumpkins"),
    ("bottle", "bottles"), ("basket", "baskets"), ("blanket", "blankets"),
    ("mirror", "mirrors"), ("piano", "pianos"), ("pebble", "pebbles"), ("puppy", "puppies"),
    ("rabbit", "rabbits"), ("camera", "cameras"), ("umbrella", "umbrellas"),
    ("window", "windows"), ("market", "markets"), ("museum", "museums"), ("bridge", "bridges"),
    ("mountain", "mountains"), ("pool", "pools"), ("room", "rooms"), ("shoe", "shoes"),
    ("goose", "geese"), ("tooth", "teeth"), ("wolf", "wolves"), ("fish", "fish"),
    ("shop", "shops"), ("ship", "ships"), ("sheep", "sheep"), ("chair", "chairs"),
    ("jacket", "jackets"), ("garden", "gardens"), ("father", "fathers"), ("mother", "mothers"),
    ("baby", "babies"), ("doctor", "doctors"), ("farmer", "farmers"), ("teacher", "teachers"),
    ("pilot", "pilots"), ("plumber", "plumbers"), ("neighbour", "neighbours"),
    ("car", "cars"), ("bus", "buses"), ("cup", "cups"), ("hat", "hats"), ("cat", "cats"),
    ("dog", "dogs"), ("box", "boxes"), ("clock", "clocks"), ("rock", "rocks"), ("sock", "socks"),
    ("pot", "pots"), ("top", "tops"), ("pen", "pens"), ("bed", "beds"), ("bell", "bells"),
    ("key", "keys"), ("tree", "trees"), ("leaf", "leaves"), ("beach", "beaches"),
    ("storm", "storms"), ("horse", "horses"), ("door", "doors"), ("ball", "balls"),
    ("wall", "walls"), ("phone", "phones"), ("road", "roads"), ("boot", "boots"),
    ("juice", "juices"), ("soup", "soups"), ("flute", "flutes"), ("balloon", "balloons"),
    ("cookie", "cookies"), ("wheel", "wheels"), ("whale", "whales"), ("wave", "waves"),
    ("feather", "feathers"), ("violin", "violins"), ("photo", "photos"), ("voice", "voices"),
    ("village", "villages"), ("valley", "valleys"), ("river", "rivers"), ("island", "islands"),
    ("office", "offices"), ("problem", "problems"), ("member", "members"),
    ("number", "numbers"), ("picture", "pictures"), ("paper", "papers"), ("pepper", "peppers"),
    ("potato", "potatoes"), ("tomato", "tomatoes"), ("banana", "bananas"), ("mango", "mangoes"),
    ("lemon", "lemons"), ("melon", "melons"), ("cherry", "cherries"), ("candle", "candles"),
    ("bag", "bags"), ("cap", "caps"), ("cab", "cabs"), ("bean", "beans"), ("bowl", "bowls"),
    ("plum", "plums"), ("drum", "drums"), ("lamb", "lambs"), ("thumb", "thumbs"),
    ("thing", "things"), ("path", "paths"), ("mouth", "mouths"), ("brother", "brothers"),
)  # fmt: skip

ADJECTIVES = (
    "big", "small", "blue", "pink", "purple", "brown", "black", "bright", "smooth", "soft",
    "warm", "cool", "huge", "tiny", "old", "new", "broken", "empty", "heavy", "happy",
    "sleepy", "busy", "funny", "famous", "beautiful", "awful", "odd", "proper", "simple",
    "perfect", "muddy", "bumpy", "shiny", "woolly", "gloomy", "cheap", "expensive", "quiet",
    "loud", "polite", "rude", "strange", "wonderful", "popular", "bubbly", "moody", "calm",
    "hot", "wet", "thick", "thin", "sharp", "smart", "lovely", "rough", "sour", "sweet",
    "yellow", "orange", "golden",
)  # fmt: skip

# (base, past, -ing), transitive
VERBS = (
    ("bring", "brought", "bringing"), ("pick", "picked", "picking"), ("move", "moved", "moving"),
    ("push", "pushed", "pushing"), ("pull", "pulled", "pulling"), ("buy", "bought", "buying"),
    ("build", "built", "building"), ("bake", "baked", "baking"), ("paint", "painted", "painting"),
    ("wash", "washed", "washing"), ("watch", "watched", "watching"),
    ("wrap", "wrapped", "wrapping"), ("open", "opened", "opening"),
    ("close", "closed", "closing"), ("keep", "kept", "keeping"), ("find", "found", "finding"),
    ("lose", "lost", "losing"), ("borrow", "borrowed", "borrowing"), ("mop", "mopped", "mopping"),
    ("pump", "pumped", "pumping"), ("bump", "bumped", "bumping"), ("grab", "grabbed", "grabbing"),
    ("drop", "dropped", "dropping"), ("stop", "stopped", "stopping"), ("fix", "fixed", "fixing"),
    ("follow", "followed", "following"), ("visit", "visited", "visiting"),
    ("choose", "chose", "choosing"), ("show", "showed", "showing"),
    ("throw", "threw", "throwing"), ("chase", "chased", "chasing"), ("hug", "hugged", "hugging"),
    ("cook", "cooked", "cooking"), ("look for", "looked for", "looking for"),
    ("remember", "remembered", "remembering"), ("imagine", "imagined", "imagining"),
    ("polish", "polished", "polishing"), ("measure", "measured", "measuring"),
    ("mumble about", "mumbled about", "mumbling about"), ("put away", "put away", "putting away"),
    ("bring back", "brought back", "bringing back"), ("pay for", "paid for", "paying for"),
    ("sell", "sold", "selling"), ("feed", "fed", "feeding"), ("fold", "folded", "folding"),
    ("shake", "shook", "shaking"), ("check", "checked", "checking"), ("love", "loved", "loving"),
    ("hate", "hated", "hating"), ("need", "needed", "needing"), ("take", "took", "taking"),
    ("share", "shared", "sharing"), ("warm up", "warmed up", "warming up"),
)  # fmt: skip

ADVERBS = (
    "quickly", "slowly", "happily", "calmly", "badly", "politely", "boldly", "gently",
    "perfectly", "probably", "maybe", "really", "barely", "simply", "warmly", "smoothly",
    "proudly", "loudly", "quietly", "suddenly", "very carefully", "once more",
)  # fmt: skip

TIMES = (
    "this morning", "last summer", "on Monday", "before lunch", "by the moon", "every bump",
    "at midnight", "in the afternoon", "tomorrow", "yesterday", "two weeks ago", "in May",
    "before the big match", "after the movie", "in a moment", "on my birthday", "at noon",
    "by the pool", "near the museum", "in the room upstairs", "by the warm window",
)  # fmt: skip

PREPOSITIONS = ("by", "behind", "beneath", "above", "beside", "near", "past", "under", "to", "from")

NUMBERS = ("two", "three", "four", "five", "six", "seven", "nine", "ten", "a few", "many", "some")

OPENERS = (
    "Oh", "Well", "Look", "Maybe", "Wow", "Honestly", "Oh my", "Hmm", "Believe me", "You know",
    "By the way", "Bummer", "Oh boy", "Perhaps", "Boom", "Whoa",
)  # fmt: skip

CONNECTORS = ("but", "and", "so", "because", "while", "before", "although", "when")


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _noun_phrase(r: random.Random, plural: bool | None = None) -> str:
    sing, plur = r.choice(NOUNS)
    if plural is None:
        plural = r.random() < 0.3
    adj = r.choice(ADJECTIVES) + " " if r.random() < 0.55 else ""
    if plural:
        det = r.choice(("the", "some", "my", "our", "those", r.choice(NUMBERS)))
        return f"{det} {adj}{plur}"
    det = r.choice(("the", "a", "my", "your", "his", "her", "this", "that"))
    if det == "a":
        return _a(adj + sing)
    return f"{det} {adj}{sing}"


def _subject(r: random.Random) -> str:
    x = r.random()
    if x < 0.35:
        return r.choice(NAMES)
    if x < 0.6:
        return r.choice(("I", "We", "You", "They", "She", "He"))
    return _noun_phrase(r, plural=False).capitalize()


def _clause(r: random.Random) -> str:
    """A statement without final punctuation."""
    subj = _subject(r)
    base, past, ing = r.choice(VERBS)
    obj = _noun_phrase(r)
    kind = r.random()
    if kind < 0.4:
        verb = past
    elif kind < 0.6:
        be = "am" if subj == "I" else ("are" if subj in ("We", "You", "They") else "is")
        verb = f"{be} {ing}"
    elif kind < 0.8:
        verb = f"{r.choice(('will', 'might', 'must', 'should', 'could', 'would'))} {base}"
    else:
        verb = f"{r.choice(('never', 'probably', 'always', 'barely'))} {past}"
    tail = ""
    t = r.random()
    if t < 0.3:
        tail = " " + r.choice(TIMES)
    elif t < 0.5:
        tail = f" {r.choice(PREPOSITIONS)} {_noun_phrase(r)}"
    elif t < 0.65:
        tail = " " + r.choice(ADVERBS)
    return f"{subj} {verb} {obj}{tail}"


def _lower_first(clause: str) -> str:
    first = clause.split(" ", 1)[0]
    if first in NAMES or first == "I":
        return clause
    return clause[0].lower() + clause[1:]


def _sentence(r: random.Random) -> str:
    kind = r.random()
    if kind < 0.38:
        text = _clause(r) + "."
    elif kind < 0.56:
        text = f"{_clause(r)}, {r.choice(CONNECTORS)} {_lower_first(_clause(r))}."
    elif kind < 0.68:
        aux = r.choice(("Did", "Will", "Could", "Should", "Would"))
        base, _, _ = r.choice(VERBS)
        subj = r.choice(NAMES + ("you", "we", "they", "she", "he"))
        tail = " " + r.choice(TIMES) if r.random() < 0.4 else ""
        text = f"{aux} {subj} {base} {_noun_phrase(r)}{tail}?"
    elif kind < 0.76:
        wh = r.choice(("Why", "Where", "When", "How"))
        aux = r.choice(("did", "does", "will", "can", "should"))
        base, _, _ = r.choice(VERBS)
        text = f"{wh} {aux} {r.choice(NAMES)} {base} {_noun_phrase(r)}?"
    elif kind < 0.84:
        adj = r.choice(ADJECTIVES)
        noun = r.choice(NOUNS)[0]
        text = r.choice((
            f"What {_a(adj + ' ' + noun)}!",
            f"Such {_a(adj + ' ' + noun)}!",
            f"That {noun} is so {adj}!",
            f"How {adj} the {noun} looks!",
        ))  # fmt: skip
    elif kind < 0.92:
        base, _, _ = r.choice(VERBS)
        please = r.choice(("Please ", "", "Now ", "Just "))
        tail = " " + r.choice(ADVERBS) if r.random() < 0.5 else ""
        text = f"{please}{base} {_noun_phrase(r)}{tail}."
        text = text[0].upper() + text[1:]
    else:
        text = f"{r.choice(OPENERS)}, {_lower_first(_clause(r))}{r.choice(('.', '!', '?'))}"
    return text


@dataclass(frozen=True)
class Sentence:
    id: int
    text: str

    @property
    def num_words(self) -> int:
        return len(self.text.split())


def _passage(r: random.Random, target_words: int) -> str:
    """One to a few sentences, about ``target_words`` long: one sample's worth of speech."""
    parts = [_sentence(r)]
    words = len(parts[0].split())
    while words < target_words - 2:
        nxt = _sentence(r)
        if words + len(nxt.split()) > target_words + 3:
            break
        parts.append(nxt)
        words += len(nxt.split())
    return " ".join(parts)


def sentence_pool(seed: int, n: int, min_words: int = 5, max_words: int = 26) -> list[Sentence]:
    """``n`` distinct texts (ids 0..n-1), the same list for the same seed.

    Lengths spread evenly over ``min_words..max_words``, so the corpus gets short and long
    utterances alike (about 2 to 8 s at 120-220 words a minute).
    """
    r = random.Random(f"sentences/{seed}")
    seen: set[str] = set()
    out: list[Sentence] = []
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 50 * n + 1000:
            raise RuntimeError(f"could not generate {n} distinct sentences")
        text = _passage(r, r.randint(min_words, max_words))
        words = len(text.split())
        key = text.lower()
        if key in seen or not min_words <= words <= max_words + 3:
            continue
        seen.add(key)
        out.append(Sentence(len(out), text))
    return out
